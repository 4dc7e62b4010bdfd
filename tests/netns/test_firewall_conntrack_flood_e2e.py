"""Firewall conntrack end to end under a SYN flood: held TCP connections (idle
while it lasts) and a download keep working through a conntrack firewall while
the attacker sends 100,000 spoofed SYNs from random 198.19.0.0/16 sources at
the web server (tests/syn_flood.py), which answers every one of them: its
SYN-ACKs go back through the firewall, to nobody. Connections opened during
the flood work too.

The firewall lets anyone open TCP to port 80 (a public web server) and the
client network open anything. The flood outnumbers the 65,536 flows a single
conntrack table held before unconfirmed flows had a table of their own. The
bed is tests/conntrack_bed.py's."""
from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vnfchain.testbed.netlink import socket_in
from tests.chain_fixtures import delta
from tests.conntrack_bed import TOPOLOGY, S, conntrack_firewall
from tests.testbed_fixtures import echoes, module_bed

pytestmark = [pytest.mark.root, pytest.mark.netns]

SYN_FLOOD = Path(__file__).resolve().parent.parent / "syn_flood.py"
FLOWS, RATE, HELD = 100_000, 25_000, 20
UNCONFIRMED = 65_536 // 4   # the default max_unconfirmed
SPOOFED_RULE = 2   # the rule the spoofed SYNs match: anyone may open port 80


@pytest.fixture(scope="module")
def bed():
    yield from module_bed(TOPOLOGY, "ctf")


@pytest.fixture(scope="module")
def firewall(bed):
    with conntrack_firewall(bed, "ctflood", "- {action: allow, proto: tcp, src: 198.18.1.0/24, ct: new}",
                            "- {action: allow, proto: tcp, dport: 80, ct: new}") as dep:
        yield dep


def test_connections_and_a_download_outlive_a_syn_flood(bed, firewall):
    size = 16_000_000
    with contextlib.ExitStack() as stack:
        held = []
        for i in range(HELD):
            sock = stack.enter_context(socket_in(bed.netns("client"), socket.AF_INET, socket.SOCK_STREAM))
            sock.settimeout(3)
            sock.connect((S, 7))
            assert echoes(sock, f"before {i}\n".encode())
            held.append(sock)
        before = firewall.stats()
        download = bed.popen("client", ["curl", "-sS", "--noproxy", "*", "-o", "/dev/null", "-w",
                                        "%{size_download}", "--max-time", "40",
                                        f"http://{S}/download?size={size}&seconds=6"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        stack.callback(lambda: download.poll() is None and download.kill())
        flood = bed.popen("attacker", [sys.executable, "-I", str(SYN_FLOOD), S, "80", str(FLOWS), str(RATE)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        stack.callback(lambda: flood.poll() is None and flood.kill())
        during = []
        while flood.poll() is None:
            during.append(bed.http_get("client", f"http://{S}/", timeout=3))
            time.sleep(0.2)
        out, err = flood.communicate()
        assert flood.returncode == 0 and json.loads(out)["flows"] == FLOWS, err
        lost = [i for i, sock in enumerate(held) if not echoes(sock, f"after {i}\n".encode())]
        got, err = download.communicate(timeout=60)
        changed = delta(before, firewall.stats())["fw"]

    assert not lost, f"{len(lost)} of {HELD} held connections no longer echo ({changed})"
    assert download.returncode == 0 and got == str(size), f"download: {err.strip()} ({got} bytes)"
    assert len(during) >= 3 and all(r.ok and r.body == "server\n" for r in during), during
    assert changed[f"rule{SPOOFED_RULE}_hits"] >= 0.99 * FLOWS          # the spoofed flows reached the rules
    assert changed["ct_evicted_unconfirmed"] >= FLOWS - UNCONFIRMED   # the flood churned only that table
    assert "ct_evicted_flows" not in changed
