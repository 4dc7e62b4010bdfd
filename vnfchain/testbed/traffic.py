"""Traffic and checks between the hosts of a test bed, so tests read like the scenario::

    assert tb.ping("client", "198.18.2.2").ok
    assert tb.http_get("client", "http://198.18.2.2/").body == "server\\n"
    assert tb.tcp_echo("client", "198.18.2.2", 7, b"hi") == b"hi"
    assert tb.tls_hello("client", "198.18.2.2", 443, "www.example") == "server\\n"
    assert tb.dns_query("client", "198.18.2.2", "www.example") == ["198.18.0.53"]
    got = tb.send_expect("client", "eth0", IP(dst="198.18.2.2")/ICMP(),
                         "server", "eth0", filter=lambda p: ICMP in p)

``ping`` and ``http_get`` run the real clients (ping, curl) inside the source
host's namespace. The echo clients and ``send_expect``, ``tls_hello`` and ``dns_query`` use sockets opened
inside the namespaces from this process (no subprocess, no sleeps):
``send_expect`` opens a packet socket on the receiving interface *before* it
sends, so nothing is missed, and returns the frames that arrived there.
"""
from __future__ import annotations

import re
import socket
import ssl
import struct
import subprocess
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Protocol

from ..errors import TestbedError
from .agent import dns_name, dns_question
from .netlink import socket_in


class Hosts(Protocol):
    """What traffic needs of a test bed (``Testbed`` is one): its hosts by name."""

    def exec(self, host: str, argv: list[str]) -> subprocess.CompletedProcess: ...

    def netns(self, host: str) -> str: ...

    def mac(self, host: str, ifname: str) -> str: ...

    def peer_mac(self, host: str, ifname: str) -> str: ...

_ETH_P_ALL = 0x0003
_PACKET_OUTGOING = 4


@dataclass(frozen=True)
class PingResult:
    sent: int
    received: int
    output: str

    @property
    def loss(self) -> float:
        """Fraction of echo requests without a reply, 0.0 .. 1.0."""
        return 1.0 if self.sent == 0 else (self.sent - self.received) / self.sent

    @property
    def ok(self) -> bool:
        return self.sent > 0 and self.received == self.sent


@dataclass(frozen=True)
class HttpResult:
    status: int  # 0 if no HTTP response came back
    body: str
    error: str = ""

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


def ping(tb: Hosts, src: str, dst: str, count: int = 3, *, interval: float = 0.05,
         timeout: float = 1.0) -> PingResult:
    argv = ["ping", "-n", "-q", "-c", str(count), "-i", f"{interval:g}", "-W", f"{timeout:g}", str(dst)]
    proc = tb.exec(src, argv)
    match = re.search(r"(\d+) packets transmitted, (\d+) (?:packets )?received", proc.stdout)
    if not match:
        return PingResult(0, 0, proc.stdout + proc.stderr)
    return PingResult(int(match[1]), int(match[2]), proc.stdout)


_STATUS_MARK = "\n--vnfchain-http-status:"


def http_get(tb: Hosts, src: str, url: str, *, timeout: float = 3.0, headers=()) -> HttpResult:
    """``headers``: extra request headers, e.g. ``["Host: www.example"]``."""
    argv = ["curl", "-sS", "--noproxy", "*", "--max-time", f"{timeout:g}", "-w", _STATUS_MARK + "%{http_code}", url]
    for header in headers:
        argv[1:1] = ["-H", header]
    proc = tb.exec(src, argv)
    body, _, status = proc.stdout.rpartition(_STATUS_MARK)
    return HttpResult(int(status or 0), body, proc.stderr.strip())


def tcp_echo(tb: Hosts, src: str, addr: str, port: int, payload: bytes, *, timeout: float = 2.0) -> bytes:
    """Send ``payload`` over TCP from ``src`` and return what came back before the
    server closed (an echo server returns ``payload``); raises TestbedError if the
    connection fails."""
    with socket_in(tb.netns(src), socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect((str(addr), port))
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            chunks = []
            while data := sock.recv(65536):
                chunks.append(data)
        except OSError as exc:
            raise TestbedError(f"tcp {src} -> {addr}:{port}: {exc.strerror or exc}") from None
    return b"".join(chunks)


def udp_echo(tb: Hosts, src: str, addr: str, port: int, payload: bytes, *,
             timeout: float = 1.0) -> bytes | None:
    """Send one datagram from ``src``; the reply, or None if none came in ``timeout`` s."""
    with socket_in(tb.netns(src), socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.sendto(payload, (str(addr), port))
            data, _ = sock.recvfrom(65536)
        except (socket.timeout, ConnectionRefusedError):
            return None
    return data


def tls_hello(tb: Hosts, src: str, addr: str, port: int, server_name: str, *,
              timeout: float = 2.0) -> str:
    """Open a TLS connection from ``src`` asking for ``server_name`` (SNI) and
    return what the server sent before closing (the bed's ``tls`` service sends
    its host's name). The certificate is not checked: beds use throwaway ones.
    Raises TestbedError if the connection or the handshake fails."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket_in(tb.netns(src), socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect((str(addr), port))
            with context.wrap_socket(sock, server_hostname=server_name) as conn:
                chunks = []
                while data := conn.recv(4096):
                    chunks.append(data)
        except (OSError, ssl.SSLError) as exc:
            raise TestbedError(f"tls {src} -> {addr}:{port} ({server_name}): {exc.strerror or exc}") from None
    return b"".join(chunks).decode(errors="replace")


def dns_query(tb: Hosts, src: str, server: str, name: str, *, port: int = 53,
              timeout: float = 1.0) -> list[str] | None:
    """Ask ``server`` (UDP) for the A records of ``name`` from ``src``: the
    addresses answered, or None if no answer came within ``timeout`` s."""
    query_id = int(time.monotonic_ns() & 0xFFFF)
    query = struct.pack("!HHHHHH", query_id, 0x0100, 1, 0, 0, 0) + dns_name(name) + struct.pack("!HH", 1, 1)
    reply = udp_echo(tb, src, server, port, query, timeout=timeout)   # one datagram there and back
    if reply is None:
        return None
    if reply[:2] != query[:2]:
        raise TestbedError(f"dns {src} -> {server}: an answer to another query came back")
    answers, (_, _, p) = struct.unpack_from("!H", reply, 6)[0], dns_question(reply)
    addresses = []
    for _ in range(answers):      # each: name pointer, type, class, ttl, length, data
        rtype, length = struct.unpack_from("!H", reply, p + 2)[0], struct.unpack_from("!H", reply, p + 10)[0]
        if rtype == 1 and length == 4:
            addresses.append(socket.inet_ntoa(reply[p + 12:p + 16]))
        p += 12 + length
    return addresses


def send_expect(tb: Hosts, src_host: str, src_if: str, packets, dst_host: str, dst_if: str, *,
                filter: Callable | None = None, timeout: float = 1.0, count: int = 1) -> list:
    """Send scapy ``packets`` out of ``src_host:src_if`` and return the frames that
    arrive at ``dst_host:dst_if`` within ``timeout`` s and pass ``filter`` (a
    callable on a scapy packet), stopping early after ``count`` of them.

    A packet without an Ethernet header gets one: source the sending interface's
    MAC, destination its veth peer's MAC. An empty list means nothing arrived."""
    from scapy.layers.l2 import Ether  # scapy is slow to import; only load it here

    if not isinstance(packets, Iterable) or hasattr(packets, "layers"):
        packets = [packets]
    frames = []
    for pkt in packets:
        if not isinstance(pkt, Ether):
            pkt = Ether(src=tb.mac(src_host, src_if), dst=tb.peer_mac(src_host, src_if)) / pkt
        frames.append(bytes(pkt))

    rx = socket_in(tb.netns(dst_host), socket.AF_PACKET, socket.SOCK_RAW, socket.htons(_ETH_P_ALL))
    tx = socket_in(tb.netns(src_host), socket.AF_PACKET, socket.SOCK_RAW, 0)
    got = []
    with rx, tx:
        rx.bind((dst_if, _ETH_P_ALL))
        tx.bind((src_if, 0))
        for frame in frames:
            tx.send(frame)
        deadline = time.monotonic() + timeout
        while len(got) < count and (left := deadline - time.monotonic()) > 0:
            rx.settimeout(left)
            try:
                data, addr = rx.recvfrom(65536)
            except socket.timeout:
                break
            if addr[0] != dst_if or addr[2] == _PACKET_OUTGOING:
                continue
            pkt = Ether(data)
            if filter is None or filter(pkt):
                got.append(pkt)
    return got
