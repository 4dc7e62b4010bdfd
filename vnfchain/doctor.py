"""Can this machine run vnfchain? One check per requirement, each failure with its fix.

``run_checks()`` runs every check in ``CHECKS`` order and never raises: a check
that blows up is reported as failed with the exception as its detail. Later
checks that need a loaded XDP program (attach, test run) share the one that
"XDP program loads" compiled, and fail with "fix the checks above" without it.

The attach check creates network namespace ``vcdoc-<pid>`` with the veth pair
``vcdoc-a`` <-> ``vcdoc-b`` and removes it again, also when the check fails.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

from .chain.compile import captured_stderr

__all__ = ["Check", "CHECKS", "run_checks"]

JIT_ENABLE_PATH = "/proc/sys/net/core/bpf_jit_enable"
BPFFS_PATH = "/sys/fs/bpf"
MOUNTS_PATH = "/proc/self/mounts"
KHEADERS_PATH = "/sys/kernel/kheaders.tar.xz"

CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_BPF = 12, 21, 39
_SYS_BPF = {"x86_64": 321, "aarch64": 280}
BPF_MAP_CREATE, BPF_MAP_TYPE_ARRAY = 0, 2

_TINY_XDP = b"int doctor_pass(struct xdp_md *ctx) { return XDP_PASS; }"
_VENV_FIX = ("apt-get install python3-bpfcc, and use a venv made with "
             "`/usr/bin/python3 -m venv --system-site-packages .venv` (scripts/setup.sh does both)")


@dataclass(frozen=True)
class Check:
    """One requirement: whether it holds, what was found, and how to fix it if not."""

    name: str
    ok: bool
    detail: str
    fix: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


class _Probe:
    """The one tiny XDP program the later checks share; compiled on first use."""

    def __init__(self) -> None:
        self._bpf = None
        self.prog_fd: int | None = None
        self.error: str | None = None

    def load(self) -> int | None:
        if self.prog_fd is None and self.error is None:
            with captured_stderr() as compiler_output:
                try:
                    from bcc import BPF
                    self._bpf = BPF(text=_TINY_XDP)
                    self.prog_fd = self._bpf.load_func(b"doctor_pass", BPF.XDP).fd
                except Exception as exc:  # BCC raises bare Exception; its reasons are on stderr
                    self.error = str(exc)
            if self.error is not None:
                self.error = _compiler_errors(compiler_output.text) or self.error
        return self.prog_fd

    def close(self) -> None:
        if self._bpf is not None:
            self._bpf.cleanup()


def run_checks(checks: tuple[Callable[[_Probe], Check], ...] | None = None) -> list[Check]:
    """Run the checks (default: all of ``CHECKS``) and return their results in order."""
    probe = _Probe()
    try:
        return [_run_one(check, probe) for check in (checks if checks is not None else CHECKS)]
    finally:
        probe.close()


def chain_checks(chain_file: str) -> list[Check]:
    """A chain against this machine: every attach point exists, and no pitfall of
    vnfchain.pitfalls (veth peers without NAPI, checksum offload, martians) waits."""
    from . import pitfalls
    from .chain import Chain
    from .errors import VnfchainError
    from . import netlink
    try:
        spec = Chain.from_yaml(chain_file).spec
    except VnfchainError as exc:
        return [Check(f"chain {chain_file}", False, exc.message, "fix the chain file (`vnfchain validate`)")]
    out = []
    for point in spec.attach:
        try:
            found = netlink.ifindex(point.interface, point.netns)
        except OSError as exc:     # no such namespace
            found, why = None, f"its namespace cannot be entered ({exc.strerror or exc})"
        else:
            why = "no such interface"
        out.append(Check(f"interface {point}", True, f"ifindex {found}") if found else
                   Check(f"interface {point}", False, why, "create it, or fix attach: in the chain"))
    found = pitfalls.chain_pitfalls(spec) + pitfalls.machine_pitfalls(spec)
    out += [Check(f"pitfall at {p.where}", False, p.problem, p.fix) for p in found]
    if not found:
        out.append(Check(f"chain {spec.name}", True, "no veth, checksum-offload or NAT pitfall found"))
    return out


def _run_one(check: Callable[[_Probe], Check], probe: _Probe) -> Check:
    try:
        return check(probe)
    except Exception as exc:  # a broken check must not hide the others
        name = check.__name__.removeprefix("check_").replace("_", " ")
        return Check(name, False, f"the check itself failed: {type(exc).__name__}: {exc}",
                     "report this as a vnfchain bug, with the output of `vnfchain doctor --json`")


# --- the checks, in the order a user should fix them -------------------------

def check_privileges(probe: _Probe) -> Check:
    caps = _effective_capabilities()
    missing = []
    if not caps & (1 << CAP_BPF | 1 << CAP_SYS_ADMIN):
        missing.append("CAP_BPF")
    if not caps & (1 << CAP_NET_ADMIN):
        missing.append("CAP_NET_ADMIN")
    who = "root" if os.geteuid() == 0 else f"uid {os.geteuid()}"
    if missing:
        return Check("privileges", False, f"running as {who} without {', '.join(missing)}",
                     "run as root; network namespaces also need CAP_SYS_ADMIN")
    return Check("privileges", True, f"running as {who} with CAP_BPF and CAP_NET_ADMIN")


def check_bpf_syscall(probe: _Probe) -> Check:
    name = "bpf() syscall"
    number = _SYS_BPF.get(platform.machine())
    if number is None:
        return Check(name, False, f"no bpf() syscall number known for {platform.machine()}",
                     "vnfchain supports x86_64 and aarch64")
    # union bpf_attr for BPF_MAP_CREATE: map_type, key_size, value_size, max_entries, rest zero
    attr = (ctypes.c_uint32 * 32)(BPF_MAP_TYPE_ARRAY, 4, 4, 1)
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.syscall(number, BPF_MAP_CREATE, ctypes.byref(attr), ctypes.sizeof(attr))
    if fd < 0:
        err = ctypes.get_errno()
        fix = {errno.EPERM: "run as root", errno.ENOSYS: "use a kernel built with CONFIG_BPF_SYSCALL=y"}
        return Check(name, False, f"creating a 1-entry array map failed: {errno.errorcode.get(err, err)} "
                     f"({os.strerror(err)})", fix.get(err, "run as root on a kernel with BPF enabled"))
    os.close(fd)
    return Check(name, True, "created and closed a 1-entry array map")


def check_jit(probe: _Probe) -> Check:
    name = "BPF JIT"
    try:
        value = Path(JIT_ENABLE_PATH).read_text().strip()
    except FileNotFoundError:
        return Check(name, False, f"{JIT_ENABLE_PATH} is missing: this kernel has no BPF JIT",
                     "use a kernel built with CONFIG_BPF_JIT=y (interpreted programs are many times slower)")
    if value == "0":
        return Check(name, False, f"disabled ({JIT_ENABLE_PATH} = 0)", "sysctl -w net.core.bpf_jit_enable=1")
    return Check(name, True, f"enabled ({JIT_ENABLE_PATH} = {value})")


def check_bpffs(probe: _Probe) -> Check:
    name = "bpffs"
    fix = f"mount -t bpf bpf {BPFFS_PATH}   (scripts/setup.sh does this)"
    fstype = _mounted_fstype(BPFFS_PATH)
    if fstype is None:
        return Check(name, False, f"nothing is mounted at {BPFFS_PATH}; chains could not be pinned", fix)
    if fstype != "bpf":
        return Check(name, False, f"{BPFFS_PATH} is a {fstype} mount, not bpf", fix)
    return Check(name, True, f"mounted at {BPFFS_PATH}")


def check_bcc(probe: _Probe) -> Check:
    name = "BCC"
    try:
        import bcc
    except Exception as exc:
        return Check(name, False, f"`import bcc` failed: {exc}", _VENV_FIX)
    where = os.path.dirname(getattr(bcc, "__file__", None) or "?")
    if not hasattr(bcc, "BPF"):
        return Check(name, False, f"the `bcc` imported from {where} is the unrelated PyPI package "
                     "of that name, not BCC", f"pip uninstall bcc; then {_VENV_FIX}")
    version = getattr(bcc, "__version__", "unknown version")
    return Check(name, True, f"BCC {version} from {where}")


def check_kernel_headers(probe: _Probe) -> Check:
    name = "kernel headers"
    modules = Path("/lib/modules") / os.uname().release
    build, source = modules / "build", modules / "source"
    # Debian splits headers: generated ones in `build` (the arch dir), the rest in `source`
    has_config = (build / "include/generated/autoconf.h").exists()
    has_kconfig = any((tree / "include/linux/kconfig.h").exists() for tree in (build, source))
    if has_config and has_kconfig:
        return Check(name, True, f"{build} -> {build.resolve()}{_headers_release_note(build)}")
    if Path(KHEADERS_PATH).exists():
        return Check(name, True, f"{build} missing, but the kernel ships its headers ({KHEADERS_PATH})")
    return Check(name, False, f"{build} holds no usable kernel headers; BCC cannot compile programs",
                 "run scripts/setup.sh (links Debian's linux-headers-amd64 when this kernel has no "
                 "headers package), or apt-get install linux-headers-$(uname -r)")


def _headers_release_note(build: Path) -> str:
    """Say so when the headers belong to another kernel (fine for XDP programs, worth knowing)."""
    utsrelease = build / "include/generated/utsrelease.h"
    with contextlib.suppress(OSError, IndexError):
        release = utsrelease.read_text().split('"')[1]
        if release != os.uname().release:
            return f" (headers of {release}, running {os.uname().release})"
    return ""


def check_xdp_load(probe: _Probe) -> Check:
    name = "XDP program loads"
    if probe.load() is None:
        return Check(name, False, f"compiling or loading a 1-line XDP program failed: {probe.error}",
                     "fix the failed checks above first (privileges, BCC, kernel headers)")
    return Check(name, True, "a tiny XDP program compiled with BCC and passed the verifier")


def check_xdp_attach(probe: _Probe) -> Check:
    name = "XDP attach (veth)"
    prog_fd = probe.load()
    if prog_fd is None:
        return _needs_program(name)
    netns = f"vcdoc-{os.getpid()}"
    with _veth_netns(netns) as index:
        modes = [_attach_and_detach(netns, index, prog_fd, mode, label)
                 for mode, label in (("native", "xdp"), ("generic", "xdpgeneric"))]
    failed = [mode for mode in modes if mode]
    if failed:
        return Check(name, False, "; ".join(failed),
                     "run as root; on this kernel veth should take both modes, so check `dmesg`")
    return Check(name, True, f"native and generic attach/detach on a veth in netns {netns}")


def check_test_run(probe: _Probe) -> Check:
    from .errors import VnfchainError
    from .testrun import run_xdp

    name = "BPF_PROG_TEST_RUN"
    prog_fd = probe.load()
    if prog_fd is None:
        return _needs_program(name)
    frame = b"\xff" * 6 + b"\x02" + b"\x00" * 5 + b"\x08\x00" + bytes(50)
    try:
        result = run_xdp(prog_fd, frame, repeat=100)
    except VnfchainError as exc:
        return Check(name, False, exc.message, "apt-get install libbpf1 (libbpf.so.1 is needed); run as root")
    if result.action != "XDP_PASS":
        return Check(name, False, f"an XDP_PASS program returned {result.action}",
                     "report this kernel's behaviour; vnfchain's packet tests rely on it")
    return Check(name, True, f"XDP_PASS in {result.duration_ns} ns/packet via libbpf.so.1")


CHECKS: tuple[Callable[[_Probe], Check], ...] = (
    check_privileges, check_bpf_syscall, check_jit, check_bpffs, check_bcc,
    check_kernel_headers, check_xdp_load, check_xdp_attach, check_test_run,
)


# --- helpers -----------------------------------------------------------------

def _needs_program(name: str) -> Check:
    return Check(name, False, "skipped: no XDP program could be loaded",
                 "fix the \"XDP program loads\" check first")


def _effective_capabilities() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def _mounted_fstype(mountpoint: str) -> str | None:
    fstype = None
    for line in Path(MOUNTS_PATH).read_text().splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[1] == mountpoint:
            fstype = fields[2]  # the last mount on a path is the one visible
    return fstype


@contextlib.contextmanager
def _veth_netns(netns: str) -> Iterator[int]:
    """A throwaway netns with veth vcdoc-a <-> vcdoc-b; yields vcdoc-a's index."""
    from . import netlink

    netlink.create_netns(netns)
    try:
        with netlink.Links(netns) as links:
            links.add_veth("vcdoc-a", "vcdoc-b")
            index = links.index("vcdoc-a")
        yield index
    finally:
        netlink.remove_netns(netns)  # takes the veth pair and any attachment with it


def _attach_and_detach(netns: str, index: int, prog_fd: int, mode: str, label: str) -> str:
    """Attach in one mode, confirm, detach; return "" or what went wrong."""
    from . import netlink

    try:
        netlink.xdp_attach(index, prog_fd, mode, netns)
        attached = netlink.xdp_state(index, netns)
        netlink.xdp_detach(index, mode, netns)
    except Exception as exc:  # pyroute2's NetlinkError keeps the kernel's errno and text
        return f"{label} attach failed: {exc}"
    if not attached or attached[1] != mode:
        return f"{label} attach reported mode {attached[1] if attached else None!r}"
    return ""


def _compiler_errors(text: str, count: int = 3) -> str:
    """The compiler's ``error:`` lines (else its last lines), joined on one line for the table."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    errors = [line for line in lines if "error:" in line]
    return " | ".join(errors[:count] or lines[-count:])
