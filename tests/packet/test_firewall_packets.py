"""The firewall through BPF_PROG_TEST_RUN: every match field and action, the
default, conntrack states, and live rule changes — in both chain modes. Each
table row: description, packet in, expected verdict, the rule that decides."""
from __future__ import annotations

import os
import time

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, UDPerror
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Ether

from vnfchain import Chain
from vnfchain.chain import deploy as deploy_mod
from tests.chain_fixtures import MODES, chain_name, delta
from tests.scratch_netns import scratch_netns

pytestmark = pytest.mark.root

C, S = "198.18.1.2", "198.18.2.2"

RULES = """
name: fw
functions:
  fw:
    type: firewall
    default: drop
    rules:
      - {action: drop, src: 198.18.9.0/24}                          # 0 source CIDR
      - {action: allow, proto: udp, dst: [198.18.2.10/32, 198.18.2.11/32]}  # 1 destination list
      - {action: allow, proto: tcp, dport: 80}                      # 2 one port
      - {action: allow, proto: tcp, dport: "8000-8080"}             # 3 a range
      - {action: allow, proto: udp, sport: [53, 123]}               # 4 a list
      - {action: drop, proto: tcp, dport: 22, flags: "syn,!ack"}    # 5 TCP flags
      - {action: allow, proto: tcp, dport: 22}                      # 6
      - {action: allow, proto: icmp, icmp_type: echo-request}       # 7 ICMP type
      - {action: allow, proto: 47}                                  # 8 a protocol number
      - {action: goto, label: web, proto: tcp, dport: 443}          # 9 goto
      - {action: allow, proto: tcp, src: "::ffff:198.18.1.0/120"}   # 10 IPv6
      - {action: allow, iif: fw1}                                   # 11 ingress interface
    next: {web: web}
  web: {type: counter}
"""


NS = f"vctw{os.getpid()}"


def eth(p):
    return Ether(src="02:00:00:00:01:02", dst="02:00:00:00:01:01") / p


@pytest.fixture(scope="module")
def port():
    """Packets arrive on fw0 (tail-call chain attached) or fx0 (fused chain
    attached); rule 11 names fw1. Returns {name: ifindex}."""
    with scratch_netns(NS, {"fw0": [], "fx0": [], "fw1": []}) as (_, index, _ip):
        yield index


@pytest.fixture(params=MODES)
def fw(request, deployed, port):
    """(deployment, run) for the RULES chain, attached in NS."""
    ingress = "fw0" if request.param == "tailcall" else "fx0"
    dep = deployed(RULES, request.param, attach=[f"{ingress}@{NS}"])

    def run(packet, ifname=None):
        return dep.run(packet, ingress_ifindex=port[ifname or ingress], netns=NS)
    return dep, run


CASES = [
    ("source CIDR drops", IP(src="198.18.9.5", dst=S) / TCP(dport=80), "XDP_DROP", 0),
    ("destination in a list", IP(src=C, dst="198.18.2.11") / UDP(sport=999, dport=9), "XDP_PASS", 1),
    ("destination not in the list: default", IP(src=C, dst="198.18.2.12") / UDP(sport=999, dport=9), "XDP_DROP", None),
    ("one port", IP(src=C, dst=S) / TCP(dport=80), "XDP_PASS", 2),
    ("top of a range", IP(src=C, dst=S) / TCP(dport=8080), "XDP_PASS", 3),
    ("just past a range: default", IP(src=C, dst=S) / TCP(dport=8081), "XDP_DROP", None),
    ("source port in a list", IP(src=C, dst=S) / UDP(sport=123, dport=9999), "XDP_PASS", 4),
    ("bare SYN matches syn,!ack", IP(src=C, dst=S) / TCP(dport=22, flags="S"), "XDP_DROP", 5),
    ("SYN-ACK does not", IP(src=C, dst=S) / TCP(dport=22, flags="SA"), "XDP_PASS", 6),
    ("ICMP echo request", IP(src=C, dst=S) / ICMP(type=8), "XDP_PASS", 7),
    ("ICMP echo reply: default", IP(src=C, dst=S) / ICMP(type=0), "XDP_DROP", None),
    ("protocol by number (GRE)", IP(src=C, dst=S, proto=47) / (b"\x00" * 8), "XDP_PASS", 8),
    ("goto branches to web", IP(src=C, dst=S) / TCP(dport=443), "XDP_PASS", 9),
    ("IPv6 source prefix", IPv6(src="::ffff:198.18.1.5", dst="::ffff:198.18.2.2") / TCP(dport=9), "XDP_PASS", 10),
    ("IPv6 outside the prefix: default", IPv6(src="::ffff:198.18.3.5", dst="::ffff:198.18.2.2") / TCP(dport=9),
     "XDP_DROP", None),
]


@pytest.mark.parametrize("desc,packet,action,rule", CASES, ids=[c[0] for c in CASES])
def test_rules(fw, desc, packet, action, rule):
    dep, run = fw
    before = dep.stats()
    result = run(eth(packet))
    changed = delta(before, dep.stats())
    assert result.action == action
    hit = f"rule{rule}_hits" if rule is not None else "default_hits"
    assert changed["fw"][hit] == 1
    assert [k for k in changed["fw"] if k.endswith("_hits")] == [hit]
    if action == "XDP_DROP":
        assert changed["fw"]["drop_rule" if rule is not None else "drop_default_policy"] == 1
    if rule == 9:
        assert changed["fw"]["branch"] == 1 and changed["web"]["rx_packets"] == 1


def test_ingress_interface(fw):
    _, run = fw
    packet = eth(IP(src=C, dst="198.18.2.12") / UDP(sport=999, dport=9))
    assert run(packet).action == "XDP_DROP"          # the default
    assert run(packet, "fw1").action == "XDP_PASS"   # rule 11: iif fw1


def test_non_ip_passes(fw):
    _, run = fw
    assert run(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / ARP(psrc=C, pdst=S)).action == "XDP_PASS"


CONNTRACK = """
name: ct
functions:
  fw:
    type: firewall
    conntrack: true
    timeouts: {udp: 1, unreplied: 1}
    default: drop
    rules:
      - {action: allow, ct: [established, related]}
      - {action: allow, proto: tcp, src: 198.18.1.0/24, dport: 80, ct: new}
      - {action: allow, proto: icmp, icmp_type: echo-request, src: 198.18.1.0/24}
      - {action: allow, proto: udp, src: 198.18.1.0/24}
"""


def tcp(src, dst, sport, dport, flags):
    return eth(IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags=flags))


@pytest.mark.parametrize("mode", MODES)
def test_conntrack_tcp(deployed, mode):
    dep = deployed(CONNTRACK, mode)
    port = 40000 if mode == "tailcall" else 40100
    assert dep.run(tcp(C, S, port, 80, "S")).action == "XDP_PASS"         # new, allowed
    assert dep.run(tcp(S, C, 80, port, "SA")).action == "XDP_PASS"        # reply: established
    assert dep.run(tcp(C, S, port, 80, "A")).action == "XDP_PASS"
    assert dep.run(tcp(S, C, 80, port + 1, "SA")).action == "XDP_DROP"   # no such flow: invalid
    assert dep.run(tcp(S, C, 80, port, "R")).action == "XDP_PASS"         # RST ends the flow
    assert dep.run(tcp(S, C, 80, port, "A")).action == "XDP_DROP"         # ... so this is invalid
    assert dep.run(tcp(S, C, 5555, port + 2, "S")).action == "XDP_DROP"   # inbound new: no rule


@pytest.mark.parametrize("mode", MODES)
def test_conntrack_icmp_udp_related_and_timeout(deployed, mode):
    dep = deployed(CONNTRACK, mode)
    ident = 7 if mode == "tailcall" else 8
    assert dep.run(eth(IP(src=C, dst=S) / ICMP(type=8, id=ident))).action == "XDP_PASS"
    assert dep.run(eth(IP(src=S, dst=C) / ICMP(type=0, id=ident))).action == "XDP_PASS"
    assert dep.run(eth(IP(src=S, dst=C) / ICMP(type=0, id=ident + 100))).action == "XDP_DROP"

    sport = 5000 if mode == "tailcall" else 5100
    sent = IP(src=C, dst=S) / UDP(sport=sport, dport=53)
    assert dep.run(eth(sent)).action == "XDP_PASS"
    unreachable = IP(src="198.18.2.1", dst=C) / ICMP(type=3, code=3) / IPerror(bytes(sent)[:28])
    assert dep.run(eth(unreachable)).action == "XDP_PASS"                # related
    stranger = IP(src="198.18.2.1", dst=C) / ICMP(type=3, code=3) / \
        IPerror(src=C, dst=S) / UDPerror(sport=sport + 1, dport=53)
    assert dep.run(eth(stranger)).action == "XDP_DROP"

    time.sleep(1.2)                                                       # udp timeout: 1 s
    assert dep.run(eth(IP(src=S, dst=C) / UDP(sport=53, dport=sport))).action == "XDP_DROP"


def test_live_rule_change_takes_effect_on_the_next_packet(deployed):
    name = chain_name("fwlive")
    base = f"name: {name}\nfunctions:\n  fw:\n    type: firewall\n    default: drop\n    rules:\n"
    packet = tcp(C, S, 1234, 80, "S")
    dep = Chain.from_yaml_text(base + "      - {action: allow, proto: tcp, dport: 80}\n").deploy(attach=[])
    try:
        assert dep.run(packet).action == "XDP_PASS"
        ids = dep.record.entry_prog_id, [f.prog_id for f in dep.record.functions]
        dep = Chain.from_yaml_text(base + "      - {action: drop, proto: tcp, dport: 80}\n"
                                          "      - {action: allow, proto: tcp}\n").deploy(attach=[])
        assert dep.last_change == "config"
        assert (dep.record.entry_prog_id, [f.prog_id for f in dep.record.functions]) == ids
        assert dep.run(packet).action == "XDP_DROP"
        assert dep.run(tcp(C, S, 1234, 81, "S")).action == "XDP_PASS"
        assert dep.stats()["fw"]["rule0_hits"] == 1   # hits count the running ruleset
    finally:
        deploy_mod.undeploy(name)


@pytest.mark.parametrize("mode", MODES)
def test_a_rule_change_restarts_only_the_hit_counters_of_the_rules_it_changed(deployed, mode):
    name = chain_name(f"fwhits{mode[0]}")
    dns, ssh, web = "{action: allow, proto: udp, dport: 53}", "{action: drop, proto: tcp, dport: 22}", \
        "{action: allow, proto: tcp}"

    def change(*rules, default="drop"):
        text = (f"name: {name}\nmode: {mode}\nfunctions:\n  fw:\n    type: firewall\n    default: {default}\n"
                "    rules:\n" + "".join(f"      - {r}\n" for r in rules))
        dep = Chain.from_yaml_text(text).deploy(attach=[])
        return dep, {k: v for k, v in dep.stats()["fw"].items() if k.endswith("_hits")}

    dep, _ = change(dns, ssh, web)
    try:
        for packet, times in ((eth(IP(src=C, dst=S) / UDP(dport=53)), 3), (tcp(C, S, 1234, 22, "S"), 2),
                              (tcp(C, S, 1234, 80, "S"), 1), (eth(IP(src=C, dst=S) / ICMP()), 4)):
            for _ in range(times):
                dep.run(packet)
        _, hits = change(dns, ssh.replace("22", "2222"), web)           # rule 1 edited
        assert hits == {"rule0_hits": 3, "rule2_hits": 1, "default_hits": 4}
        _, hits = change(dns, ssh, web, default="allow")                # rule 1 again, and the default
        assert hits == {"rule0_hits": 3, "rule2_hits": 1}
        _, hits = change("{action: drop, proto: icmp}", dns, ssh, web, default="allow")   # all moved
        assert hits == {}
    finally:
        deploy_mod.undeploy(name)
