"""Run an XDP program on a packet without a NIC: ``BPF_PROG_TEST_RUN``.

BCC 0.26 has no wrapper for it, so this module binds libbpf's
``bpf_prog_test_run_opts`` (libbpf.so.1) with ctypes. Two modes:

- ``run_xdp``: one frame in, verdict and output frame out, optionally repeated
  for a mean duration. Tail calls are followed, so a whole chain can be run
  from its entry program. Used by packet tests, ``vnfchain trace`` and benchmarks.
- ``generate``: live-frames mode (``BPF_F_TEST_XDP_LIVE_FRAMES``): the
  program's XDP_TX / XDP_REDIRECT really leave through the ingress device, which
  makes the kernel an in-kernel traffic generator. A veth only accepts such
  frames when its peer has an XDP program attached.

``ingress_ifindex`` is resolved by the kernel in the calling thread's network
namespace; ``netns=`` runs the call in a short-lived thread that has joined
``/run/netns/<name>`` (``setns`` affects only that thread), so the ifindex and
any ``bpf_fib_lookup`` are those of that namespace.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from . import bpfsys
from .errors import DeployError

if TYPE_CHECKING:  # scapy takes ~1 s to import: only when a packet is parsed
    from scapy.packet import Packet

__all__ = ["RunResult", "XDP_ACTIONS", "run_xdp", "generate", "call_in_netns"]

XDP_ACTIONS = {0: "XDP_ABORTED", 1: "XDP_DROP", 2: "XDP_PASS", 3: "XDP_TX", 4: "XDP_REDIRECT"}

BPF_F_TEST_XDP_LIVE_FRAMES = 1 << 1
CLONE_NEWNET = 0x40000000
ETH_HLEN = 14
# Programs may grow the frame: adjust_head by up to the 256-byte XDP headroom,
# adjust_tail into the rest of the page. Too small a buffer gives ENOSPC.
_OUTPUT_SLACK = 4096
_MAX_LIVE_BATCH = 256  # TEST_XDP_MAX_BATCH in net/bpf/test_run.c


class _TestRunOpts(ctypes.Structure):
    """struct bpf_test_run_opts as in libbpf 1.1 (``sz`` tells libbpf which fields exist)."""

    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("data_in", ctypes.c_void_p),
        ("data_out", ctypes.c_void_p),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_void_p),
        ("ctx_out", ctypes.c_void_p),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("repeat", ctypes.c_int),
        ("duration", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
    ]


class _XdpMd(ctypes.Structure):
    """struct xdp_md, the context an XDP program sees; ``data`` is the metadata length here."""

    _fields_ = [(name, ctypes.c_uint32) for name in
                ("data", "data_end", "data_meta", "ingress_ifindex", "rx_queue_index", "egress_ifindex")]


@dataclass(frozen=True)
class RunResult:
    """What one ``BPF_PROG_TEST_RUN`` returned."""

    retval: int        # raw XDP action number
    action: str        # "XDP_DROP", "XDP_PASS", ... ("XDP_UNKNOWN(7)" for anything else)
    data: bytes        # the output frame
    duration_ns: int   # mean per repetition, as reported by the kernel

    @property
    def packet(self) -> "Packet":
        """The output frame parsed by scapy as Ethernet."""
        from scapy.layers.l2 import Ether
        return Ether(self.data)


def run_xdp(prog_fd: int, packet: "bytes | Packet", *, repeat: int = 1,
            ingress_ifindex: int | None = None, netns: str | None = None) -> RunResult:
    """Run XDP program ``prog_fd`` on one frame ``repeat`` times; return verdict and output.

    Raises DeployError naming the program and the kernel's reason when the run fails.
    """
    frame = _frame_bytes(prog_fd, packet)
    if netns is not None:
        return call_in_netns(netns, run_xdp, prog_fd, frame, repeat=repeat,
                             ingress_ifindex=ingress_ifindex)
    data_in = ctypes.create_string_buffer(frame, len(frame))
    data_out = ctypes.create_string_buffer(len(frame) + _OUTPUT_SLACK)
    opts = _TestRunOpts(sz=ctypes.sizeof(_TestRunOpts), repeat=max(repeat, 1))
    opts.data_in, opts.data_size_in = ctypes.addressof(data_in), len(frame)
    opts.data_out, opts.data_size_out = ctypes.addressof(data_out), len(data_out)
    if ingress_ifindex is not None:
        ctx = _XdpMd(data=0, data_end=len(frame), ingress_ifindex=ingress_ifindex)
        opts.ctx_in, opts.ctx_size_in = ctypes.addressof(ctx), ctypes.sizeof(ctx)
    _test_run(prog_fd, opts)
    return RunResult(retval=opts.retval, action=action_name(opts.retval),
                     data=data_out.raw[:opts.data_size_out], duration_ns=opts.duration)


def generate(prog_fd: int, packet: "bytes | Packet", *, count: int, ingress_ifindex: int,
             netns: str | None = None, batch_size: int = 64) -> float:
    """Run ``prog_fd`` on ``count`` copies of a frame in live-frames mode; return elapsed seconds.

    Whatever the program returns happens for real: XDP_TX leaves through
    ``ingress_ifindex``, XDP_REDIRECT through its target, XDP_PASS enters the stack.
    """
    frame = _frame_bytes(prog_fd, packet)
    if netns is not None:
        return call_in_netns(netns, generate, prog_fd, frame, count=count,
                             ingress_ifindex=ingress_ifindex, batch_size=batch_size)
    if not 0 < batch_size <= _MAX_LIVE_BATCH:
        raise ValueError(f"batch_size must be 1..{_MAX_LIVE_BATCH}, not {batch_size}")
    data_in = ctypes.create_string_buffer(frame, len(frame))
    # live mode refuses data_out/ctx_out: frames go to devices, not back to us
    ctx = _XdpMd(data=0, data_end=len(frame), ingress_ifindex=ingress_ifindex)
    opts = _TestRunOpts(sz=ctypes.sizeof(_TestRunOpts), repeat=count,
                        flags=BPF_F_TEST_XDP_LIVE_FRAMES, batch_size=batch_size)
    opts.data_in, opts.data_size_in = ctypes.addressof(data_in), len(frame)
    opts.ctx_in, opts.ctx_size_in = ctypes.addressof(ctx), ctypes.sizeof(ctx)
    started = time.perf_counter()
    _test_run(prog_fd, opts)
    return time.perf_counter() - started


def action_name(retval: int) -> str:
    return XDP_ACTIONS.get(retval, f"XDP_UNKNOWN({retval})")


_T = TypeVar("_T")


def call_in_netns(netns: str, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
    """Call ``fn`` in a fresh thread that has joined network namespace ``/run/netns/<netns>``.

    setns() changes only the calling thread, and the thread ends right after,
    so the rest of the process never leaves its own namespace.
    """
    path = netns if netns.startswith("/") else f"/run/netns/{netns}"
    outcome: dict[str, Any] = {}

    def worker() -> None:
        try:
            _join_netns(path)
            outcome["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # handed to the caller's thread below
            outcome["error"] = exc

    thread = threading.Thread(target=worker, name=f"netns-{os.path.basename(path)}")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _join_netns(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise DeployError(f"network namespace {path} does not exist; "
                          f"create it (ip netns add {os.path.basename(path)}) or check the name") from None
    try:
        if _libc().setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise DeployError(f"cannot enter network namespace {path}: {os.strerror(err)} "
                              "(needs root / CAP_SYS_ADMIN)")
    finally:
        os.close(fd)


PLACEHOLDER_SRC = "02:00:00:00:00:01"
PLACEHOLDER_DST = "02:00:00:00:00:02"


def frame_bytes(packet: "bytes | Packet") -> bytes:
    """The frame to run. An Ethernet header left without addresses gets fixed,
    locally administered ones: scapy would otherwise look the destination up —
    sending ARP requests from this machine — just to build the bytes."""
    if isinstance(packet, (bytes, bytearray)):
        return bytes(packet)
    from scapy.layers.l2 import Ether
    if packet.haslayer(Ether):
        eth = packet[Ether]
        if eth.dst is None:
            eth.dst = PLACEHOLDER_DST
        if eth.src is None:
            eth.src = PLACEHOLDER_SRC
    return bytes(packet)


def _frame_bytes(prog_fd: int, packet: "bytes | Packet") -> bytes:
    frame = frame_bytes(packet)
    if len(frame) < ETH_HLEN:
        raise DeployError(f"test run of program fd {prog_fd}: the frame is {len(frame)} bytes, "
                          f"but XDP needs at least an Ethernet header ({ETH_HLEN} bytes)")
    return frame


# errno -> why BPF_PROG_TEST_RUN typically fails with it, and what to do
_ERRNO_HINTS = {
    errno.EINVAL: "the kernel refused the run arguments: a frame shorter than 14 or longer than "
                  "a page, a bad xdp_md context, or a flag this kernel does not know",
    errno.ENODEV: "ingress_ifindex names no interface in this network namespace "
                  "(pass netns= to resolve it in the right one)",
    errno.EBADF: "the fd is not an open BPF program",
    errno.EPERM: "not permitted: run as root (CAP_BPF + CAP_NET_ADMIN)",
    errno.EACCES: "not permitted: run as root (CAP_BPF + CAP_NET_ADMIN)",
    errno.ENOSPC: "the output frame did not fit the output buffer",
    errno.E2BIG: "batch_size or frame too big for this kernel",
    errno.ENOTSUP: "this program type does not support test runs",
    524: "this program type does not support test runs (ENOTSUPP)",
}


def _test_run(prog_fd: int, opts: _TestRunOpts) -> None:
    ret = _libbpf().bpf_prog_test_run_opts(prog_fd, ctypes.byref(opts))
    if ret < 0:
        err = -ret
        name = errno.errorcode.get(err, str(err))
        hint = _ERRNO_HINTS.get(err, os.strerror(err))
        raise DeployError(f"BPF_PROG_TEST_RUN of program fd {prog_fd} failed with {name}: {hint}")


_libs: dict[str, ctypes.CDLL] = {}


def _libbpf() -> ctypes.CDLL:
    lib = bpfsys.lib()
    lib.bpf_prog_test_run_opts.argtypes = [ctypes.c_int, ctypes.POINTER(_TestRunOpts)]
    lib.bpf_prog_test_run_opts.restype = ctypes.c_int
    return lib


def _libc() -> ctypes.CDLL:
    if "c" not in _libs:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.setns.restype = ctypes.c_int
        _libs["c"] = libc
    return _libs["c"]
