"""Firewall conntrack end to end against a blind attacker: real TCP connections
through a `conntrack: true` firewall that lets the server side in only as
`established` keep working while a third namespace sprays spoofed RSTs with
wrong sequence numbers at them, in both directions; a RST carrying the live
sequence number (read from a capture, as an on-path attacker would) still
ends a connection.

The bed and the attacker are tests/conntrack_bed.py's; the attacker's frames
name the client's and the server's addresses and ports."""
from __future__ import annotations

import random
import socket
import struct
import subprocess
import threading
import time

import pytest

from vnfchain.testbed import Testbed
from vnfchain.testbed.netlink import socket_in
from tests.chain_fixtures import delta
from tests.conntrack_bed import TOPOLOGY, Attacker, C, S, conntrack_firewall
from tests.testbed_fixtures import module_bed

pytestmark = [pytest.mark.root, pytest.mark.netns]

ETH_P_ALL = 0x0003   # ETH_P_IP would miss the frames the host sends


@pytest.fixture(scope="module")
def bed():
    yield from module_bed(TOPOLOGY, "cts")


@pytest.fixture(scope="module")
def firewall(bed):
    with conntrack_firewall(bed, "ctspoof", "- {action: allow, proto: tcp, src: 198.18.1.0/24, ct: new}") as dep:
        yield dep


def _after(a: int, b: int) -> bool:
    return (a - b) % 2**32 < 2**31 and a != b


class Tap:
    """The TCP segments crossing ``host:ifname`` (a packet socket read in a
    thread): for each way of each connection, the next sequence number its
    sender will use, i.e. what its receiver expects next."""

    def __init__(self, tb: Testbed, host: str, ifname: str):
        self.sock = socket_in(tb.netns(host), socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self.sock.bind((ifname, ETH_P_ALL))
        self.sock.settimeout(0.1)
        self.next_seq: dict[tuple, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="tap", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                frame = self.sock.recv(65536)
            except socket.timeout:
                continue
            ip = frame[14:]
            if frame[12:14] != b"\x08\x00" or len(ip) < 40 or ip[9] != 6:
                continue
            ihl, total = (ip[0] & 15) * 4, struct.unpack_from("!H", ip, 2)[0]
            sport, dport, seq = struct.unpack_from("!HHI", ip, ihl)
            doff, flags = ip[ihl + 12] >> 4, ip[ihl + 13]
            end = (seq + total - ihl - doff * 4 + ((flags & 2) != 0) + ((flags & 1) != 0)) % 2**32
            way = (socket.inet_ntoa(ip[12:16]), sport, socket.inet_ntoa(ip[16:20]), dport)
            if way not in self.next_seq or _after(end, self.next_seq[way]):
                self.next_seq[way] = end

    def ports_to(self, addr: str, port: int, timeout: float = 5.0) -> int:
        """The client port of the first connection seen to addr:port."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for src, sport, dst, dport in list(self.next_seq):
                if (dst, dport) == (addr, port):
                    return sport
            time.sleep(0.01)
        raise AssertionError(f"no connection to {addr}:{port} seen")

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture
def tap(bed):
    t = Tap(bed, "client", "eth0")
    yield t
    t.close()


@pytest.fixture
def attacker(bed):
    a = Attacker(bed)
    yield a
    a.close()


def test_download_survives_a_spray_of_spoofed_rsts(bed, firewall, tap, attacker):
    size = 16_000_000
    before = firewall.stats()
    curl = bed.popen("client", ["curl", "-sS", "--noproxy", "*", "-o", "/dev/null", "-w", "%{size_download}",
                                "--max-time", "30", f"http://{S}/download?size={size}&seconds=4"],
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    port = tap.ports_to(S, 80)
    rng = random.Random(port)
    while curl.poll() is None and attacker.sent < 4000:
        attacker.blind_rsts(tap, port, 80, rng)
        time.sleep(0.002)
    out, err = curl.communicate(timeout=40)
    changed = delta(before, firewall.stats())["fw"]
    assert curl.returncode == 0 and out == str(size), f"curl: {err.strip()} ({out} bytes) {changed} sent={attacker.sent}"
    assert attacker.sent >= 500
    assert changed["ct_out_of_window"] >= attacker.sent      # every spoofed RST was judged outside
    assert changed["drop_default_policy"] >= attacker.sent   # ... and stopped at the firewall
    assert "ct_rst_closed" not in changed


def test_a_rst_with_the_live_sequence_number_ends_a_held_connection(bed, firewall, tap, attacker):
    with socket_in(bed.netns("client"), socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(3)
        sock.connect((S, 7))
        port = sock.getsockname()[1]
        rng = random.Random(port)

        def echo(text: bytes) -> bytes:
            sock.sendall(text)
            got = b""
            while len(got) < len(text):
                got += sock.recv(len(text) - len(got))
            return got

        assert echo(b"before\n") == b"before\n"
        for _ in range(50):
            attacker.blind_rsts(tap, port, 7, rng)
        assert echo(b"after blind rsts\n") == b"after blind rsts\n"
        time.sleep(0.3)                                     # the client's ACK is on the wire too
        before = firewall.stats()
        attacker.rst(S, 7, C, port, seq=tap.next_seq[(S, 7, C, port)])
        with pytest.raises(ConnectionResetError):
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                sock.recv(16)
        assert delta(before, firewall.stats())["fw"]["ct_rst_closed"] == 1
