"""``Testbed``: a running test bed, owner of everything it made.

    with Testbed.up("topologies/pvp.yaml") as tb:
        tb.exec("client", ["ping", "-c", "1", "198.18.2.2"])
        assert tb.ping("client", tb.addr("server")).ok

``up`` is all-or-nothing: if a step fails, or SIGINT/SIGTERM arrives half-way,
everything made so far is removed before the error propagates.
``Testbed.attach(name)`` is a handle on a bed some other process brought up.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable, Iterator

from ..errors import TestbedError, VnfchainError
from . import build, netlink, services, traffic
from .model import Check, Topology, load_topology
from .record import Record, recorded_names


class Testbed:
    __test__ = False  # not a pytest class

    def __init__(self, topology: Topology, record: Record, popens=None):
        self.topology = topology
        self.name = topology.name
        self._record = record
        self._popens: dict[int, subprocess.Popen] = dict(popens or {})
        self._extra: list[subprocess.Popen] = []  # started with popen(): stopped by down()

    # --- life cycle ------------------------------------------------------------------

    @classmethod
    def up(cls, topology: str | Path | Topology, *, name: str | None = None,
           progress: Callable[[str], None] | None = None) -> "Testbed":
        """Build ``topology`` (a path or a loaded ``Topology``), optionally under another
        ``name``. ``progress`` is called with each step's description.

        Raises ``TestbedSpecError`` for an invalid file, ``TestbedError`` naming the
        failed step (after removing what was made)."""
        source = None
        if not isinstance(topology, Topology):
            source = str(topology)
            topology = load_topology(topology)
        if name is not None:
            topology = topology.with_name(name)
        taken = [host for host in topology.hosts if netlink.netns_exists(topology.netns(host))]
        record = Record.claim(topology.name, topology.to_data(), source)
        builder = build.Builder(topology, record, on_step=progress or (lambda text: None))
        with _signals_as_interrupt():
            try:
                if taken:
                    raise TestbedError(f"namespace {topology.netns(taken[0])} already exists; run "
                                       f"`vnfchain testbed down {topology.name}` first")
                builder.build()
            except BaseException as exc:
                with _signals_blocked():
                    build.teardown(record, builder.popens)
                if isinstance(exc, VnfchainError):
                    raise TestbedError(f"cannot bring up test bed '{topology.name}': {builder.current} "
                                       f"failed: {exc.message}; removed what it had made",
                                       detail=exc.detail) from exc
                if isinstance(exc, Exception):
                    raise TestbedError(f"cannot bring up test bed '{topology.name}': {builder.current} "
                                       f"failed: {type(exc).__name__}: {exc}; removed what it had made") from exc
                raise
        return cls(topology, record, builder.popens)

    @classmethod
    def attach(cls, name: str) -> "Testbed":
        """A handle on bed ``name``, which is already up (from its record)."""
        record = Record.read(name)
        if record is None or not record.topology:
            raise TestbedError(f"no test bed named '{name}' is up; `vnfchain testbed ls` lists them")
        return cls(Topology.model_validate(record.topology), record)

    @staticmethod
    def names() -> list[str]:
        """Names of the beds that have a record (up, or being built)."""
        return recorded_names()

    def down(self) -> build.Removed:
        """Remove everything this bed made; safe to call twice."""
        for proc in self._extra:
            if proc.poll() is None:
                services.stop(proc.pid, services.start_time(proc.pid) or 0, popen=proc)
        self._extra.clear()
        with _signals_blocked():
            return build.teardown(self._record, self._popens)

    def __enter__(self) -> "Testbed":
        return self

    def __exit__(self, *exc) -> None:
        self.down()

    def __repr__(self) -> str:
        return f"<Testbed {self.name}: {', '.join(self.topology.hosts)}>"

    # --- where things are ------------------------------------------------------------

    @property
    def state(self) -> str:
        return self._record.state

    @property
    def processes(self) -> list[dict]:
        """Recorded service processes: host, service, pid, start_time, log."""
        return list(self._record.processes)

    def _host(self, host: str) -> str:
        if host not in self.topology.hosts:
            raise TestbedError(f"test bed '{self.name}' has no host '{host}' "
                               f"(hosts: {', '.join(self.topology.hosts)})")
        return host

    def netns(self, host: str) -> str:
        """Network namespace of ``host``: vc-<bed>-<host>."""
        return self.topology.netns(self._host(host))

    def addr(self, host: str) -> str:
        """First address of ``host`` (no prefix length)."""
        addrs = self.addrs(host)
        if not addrs:
            raise TestbedError(f"host '{host}' of test bed '{self.name}' has no address")
        return addrs[0]

    def addrs(self, host: str) -> list[str]:
        return [str(a.ip) for a in self.topology.addresses(self._host(host))]

    def mac(self, host: str, ifname: str) -> str:
        with netlink.Namespace(self.netns(host)) as ns:
            return ns.mac(ifname)

    def peer_mac(self, host: str, ifname: str) -> str:
        """MAC of the other end of the veth ``host:ifname``."""
        for link in self.topology.links:
            for end, other in ((link.a, link.b), (link.b, link.a)):
                if (end.host, end.interface) == (host, ifname):
                    return self.mac(other.host, other.interface)
        raise TestbedError(f"{host}:{ifname} is not a link end of test bed '{self.name}'")

    # --- running things --------------------------------------------------------------

    def exec(self, host: str, argv: list[str], *, check: bool = False, timeout: float | None = 30,
             capture: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
        """Run ``argv`` inside ``host``'s namespace and wait (text output captured)."""
        return subprocess.run(netlink.exec_argv(self.netns(host), list(argv)), check=check, timeout=timeout,
                              capture_output=capture, text=True, input=input)

    def popen(self, host: str, argv: list[str], **kwargs) -> subprocess.Popen:
        """Start ``argv`` inside ``host``'s namespace; ``down()`` stops it if still running."""
        proc = subprocess.Popen(netlink.exec_argv(self.netns(host), list(argv)), **kwargs)
        self._extra.append(proc)
        return proc

    # --- traffic (see traffic.py) ----------------------------------------------------

    def ping(self, src: str, dst: str, count: int = 3, **kw) -> traffic.PingResult:
        return traffic.ping(self, src, dst, count, **kw)

    def http_get(self, src: str, url: str, **kw) -> traffic.HttpResult:
        return traffic.http_get(self, src, url, **kw)

    def tcp_echo(self, src: str, addr: str, port: int, payload: bytes, **kw) -> bytes:
        return traffic.tcp_echo(self, src, addr, port, payload, **kw)

    def udp_echo(self, src: str, addr: str, port: int, payload: bytes, **kw) -> bytes | None:
        return traffic.udp_echo(self, src, addr, port, payload, **kw)

    def tls_hello(self, src: str, addr: str, port: int, server_name: str, **kw) -> str:
        return traffic.tls_hello(self, src, addr, port, server_name, **kw)

    def dns_query(self, src: str, server: str, name: str, **kw) -> list[str] | None:
        return traffic.dns_query(self, src, server, name, **kw)

    def send_expect(self, src_host: str, src_if: str, packets, dst_host: str, dst_if: str, **kw) -> list:
        return traffic.send_expect(self, src_host, src_if, packets, dst_host, dst_if, **kw)

    def check(self) -> list[str]:
        """Run the topology's ``checks``; returns one line per check, raises
        ``TestbedError`` listing every failed one."""
        lines, failed = [], []
        for check in self.topology.checks:
            ok, text = self._run_check(check)
            (lines if ok else failed).append(text)
        if failed:
            raise TestbedError(f"test bed '{self.name}': {len(failed)} of {len(self.topology.checks)} "
                               f"checks failed: " + "; ".join(failed))
        return lines

    def _run_check(self, check: Check) -> tuple[bool, str]:
        kind, addr, port = check.target()
        where = f"{check.from_} -> {addr}" + (f":{port}" if port else "")
        if kind == "ping":
            result = self.ping(check.from_, str(addr), count=2)
            return result.ok, f"ping {where}: {result.received}/{result.sent} replies"
        if kind == "http":
            result = self.http_get(check.from_, check.http)
            ok = result.ok and (check.expect is None or check.expect in result.body)
            return ok, f"http {check.http} from {check.from_}: {result.status} {result.body.strip()!r} {result.error}".rstrip()
        payload = f"vnfchain check {kind}".encode()
        try:
            echo = (self.tcp_echo if kind == "tcp-echo" else self.udp_echo)(check.from_, str(addr), port, payload)
        except TestbedError as exc:
            return False, f"{kind} {where}: {exc.message}"
        return echo == payload, f"{kind} {where}: {'echoed' if echo == payload else 'no echo'}"


# --- signals ------------------------------------------------------------------------

@contextlib.contextmanager
def _signals_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt while a bed is built (main thread only), so a
    killed ``up`` still removes what it made."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    owner = os.getpid()

    def interrupt(signum, frame):
        if os.getpid() != owner:  # a forked helper (pyroute2 forks): die as SIGTERM would
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _signals_blocked() -> Iterator[None]:
    """Hold SIGINT/SIGTERM while tearing down, so a second Ctrl-C cannot leave half a bed."""
    if sys.platform != "linux" or threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
