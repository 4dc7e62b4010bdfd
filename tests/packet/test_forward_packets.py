"""The forward function through BPF_PROG_TEST_RUN, in a namespace of its own:
FIB lookups, MAC rewrite, TTL and checksum, and what goes to the stack."""
from __future__ import annotations

import os

import pytest
from scapy.layers.inet import IP, TCP, UDP, IPOption_LSRR, IPOption_SSRR
from scapy.layers.l2 import ARP, Ether

from tests.chain_fixtures import MODES, delta
from tests.scratch_netns import scratch_netns

pytestmark = pytest.mark.root

NS = f"vctf{os.getpid()}"
NEXT_HOP_MAC = "02:00:00:00:02:02"
IN_MAC = "02:00:00:00:01:01"
OUT_MAC = "02:00:00:00:02:01"

FIB_CHAIN = """
name: fib
functions:
  out: {type: forward}
"""


@pytest.fixture(scope="module")
def router():
    """in0 198.18.1.1/24, out0 198.18.2.1/24 (veths; this kernel has no dummy
    driver), a permanent neighbour 198.18.2.2, a blackhole for 198.18.3.0/24,
    forwarding on. Returns {name: ifindex}."""
    with scratch_netns(NS, {"in0": ["198.18.1.1/24"], "out0": ["198.18.2.1/24"]}, forwarding=True,
                       macs={"in0": IN_MAC, "out0": OUT_MAC}) as (_, index, ip):
        ip("neigh", "add", "198.18.2.2", "lladdr", NEXT_HOP_MAC, "dev", "out0", "nud", "permanent")
        ip("route", "add", "blackhole", "198.18.3.0/24")
        yield index


def packet(dst="198.18.2.2", ttl=64, options=()):
    return Ether(src="02:00:00:00:01:02", dst=IN_MAC) / IP(src="198.18.1.2", dst=dst, ttl=ttl,
                                                          options=list(options)) / \
        TCP(sport=40000, dport=80, flags="S")


@pytest.mark.parametrize("mode", MODES)
def test_fib_hit_rewrites_macs_and_ttl_then_redirects(deployed, router, mode):
    dep = deployed(FIB_CHAIN, mode)
    before = dep.stats()
    result = dep.run(packet(), ingress_ifindex=router["in0"], netns=NS)
    changed = delta(before, dep.stats())

    assert result.action == "XDP_REDIRECT"
    out = result.packet
    assert out.dst == NEXT_HOP_MAC and out.src == OUT_MAC
    assert out[IP].ttl == 63
    recomputed = IP(bytes(out[IP]))
    del recomputed.chksum
    assert out[IP].chksum == IP(bytes(recomputed)).chksum  # incremental update is right
    assert bytes(out[TCP]) == bytes(packet()[TCP])          # L4 untouched
    assert changed["out"]["redirect"] == 1


CASES = [
    ("no neighbour entry yet: the stack resolves it", dict(dst="198.18.2.3"), "XDP_PASS", "pass"),
    ("TTL 1: the stack sends time-exceeded", dict(ttl=1), "XDP_PASS", "pass"),
    ("blackhole route: dropped with reason no_route", dict(dst="198.18.3.1"), "XDP_DROP", "drop_no_route"),
    ("to the router itself: local delivery", dict(dst="198.18.2.1"), "XDP_PASS", "pass"),
    # a router drops what carries a source route unless accept_source_route says otherwise
    ("a loose source route: the stack applies accept_source_route",
     dict(options=[IPOption_LSRR(routers=["198.18.2.2"])]), "XDP_PASS", "pass"),
    ("a strict source route: the stack applies accept_source_route",
     dict(options=[IPOption_SSRR(routers=["198.18.2.2"])]), "XDP_PASS", "pass"),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("desc,kw,action,counter", CASES, ids=[c[0] for c in CASES])
def test_fib_misses(deployed, router, mode, desc, kw, action, counter):
    dep = deployed(FIB_CHAIN, mode)
    before = dep.stats()
    sent = packet(**kw)
    result = dep.run(sent, ingress_ifindex=router["in0"], netns=NS)
    assert result.action == action
    if action == "XDP_PASS":
        assert result.data == bytes(sent)  # handed to the stack untouched
    assert delta(before, dep.stats())["out"][counter] == 1


@pytest.mark.parametrize("mode", MODES)
def test_non_ip_goes_to_the_stack(deployed, router, mode):
    dep = deployed(FIB_CHAIN, mode)
    arp = Ether(src="02:00:00:00:01:02", dst="ff:ff:ff:ff:ff:ff") / ARP(psrc="198.18.1.2", pdst="198.18.1.1")
    assert dep.run(arp, ingress_ifindex=router["in0"], netns=NS).action == "XDP_PASS"


WIRE_CHAIN = """
name: wire
functions:
  out: {type: forward, interface: lo}
"""


@pytest.mark.parametrize("mode", MODES)
def test_named_interface_redirects_unchanged(deployed, mode):
    dep = deployed(WIRE_CHAIN, mode)
    sent = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src="198.18.1.2", dst="198.18.2.2") / UDP(dport=9)
    result = dep.run(sent)
    assert result.action == "XDP_REDIRECT"
    assert result.data == bytes(sent)
