"""The kernel program against the reference: random rulesets (1 to 1,000
rules, IPv4 and IPv6, every field but conntrack) and packets aimed at them go
through the deployed firewall with BPF_PROG_TEST_RUN, and every verdict must
be what ``rules.first_match`` says. One chain is changed live from ruleset to
ruleset, which exercises the atomic switch between rule versions as well."""
from __future__ import annotations

import contextlib
import os

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6, ICMPv6Unknown, IPv6ExtHdrFragment
from scapy.layers.l2 import Ether

from vnfchain import Chain, NotDeployedError
from vnfchain.chain import deploy as deploy_mod
from vnfchain.firewall.rules import first_match
from tests.chain_fixtures import chain_name
from tests.scratch_netns import scratch_netns
from tests.firewall_oracle import RandomPick, random_packets, random_rules, verdict

pytestmark = pytest.mark.root

NS = f"vctd{os.getpid()}"
IFACES = ("fw-in0", "fw-in1", "other0")   # the oracle's rules also name other0
# what each verdict looks like from outside the chain (see CHAIN)
SEEN_AS = {"allow": "XDP_TX", "drop": "XDP_DROP", "goto:web": "XDP_PASS", "goto:dns": "XDP_REDIRECT",
           "goto:slow": "XDP_REDIRECT"}


def chain_yaml(name, rules, default):
    lines = [f"name: {name}", "exit: tx", f"attach: [{{interface: fw-in0, netns: {NS}}}]",
             "functions:", "  fw:", "    type: firewall", f"    default: {default}", "    rules:"]
    lines += [f"      - {r.model_dump_json(exclude_defaults=True, exclude_none=True)}" for r in rules]
    # the branches must exist whatever the ruleset: two rules no generated packet matches
    lines += [f"      - {{action: goto, label: {label}, proto: 254}}" for label in ("web", "dns", "slow")]
    lines += ["    next: {web: web, dns: dns, slow: dns}",
              "  web: {type: counter, verdict: pass}",
              "  dns: {type: forward, interface: fw-in1}"]
    return "\n".join(lines) + "\n"


def frame(wire, ident=1):
    """The wire's frame; fragments of one datagram share ``ident``."""
    p = wire.packet
    ether = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    if p.family == 4:
        l3 = IP(src=p.src, dst=p.dst, proto=p.proto, id=ident & 0xffff)
        if wire.frag == "first":
            l3.flags = "MF"
        elif wire.frag == "later":
            l3.frag = 100
    else:
        l3 = IPv6(src=p.src, dst=p.dst)
        if wire.frag == "whole":
            l3.nh = p.proto
        else:
            l3 = l3 / IPv6ExtHdrFragment(nh=p.proto, id=ident, m=wire.frag == "first",
                                         offset=100 if wire.frag == "later" else 0)
    if wire.frag == "later":
        return ether / l3 / (b"\x00" * 24)
    if p.proto == 6:
        l4 = TCP(sport=p.sport, dport=p.dport, flags=p.tcp_flags)
    elif p.proto == 17:
        l4 = UDP(sport=p.sport, dport=p.dport)
    elif p.proto == 1:
        l4 = ICMP(type=p.icmp_type)
    elif p.proto == 58:
        l4 = ICMPv6Unknown(type=p.icmp_type, msgbody=b"\0" * 4)   # the kernel's 8-byte minimum
    else:
        l4 = b"\x00" * 8
    return ether / l3 / l4


@pytest.fixture(scope="module")
def ports():
    with scratch_netns(NS, {dev: [] for dev in IFACES}) as (_, index, _ip):
        yield index


@pytest.fixture(scope="module")
def firewall(deployed, ports):   # deployed: skips without root/BCC
    name = chain_name("diff")
    yield lambda rules, default: Chain.from_yaml_text(chain_yaml(name, rules, default)).deploy()
    with contextlib.suppress(NotDeployedError):
        deploy_mod.undeploy(name)


@pytest.mark.parametrize("seed,nrules", [(1, 1), (2, 5), (3, 20), (4, 60), (5, 200), (6, 1000)])
def test_kernel_verdicts_equal_first_match(firewall, ports, seed, nrules):
    pick = RandomPick(seed)
    rules = random_rules(pick, nrules, families=(4, 6), ifaces=IFACES[:2], specific=0.6 if nrules > 100 else 0)
    default = pick.choice(("allow", "drop"))
    dep = firewall(rules, default)
    wrong = []
    for i, wire in enumerate(random_packets(pick, rules, 300, families=(4, 6), ifaces=IFACES[:2])):
        packet = wire.packet
        # a later fragment whose first fragment the firewall never saw has nothing
        # to be classified by: it gets the unparsed verdict, here the default
        index = None if wire.frag == "later" else first_match(rules, packet)
        want = SEEN_AS[verdict(rules, index, default)]
        got = dep.run(frame(wire, seed << 16 | i), ingress_ifindex=ports[packet.iif or IFACES[0]],
                      netns=NS).action
        if got != want:
            wrong.append(f"{wire}: kernel {got}, expected {want}")
    assert not wrong, f"{len(wrong)} of 300 differ, e.g.\n" + "\n".join(wrong[:5])
