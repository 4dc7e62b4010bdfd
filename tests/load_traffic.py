"""Steady traffic to hold a chain to while it changes: a UDP stream counted
datagram by datagram, and TCP connections that keep echoing.

The three loads run as child processes inside a bed's namespaces (standard
library only, started with ``python -I``, so each is up in milliseconds)::

    python load_traffic.py udp-recv PORT
    python load_traffic.py udp-send ADDR PORT RATE
    python load_traffic.py tcp-hold TAG INTERVAL ADDR:PORT:COUNT [ADDR:PORT:COUNT ...]

Each prints one JSON line when it is ready, one JSON report for every line
``report`` it reads on stdin, and a last report when stdin closes, then exits.

- ``udp-recv`` counts datagrams by their sequence number: distinct, duplicates,
  reordered (arrived after a later one), missing (below the highest seen),
  datagrams per second of arrival, the longest silence between two datagrams,
  and the namespace's UDP receive-buffer drops (a loss that is the receiver's,
  not the network's).
- ``udp-send`` sends 64-byte datagrams numbered from 0 at RATE per second,
  paced in small bursts (at most 2 ms of traffic at once); a datagram the
  kernel refuses is sent again, never skipped.
- ``tcp-hold`` opens COUNT connections to each ADDR:PORT (an echo service) and
  sends ``TAG-<target>-<i>-<n>\\n`` over each every INTERVAL seconds (spread
  over the interval); a connection that is reset, closed, echoes something
  else, or has not echoed within 5 s is dead, and said why.

From a test, ``LoadRun`` starts them on a ``Testbed`` and ends them by PID::

    with LoadRun(tb) as load:
        load.udp("client", "server", "198.18.2.2", 9000, rate=10_000)
        load.tcp("client", [("198.18.0.100", 7, 50), ("198.18.2.2", 7, 50)])
        before = load.report()
        ...                                   # change the chain
        after = load.report()
        result = load.finish()                # sender stopped, receiver drained
    assert result.udp["lost"] == 0 and result.tcp_alive() == 100
"""
from __future__ import annotations

import errno
import json
import os
import selectors
import socket
import struct
import sys
import time

SEQ = struct.Struct("!Q")
DATAGRAM = 64                   # bytes of UDP payload: the sequence number, zero padded
BURST_SECONDS = 0.002           # the most traffic sent back to back
ECHO_TIMEOUT = 5.0              # a connection whose echo takes longer is dead
RCVBUF = 32 << 20               # the receiver absorbs half a second of a stalled reader


def _emit(report: dict) -> None:
    sys.stdout.write(json.dumps(report) + "\n")
    sys.stdout.flush()


def _udp_errors() -> dict[str, int]:
    """This namespace's UDP counters that tell a receiver's own drops."""
    with open("/proc/net/snmp") as f:
        rows = [line.split() for line in f if line.startswith("Udp:")]
    counters = dict(zip(rows[0][1:], map(int, rows[1][1:])))
    return {"rcvbuf_errors": counters.get("RcvbufErrors", 0), "in_errors": counters.get("InErrors", 0)}


class Receiver:
    def __init__(self, port: int):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, 33, RCVBUF)   # SO_RCVBUFFORCE: root only
        except OSError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        self.sock.bind(("0.0.0.0", port))
        self.sock.setblocking(False)
        self.seen = bytearray()
        self.distinct = self.duplicates = self.reordered = 0
        self.highest = -1
        self.first = self.last = None
        self.longest_silence = 0.0
        self.per_second: list[int] = []
        self.errors_at_start = _udp_errors()

    def drain(self) -> None:
        buf = bytearray(2048)
        while True:
            try:
                n = self.sock.recv_into(buf)
            except BlockingIOError:
                return
            now = time.monotonic()
            if n < SEQ.size:
                continue
            (seq,) = SEQ.unpack_from(buf)
            self._count(seq, now)

    def _count(self, seq: int, now: float) -> None:
        if self.first is None:
            self.first = now
        elif now - self.last > self.longest_silence:
            self.longest_silence = now - self.last
        self.last = now
        second = int(now - self.first)
        while len(self.per_second) <= second:
            self.per_second.append(0)
        self.per_second[second] += 1
        if seq >= len(self.seen):
            self.seen.extend(bytes(max(seq + 1 - len(self.seen), 1 << 16)))
        if self.seen[seq]:
            self.duplicates += 1
            return
        self.seen[seq] = 1
        self.distinct += 1
        if seq < self.highest:
            self.reordered += 1
        self.highest = max(self.highest, seq)

    def report(self) -> dict:
        errors = _udp_errors()
        return {"received": self.distinct, "highest": self.highest,
                "missing": self.highest + 1 - self.distinct, "duplicates": self.duplicates,
                "reordered": self.reordered, "longest_silence_ms": round(1000 * self.longest_silence, 1),
                "per_second": self.per_second,
                **{k: errors[k] - self.errors_at_start[k] for k in errors}}

    def missing_ranges(self, limit: int = 20) -> list[list[int]]:
        """The first ``limit`` runs of sequence numbers not received, below the highest."""
        out, start = [], None
        for seq in range(self.highest + 1):
            if not self.seen[seq] and start is None:
                start = seq
            elif self.seen[seq] and start is not None:
                out.append([start, seq - 1])
                start = None
                if len(out) == limit:
                    break
        return out


def udp_recv(port: int) -> int:
    receiver = Receiver(port)
    sel = selectors.DefaultSelector()
    sel.register(receiver.sock, selectors.EVENT_READ)
    sel.register(sys.stdin, selectors.EVENT_READ)
    _emit({"ready": True})
    while True:
        for key, _ in sel.select():
            if key.fileobj is receiver.sock:
                receiver.drain()
                continue
            line = sys.stdin.readline()
            receiver.drain()
            if not line:
                _emit(receiver.report() | {"missing_ranges": receiver.missing_ranges()})
                return 0
            _emit(receiver.report())


def udp_send(addr: str, port: int, rate: float) -> int:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    sel = selectors.DefaultSelector()
    sel.register(sys.stdin, selectors.EVENT_READ)
    target, payload = (addr, port), bytearray(DATAGRAM)
    burst = max(1, int(rate * BURST_SECONDS))
    sent = refused = 0
    most_behind = 0
    _emit({"ready": True})
    started = time.monotonic()
    while True:
        due = int((time.monotonic() - started) * rate)
        most_behind = max(most_behind, due - sent)
        for _ in range(min(due - sent, burst)):
            SEQ.pack_into(payload, 0, sent)
            try:
                sock.sendto(payload, target)
            except OSError as exc:
                if exc.errno not in (errno.ENOBUFS, errno.EAGAIN, errno.ECONNREFUSED):
                    raise
                refused += 1
                break            # sent again next round, under the same number
            sent += 1
        # sleep until half a burst is due (or not at all when behind)
        wait = max(0.0, started + (sent + max(1, burst // 2)) / rate - time.monotonic())
        if sel.select(timeout=wait) and not sys.stdin.readline():
            seconds = time.monotonic() - started
            _emit({"sent": sent, "seconds": round(seconds, 3), "rate": round(sent / seconds),
                   "most_behind": most_behind, "refused_sends": refused})
            return 0


class Held:
    """One echoing connection."""

    def __init__(self, sock: socket.socket, name: str, target: str, offset: float):
        self.sock, self.name, self.target = sock, name, target
        self.next_send = time.monotonic() + offset
        self.expect = b""          # what is still to come back
        self.sent_at = 0.0
        self.echoes = 0
        self.slowest = 0.0
        self.failure = ""


def _connect(addr: str, port: int, count: int, label: str) -> tuple[list[socket.socket], list[str]]:
    socks, failed = [], []
    for i in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(ECHO_TIMEOUT)
        try:
            sock.connect((addr, port))
        except OSError as exc:
            failed.append(f"{label}#{i}: connect: {exc.strerror or exc}")
            sock.close()
            continue
        sock.setblocking(False)
        socks.append(sock)
    return socks, failed


def tcp_hold(tag: str, interval: float, targets: list[str]) -> int:
    conns: list[Held] = []
    failed: list[str] = []
    per_target = {}
    for n, target in enumerate(targets):
        addr, port, count = target.rsplit(":", 2)
        socks, errors = _connect(addr, int(port), int(count), target)
        failed += errors
        per_target[target] = int(count)
        for i, sock in enumerate(socks):
            conns.append(Held(sock, f"{tag}-{n}-{i}", target, interval * len(conns) / max(1, int(count) * len(targets))))
    sel = selectors.DefaultSelector()
    sel.register(sys.stdin, selectors.EVENT_READ, None)
    for c in conns:
        sel.register(c.sock, selectors.EVENT_READ, c)

    def kill(c: Held, why: str) -> None:
        c.failure = why
        failed.append(f"{c.target} {c.name}: {why}")
        sel.unregister(c.sock)
        c.sock.close()

    def report() -> dict:
        live = [c for c in conns if not c.failure]
        return {"open": {t: sum(1 for c in live if c.target == t) for t in per_target},
                "wanted": per_target, "failed": failed, "echoes": sum(c.echoes for c in conns),
                "slowest_echo_ms": round(1000 * max((c.slowest for c in conns), default=0.0), 1)}

    _emit({"ready": True, "connected": len(conns), "failed": failed})
    while True:
        now = time.monotonic()
        for c in conns:
            if c.failure:
                continue
            if c.expect and now - c.sent_at > ECHO_TIMEOUT:
                kill(c, f"no echo within {ECHO_TIMEOUT:g} s")
            elif not c.expect and now >= c.next_send:
                message = f"{c.name}-{c.echoes}\n".encode()
                try:
                    c.sock.send(message)      # a few bytes: the send buffer always takes them
                except OSError as exc:
                    kill(c, f"send: {exc.strerror or exc}")
                    continue
                c.expect, c.sent_at = message, now
                c.next_send = max(c.next_send + interval, now)
        wake = min((c.next_send for c in conns if not c.failure and not c.expect), default=now + interval)
        for key, _ in sel.select(timeout=max(0.0, min(wake - time.monotonic(), 0.05))):
            c = key.data
            if c is None:
                if not sys.stdin.readline():
                    final = report()
                    for held in conns:
                        held.sock.close()
                    _emit(final)
                    return 0
                _emit(report())
                continue
            if c.failure:
                continue
            try:
                data = c.sock.recv(4096)
            except OSError as exc:
                kill(c, f"recv: {exc.strerror or exc}")
                continue
            if not data:
                kill(c, "closed by the other end")
            elif not c.expect.startswith(data):
                kill(c, f"sent {c.expect!r}, echoed {data!r}")
            else:
                c.expect = c.expect[len(data):]
                if not c.expect:
                    c.echoes += 1
                    c.slowest = max(c.slowest, time.monotonic() - c.sent_at)


def main(argv: list[str]) -> int:
    command, args = argv[0], argv[1:]
    if command == "udp-recv":
        return udp_recv(int(args[0]))
    if command == "udp-send":
        return udp_send(args[0], int(args[1]), float(args[2]))
    if command == "tcp-hold":
        return tcp_hold(args[0], float(args[1]), args[2:])
    sys.exit(f"unknown command {command!r}: udp-recv, udp-send or tcp-hold")


# -- the test's side ------------------------------------------------------------------


class LoadError(AssertionError):
    """A load process that did not start or did not answer."""


class Child:
    """One load process in a bed's namespace: JSON lines out, commands in."""

    def __init__(self, tb, host: str, argv: list[str], timeout: float):
        import subprocess
        self.what = f"{argv[0]} in {host}"
        self.proc = tb.popen(host, [sys.executable, "-I", os.path.abspath(__file__), *argv],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.ready = self._line(timeout)

    def _line(self, timeout: float) -> dict:
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        try:
            if not sel.select(timeout):
                raise LoadError(f"{self.what} said nothing for {timeout:g} s")
        finally:
            sel.close()
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(5)
            raise LoadError(f"{self.what} ended (exit {self.proc.returncode}): {self.proc.stderr.read().strip()}")
        return json.loads(line)

    def report(self, timeout: float = 10) -> dict:
        self.proc.stdin.write("report\n")
        self.proc.stdin.flush()
        return self._line(timeout)

    def finish(self, timeout: float = 10) -> dict:
        """Close stdin: the last report, and the process ends."""
        self.proc.stdin.close()
        last = self._line(timeout)
        self.proc.wait(timeout)
        return last

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()        # by its PID (Popen)
            self.proc.wait()


class LoadResult:
    def __init__(self, sent: dict | None, udp: dict | None, tcp: dict | None):
        self.sent, self.udp, self.tcp = sent, udp, tcp
        if sent and udp:
            udp["lost"] = sent["sent"] - udp["received"]

    def tcp_alive(self) -> int:
        return sum(self.tcp["open"].values()) if self.tcp else 0


class LoadRun:
    """The loads of one test, each ended (by PID) when the block ends."""

    def __init__(self, tb):
        self.tb = tb
        self.receiver = self.sender = self.holder = None

    def __enter__(self) -> "LoadRun":
        return self

    def __exit__(self, *exc) -> None:
        for child in (self.sender, self.holder, self.receiver):
            if child:
                child.kill()

    def udp(self, src: str, dst: str, addr: str, port: int, rate: float) -> None:
        self.receiver = Child(self.tb, dst, ["udp-recv", str(port)], timeout=10)
        self.sender = Child(self.tb, src, ["udp-send", addr, str(port), str(rate)], timeout=10)

    def tcp(self, src: str, targets: list[tuple[str, int, int]], interval: float = 0.1, tag: str = "hold") -> dict:
        """Connect and start echoing; the ready line: connected, failed."""
        spec = [f"{addr}:{port}:{count}" for addr, port, count in targets]
        self.holder = Child(self.tb, src, ["tcp-hold", tag, str(interval), *spec], timeout=30)
        return self.holder.ready

    def report(self) -> LoadResult:
        """Where the loads are now (the sender keeps sending: nothing is 'lost' yet)."""
        return LoadResult(None, self.receiver.report() if self.receiver else None,
                          self.holder.report() if self.holder else None)

    def finish(self, settle: float = 0.5) -> LoadResult:
        """Stop the sender, let the last datagrams arrive, end every load."""
        sent = self.sender.finish() if self.sender else None
        udp = None
        if self.receiver:
            deadline, last = time.monotonic() + 5, -1
            while time.monotonic() < deadline:      # until nothing more arrives
                time.sleep(settle)
                now = self.receiver.report()["received"]
                if now == last or now >= sent["sent"]:
                    break
                last = now
            udp = self.receiver.finish()
        tcp = self.holder.finish() if self.holder else None
        self.sender = self.receiver = self.holder = None
        return LoadResult(sent, udp, tcp)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
