"""Firewall conntrack end to end under a SYN flood: held TCP connections (idle
while it lasts) and a download keep working through a conntrack firewall while
the attacker sprays 100,000 spoofed SYNs from random 198.18.0.0/15 sources at
the web server, which answers every one of them (its SYN-ACKs go back through
the firewall, to nobody); a connection opened during the flood works too.

The firewall lets anyone open TCP to port 80 (a public web server) and the
client network open anything. The flood outnumbers the 65,536 flows a single
conntrack table held before unanswered flows had a table of their own. The bed
and the attacker are tests/conntrack_bed.py's."""
from __future__ import annotations

import contextlib
import random
import socket
import subprocess
import threading
import time

import pytest

from vnfchain.testbed.netlink import socket_in
from tests.chain_fixtures import delta
from tests.conntrack_bed import TOPOLOGY, Attacker, S, conntrack_firewall
from tests.testbed_fixtures import module_bed

pytestmark = [pytest.mark.root, pytest.mark.netns]

FLOOD, HELD = 100_000, 20
SPOOFED_RULE = 2   # the rule the spoofed SYNs match: anyone may open port 80


@pytest.fixture(scope="module")
def bed():
    yield from module_bed(TOPOLOGY, "ctf")


@pytest.fixture(scope="module")
def firewall(bed):
    with conntrack_firewall(bed, "ctflood", "- {action: allow, proto: tcp, src: 198.18.1.0/24, ct: new}",
                            "- {action: allow, proto: tcp, dport: 80, ct: new}") as dep:
        yield dep


def echoes(sock: socket.socket, text: bytes) -> bool:
    """Does the echo server send ``text`` back on this connection?"""
    try:
        sock.sendall(text)
        got = b""
        while len(got) < len(text):
            chunk = sock.recv(len(text) - len(got))
            if not chunk:
                return False
            got += chunk
        return got == text
    except OSError:
        return False


class Flood(threading.Thread):
    """The attacker's frames, 2,000 at a time, 10 ms apart (about 150,000 a
    second: enough to turn the unreplied table over many times a second, and
    few enough that the veth's queue drops none)."""

    def __init__(self, attacker: Attacker, frames: list[bytes]):
        super().__init__(name="flood", daemon=True)
        self.attacker, self.frames = attacker, frames

    def run(self) -> None:
        for i in range(0, len(self.frames), 2000):
            self.attacker.send(self.frames[i:i + 2000])
            time.sleep(0.01)


def test_connections_and_a_download_outlive_a_syn_flood(bed, firewall):
    attacker = Attacker(bed)
    held: list[socket.socket] = []
    try:
        for _ in range(HELD):
            sock = socket_in(bed.netns("client"), socket.AF_INET, socket.SOCK_STREAM)
            sock.settimeout(3)
            sock.connect((S, 7))
            held.append(sock)
        assert all(echoes(sock, b"before\n") for sock in held)
        frames = attacker.spoofed_syns(S, 80, FLOOD, random.Random(7))
        before = firewall.stats()
        size = 16_000_000
        download = bed.popen("client", ["curl", "-sS", "--noproxy", "*", "-o", "/dev/null", "-w",
                                        "%{size_download}", "--max-time", "40",
                                        f"http://{S}/download?size={size}&seconds=6"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        flood = Flood(attacker, frames)
        flood.start()
        time.sleep(0.3)
        during = bed.http_get("client", f"http://{S}/", timeout=5)
        flood_went_on = flood.is_alive()
        flood.join()
        lost = [i for i, sock in enumerate(held) if not echoes(sock, b"after the flood\n")]
        out, err = download.communicate(timeout=60)
        changed = delta(before, firewall.stats())["fw"]

        assert not lost, f"{len(lost)} of {HELD} held connections no longer echo ({changed})"
        assert download.returncode == 0 and out == str(size), f"download: {err.strip()} ({out} bytes)"
        assert during.ok and flood_went_on, f"a new connection during the flood: {during}"
        assert changed[f"rule{SPOOFED_RULE}_hits"] >= 0.95 * FLOOD      # the SYNs reached the firewall
        assert changed["ct_unreplied_evicted"] > 0 and "ct_flows_evicted" not in changed
    finally:
        for sock in held:
            with contextlib.suppress(OSError):
                sock.close()
        attacker.close()
