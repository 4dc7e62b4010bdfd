"""Whole chains through BPF_PROG_TEST_RUN: verdict, output bytes and counters,
in tail-call and fused mode alike. Each table row: description, packet in,
expected XDP action, and which functions the packet visits."""
from __future__ import annotations

import subprocess

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether

from tests.chain_fixtures import MODES, delta

pytestmark = pytest.mark.root

CLIENT, SERVER = "198.18.1.2", "198.18.2.2"
ETH = dict(src="02:00:00:00:01:02", dst="02:00:00:00:01:01")

BRANCHING = """
name: branching
functions:
  steer:
    type: classify
    rules:
      - {proto: tcp, dport: 80, label: web}
      - {proto: udp, label: dns}
      - {proto: icmp, label: ping}     # emitted, but no successor: default path
    next: {web: web, dns: dropper, default: tail}
  web: {type: counter, next: tail}
  dropper: {type: counter, verdict: drop}
  tail: {type: counter}
"""

BRANCH_CASES = [
    ("tcp/80 takes the web branch", Ether(**ETH) / IP(src=CLIENT, dst=SERVER) / TCP(dport=80),
     "XDP_PASS", ["steer", "web", "tail"], "branch"),
    ("tcp/22 takes the default branch", Ether(**ETH) / IP(src=CLIENT, dst=SERVER) / TCP(dport=22),
     "XDP_PASS", ["steer", "tail"], "continue"),
    ("udp is dropped by the dns branch", Ether(**ETH) / IP(src=CLIENT, dst=SERVER) / UDP(dport=53),
     "XDP_DROP", ["steer", "dropper"], "branch"),
    ("a label without successor falls back to default", Ether(**ETH) / IP(src=CLIENT, dst=SERVER) / ICMP(),
     "XDP_PASS", ["steer", "tail"], "branch"),
    ("IPv6 tcp/80 is parsed too", Ether(**ETH) / IPv6(src="::ffff:198.18.1.2", dst="::ffff:198.18.2.2") / TCP(dport=80),
     "XDP_PASS", ["steer", "web", "tail"], "branch"),
    ("a VLAN tag is skipped", Ether(**ETH) / Dot1Q(vlan=7) / IP(src=CLIENT, dst=SERVER) / TCP(dport=80),
     "XDP_PASS", ["steer", "web", "tail"], "branch"),
    ("a later fragment has no ports", Ether(**ETH) / IP(src=CLIENT, dst=SERVER, frag=100, proto=6) / (b"\x00\x50" * 20),
     "XDP_PASS", ["steer", "tail"], "continue"),
    ("ARP is not IP: default path", Ether(**ETH) / ARP(psrc=CLIENT, pdst=SERVER),
     "XDP_PASS", ["steer", "tail"], "continue"),
    ("a bare Ethernet header does not crash the parser", Ether(**ETH, type=0x0800),
     "XDP_PASS", ["steer", "tail"], "continue"),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("desc,packet,action,path,steer_verdict", BRANCH_CASES,
                         ids=[c[0] for c in BRANCH_CASES])
def test_branching(deployed, mode, desc, packet, action, path, steer_verdict):
    dep = deployed(BRANCHING, mode)
    before = dep.stats()
    result = dep.run(packet)
    changed = delta(before, dep.stats())

    assert result.action == action
    if action == "XDP_PASS":
        assert result.data == bytes(packet)
    visited = [fn for fn in ("steer", "web", "dropper", "tail") if changed.get(fn, {}).get("rx_packets")]
    assert visited == path
    assert changed["(entry)"]["rx_packets"] == 1
    assert changed["(entry)"]["rx_bytes"] == len(packet)
    assert changed["steer"].get(steer_verdict) == 1
    if action == "XDP_DROP":
        assert changed["dropper"]["drop"] == 1 and changed["dropper"]["drop_policy"] == 1


def test_counter_counts_per_protocol(deployed):
    dep = deployed(BRANCHING, "tailcall")
    before = dep.stats()["tail"]
    for _ in range(3):
        dep.run(Ether(**ETH) / IP(src=CLIENT, dst=SERVER) / TCP(dport=22) / (b"x" * 100))
    after = dep.stats()["tail"]
    assert after["tcp_packets"] - before.get("tcp_packets", 0) == 3
    assert after["tcp_bytes"] - before.get("tcp_bytes", 0) == 3 * (14 + 20 + 20 + 100)


def test_both_modes_give_identical_results(deployed):
    outcomes = {}
    for mode in MODES:
        dep = deployed(BRANCHING, mode)
        outcomes[mode] = [(dep.run(p).action, dep.run(p).data) for _, p, *_ in BRANCH_CASES]
    assert outcomes["tailcall"] == outcomes["fused"]


LINE = """
name: line
exit: tx
on_miss: pass
functions:
  first: {type: counter, next: second}
  second: {type: counter}
"""


@pytest.mark.parametrize("mode", MODES)
def test_exit_action_applies_after_the_last_function(deployed, mode):
    dep = deployed(LINE, mode)
    packet = Ether(**ETH) / IP(src=CLIENT, dst=SERVER) / UDP(dport=9)
    result = dep.run(packet, repeat=10)
    assert result.action == "XDP_TX"
    assert result.data == bytes(packet)
    assert result.duration_ns > 0


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("exit_action,action,counted", [("drop", "XDP_DROP", {"drop": 1, "drop_exit": 1}),
                                                        ("pass", "XDP_PASS", {"pass": 1}),
                                                        ("tx", "XDP_TX", {"tx": 1})])
def test_the_last_function_counts_what_the_exit_did(deployed, mode, exit_action, action, counted):
    """A packet that leaves the last function gets the chain's exit action, and
    that function's counters say so (not "continue")."""
    dep = deployed(LINE.replace("exit: tx", f"exit: {exit_action}").replace("name: line", f"name: exit-{exit_action}"),
                   mode)
    before = dep.stats()
    assert dep.run(Ether(**ETH) / IP(src=CLIENT, dst=SERVER) / UDP(dport=9)).action == action
    changed = delta(before, dep.stats())
    assert changed["first"]["continue"] == 1
    assert {k: v for k, v in changed["second"].items() if not k.startswith(("rx_", "udp_"))} == counted


def test_missed_tail_call_is_counted_and_ends_in_on_miss(deployed):
    from vnfchain import bpfsys
    dep = deployed(LINE, "tailcall")
    packet = Ether(**ETH) / IP(src=CLIENT, dst=SERVER) / UDP(dport=9)
    slot = (1).to_bytes(4, "little")  # "second"
    with bpfsys.PinnedMap(str(dep.gen_dir / "progs")) as progs:
        progs.delete(slot)
        try:
            before = dep.stats()
            result = dep.run(packet)
            changed = delta(before, dep.stats())
        finally:
            prog_fd = bpfsys.obj_get(str(dep.gen_dir / "fn_second"))
            progs.update(slot, prog_fd.to_bytes(4, "little"))
            subprocess.run(["true"])  # keep the fd open until the update is done
            import os
            os.close(prog_fd)
    assert result.action == "XDP_PASS"  # on_miss: pass
    assert changed["first"]["tail_call_miss"] == 1
    assert "second" not in changed
    assert dep.run(packet).action == "XDP_TX"  # slot restored: the chain is whole again
