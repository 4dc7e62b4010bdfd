"""Service processes of a test bed: start them in a namespace, wait until they
listen, stop them by recorded PID.

A process is identified by its PID *and* its start time (field 22 of
``/proc/PID/stat``), so a PID the kernel has since reused for someone else's
process is never signalled. Nothing here matches processes by name or pattern.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import TestbedError
from .model import Service
from .netlink import exec_argv

_AGENT = Path(__file__).with_name("agent.py")
_TCP_LISTEN = "0A"
_UDP_UNCONNECTED = "07"


@dataclass(frozen=True)
class ServiceProcess:
    host: str
    service: str  # label, e.g. "http:80"
    pid: int
    start_time: int
    log: str

    def to_record(self) -> dict:
        return dict(host=self.host, service=self.service, pid=self.pid,
                    start_time=self.start_time, log=self.log)


def command(service: Service, host: str) -> list[str]:
    if service.type == "command":
        return list(service.argv or ())
    # run the file, not `-m vnfchain.testbed.agent`: importing the package would
    # cost a second of imports (pydantic, pyroute2) per service
    return [sys.executable, "-I", str(_AGENT), service.type, "--port", str(service.port), "--name", host]


def start(netns: str, host: str, service: Service, log_dir: Path) -> tuple[ServiceProcess, subprocess.Popen]:
    """Start ``service`` inside ``netns`` in its own session (a Ctrl-C meant for the
    CLI does not reach it, and it outlives ``vnfchain testbed up``)."""
    log_path = log_dir / f"{host}-{service.label.replace(':', '-')}.log"
    with open(log_path, "ab") as log:
        try:
            proc = subprocess.Popen(exec_argv(netns, command(service, host)), stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as exc:
            raise TestbedError(f"cannot start {service.label} on {host}: {exc}") from exc
    return ServiceProcess(host, service.label, proc.pid, start_time(proc.pid) or 0, str(log_path)), proc


def start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot, or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def is_running(pid: int, started: int) -> bool:
    """True if the process we started is still there (not reused, not a zombie)."""
    return start_time(pid) == started and _state(pid) not in (None, "Z", "X")


def _listening(pid: int, proto: str, port: int) -> bool:
    # /proc/PID/net/* shows the sockets of PID's network namespace
    want_state = _TCP_LISTEN if proto == "tcp" else _UDP_UNCONNECTED
    for table in (proto, proto + "6"):
        try:
            rows = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == want_state:
                return True
    return False


def wait_ready(started: list[tuple[ServiceProcess, Service, subprocess.Popen]]) -> None:
    """Poll until every service listens on its port; fail as soon as one exits or
    runs out of time, with the tail of its log."""
    pending = list(started)
    begin = time.monotonic()
    while pending:
        for item in list(pending):
            proc_info, service, popen = item
            if popen.poll() is not None:
                raise TestbedError(f"service {service.label} on host {proc_info.host} exited with "
                                   f"status {popen.returncode} before it was ready",
                                   detail=_tail(proc_info.log))
            if service.port is None or _listening(proc_info.pid, service.protocol, service.port):
                pending.remove(item)
            elif time.monotonic() - begin > service.ready_timeout:
                raise TestbedError(f"service {service.label} on host {proc_info.host} did not listen on "
                                   f"{service.protocol} port {service.port} within {service.ready_timeout:g} s",
                                   detail=_tail(proc_info.log))
        if pending:
            time.sleep(0.01)


def _tail(path: str, lines: int = 20) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def stop(pid: int, started: int, *, popen: subprocess.Popen | None = None, grace: float = 2.0) -> bool:
    """SIGTERM the process we started (then SIGKILL after ``grace`` s). Returns True if
    it was running. A PID now owned by another process is left alone."""
    if not is_running(pid, started):
        if popen is not None:
            popen.poll()  # reap it if it is our zombie
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if popen is not None and popen.poll() is not None:
            return True
        if not is_running(pid, started):
            return True
        time.sleep(0.01)
    if is_running(pid, started):
        os.kill(pid, signal.SIGKILL)
    if popen is not None:
        popen.wait(timeout=grace)
    return True
