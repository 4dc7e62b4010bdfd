"""NAT through BPF_PROG_TEST_RUN in a gateway namespace (lan0 inside, wan0
outside): each translation, its reply, and checksums a receiver accepts — in
both chain modes."""
from __future__ import annotations

import contextlib
import os

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Ether

from tests.chain_fixtures import MODES, delta
from tests.frames import checksums_valid, eth
from tests.scratch_netns import scratch_netns

pytestmark = pytest.mark.root

NS = f"vctn{os.getpid()}"
LAN_HOST, LAN_SERVER, REMOTE, NAT = "198.18.1.11", "198.18.1.12", "198.18.100.2", "198.18.100.1"
RANGE = range(20000, 20100)

CHAIN = """
name: nat
functions:
  nat:
    type: nat
    outside: wan0
    snat:
      - {src: 198.18.1.0/24, to: masquerade, ports: "20000-20099"}
      - {src: 198.18.2.0/24, ports: "30000-30000"}
    dnat:
      - {proto: tcp, port: 8080, to: 198.18.1.12}
      - {proto: udp, port: 5353, to: 198.18.1.12, to_port: 53}
"""


@pytest.fixture(scope="module")
def gateways():
    """One gateway namespace per chain (lan0 198.18.1.1/24 and 198.18.2.1/24,
    wan0 198.18.100.1/24, forwarding on): {name: (netns, {ifname: ifindex})}."""
    with contextlib.ExitStack() as stack:
        made = {}
        for name in MODES + ("small", "swept"):
            ns, index, _ip = stack.enter_context(scratch_netns(
                f"{NS}{name[:2]}", {"lan0": ["198.18.1.1/24", "198.18.2.1/24"], "wan0": ["198.18.100.1/24"]},
                forwarding=True))
            made[name] = (ns, index)
        yield made


@pytest.fixture(params=MODES)
def nat(request, deployed, gateways):
    """(deployment, run(packet, side)) for the chain on lan0/wan0 of its gateway."""
    ns, index = gateways[request.param]
    dep = deployed(CHAIN, request.param, attach=[f"lan0@{ns}", f"wan0@{ns}"])

    def run(packet, side):
        return dep.run(packet, ingress_ifindex=index[f"{side}0"], netns=ns)
    return dep, run


def test_snat_tcp_and_its_reply(nat):
    dep, run = nat
    out = run(eth(IP(src=LAN_HOST, dst=REMOTE) / TCP(sport=40000, dport=80, flags="S")), "lan")
    assert out.action == "XDP_PASS"
    seen = out.packet
    assert seen[IP].src == NAT and seen[IP].dst == REMOTE and seen[TCP].sport in RANGE
    assert checksums_valid(out.data)
    port = seen[TCP].sport

    again = run(eth(IP(src=LAN_HOST, dst=REMOTE) / TCP(sport=40000, dport=80, flags="A")), "lan")
    assert again.packet[TCP].sport == port                      # the same mapping

    back = run(eth(IP(src=REMOTE, dst=NAT) / TCP(sport=80, dport=port, flags="SA")), "wan")
    assert back.packet[IP].dst == LAN_HOST and back.packet[TCP].dport == 40000
    assert checksums_valid(back.data)


def test_snat_udp_with_and_without_checksum(nat):
    _, run = nat
    with_sum = run(eth(IP(src=LAN_HOST, dst=REMOTE) / UDP(sport=5000, dport=53) / b"query"), "lan")
    assert with_sum.packet[IP].src == NAT and checksums_valid(with_sum.data)
    no_sum = eth(IP(src=LAN_HOST, dst=REMOTE) / UDP(sport=5001, dport=53, chksum=0) / b"query")
    out = run(no_sum, "lan")
    assert out.packet[UDP].chksum == 0 and checksums_valid(out.data)
    port = with_sum.packet[UDP].sport
    back = run(eth(IP(src=REMOTE, dst=NAT) / UDP(sport=53, dport=port) / b"answer"), "wan")
    assert back.packet[IP].dst == LAN_HOST and back.packet[UDP].dport == 5000
    assert checksums_valid(back.data)


def test_icmp_echo_identifier_is_translated(nat):
    _, run = nat
    out = run(eth(IP(src=LAN_HOST, dst=REMOTE) / ICMP(type=8, id=777, seq=1)), "lan")
    assert out.packet[IP].src == NAT and out.packet[ICMP].id in RANGE
    assert checksums_valid(out.data)
    back = run(eth(IP(src=REMOTE, dst=NAT) / ICMP(type=0, id=out.packet[ICMP].id, seq=1)), "wan")
    assert back.packet[IP].dst == LAN_HOST and back.packet[ICMP].id == 777
    assert checksums_valid(back.data)


def test_port_forward_and_its_reply(nat):
    _, run = nat
    into = run(eth(IP(src=REMOTE, dst=NAT) / TCP(sport=5555, dport=8080, flags="S")), "wan")
    assert into.packet[IP].dst == LAN_SERVER and into.packet[TCP].dport == 8080
    assert checksums_valid(into.data)
    reply = run(eth(IP(src=LAN_SERVER, dst=REMOTE) / TCP(sport=8080, dport=5555, flags="SA")), "lan")
    assert reply.packet[IP].src == NAT and reply.packet[TCP].sport == 8080
    dns = run(eth(IP(src=REMOTE, dst=NAT) / UDP(sport=7777, dport=5353) / b"q"), "wan")
    assert dns.packet[IP].dst == LAN_SERVER and dns.packet[UDP].dport == 53   # port changed too
    assert checksums_valid(dns.data)


def test_what_is_not_ours_passes_untouched(nat):
    _, run = nat
    for packet, side in [
        (eth(IP(src=LAN_HOST, dst="198.18.1.1") / TCP(sport=1, dport=22)), "lan"),  # the gateway itself
        (eth(IP(src="198.18.3.5", dst=REMOTE) / TCP(sport=1, dport=80)), "lan"),    # no snat rule
        (eth(IP(src=REMOTE, dst=NAT) / TCP(sport=1, dport=22)), "wan"),              # no mapping, no forward
    ]:
        result = run(packet, side)
        assert result.action == "XDP_PASS" and result.data == bytes(packet)


def test_exhausted_ports_drop_with_a_named_reason(nat):
    dep, run = nat
    first = run(eth(IP(src="198.18.2.5", dst=REMOTE) / TCP(sport=1000, dport=80, flags="S")), "lan")
    assert first.packet[TCP].sport == 30000
    before = dep.stats()
    second = run(eth(IP(src="198.18.2.6", dst=REMOTE) / TCP(sport=1000, dport=80, flags="S")), "lan")
    assert second.action == "XDP_DROP"
    assert delta(before, dep.stats())["nat"]["drop_nat_ports_exhausted"] == 1
    other_remote = run(eth(IP(src="198.18.2.6", dst="198.18.100.3") / TCP(sport=1000, dport=80, flags="S")), "lan")
    assert other_remote.packet[TCP].sport == 30000   # the same port serves another destination


def test_status_lists_live_translations(nat):
    dep, run = nat
    run(eth(IP(src=LAN_HOST, dst=REMOTE) / UDP(sport=6001, dport=123)), "lan")
    columns, rows = dep.state()["nat"]
    assert columns[:4] == ["proto", "inside", "translated", "remote"]
    assert any(r[0] == "udp" and r[1] == f"{LAN_HOST}:6001" and r[3] == f"{REMOTE}:123" for r in rows)
    assert dep.stats()["nat"]["translations"] == len(rows)


def test_icmp_error_about_a_translated_flow_is_translated_back(nat):
    from scapy.layers.inet import IPerror, UDPerror
    _, run = nat
    out = run(eth(IP(src=LAN_HOST, dst=REMOTE) / UDP(sport=6100, dport=33434) / b"probe"), "lan")
    quoted = IP(bytes(out.packet[IP]))   # what the remote end received, checksums and all
    error = eth(IP(src="198.18.100.254", dst=NAT) / ICMP(type=3, code=3) / IPerror(bytes(quoted)))
    back = run(error, "wan")
    got = back.packet
    assert got[IP].dst == LAN_HOST
    assert got[IPerror].src == LAN_HOST and got[UDPerror].sport == 6100
    assert checksums_valid(back.data)
    inner = IP(bytes(got[IPerror]))
    recomputed = inner.copy()
    del recomputed.chksum
    del recomputed[UDP].chksum
    assert bytes(IP(bytes(recomputed))) == bytes(inner)   # the quoted headers' checksums too


SMALL = """
name: natsmall
functions:
  nat:
    type: nat
    outside: wan0
    max_flows: 16
    snat: [{src: 198.18.1.0/24, ports: "20000-20099"}]
"""


def test_a_full_table_drops_new_flows_with_a_named_reason(deployed, gateways):
    ns, index = gateways["small"]
    dep = deployed(SMALL, "tailcall", tag="natsmall", attach=[f"lan0@{ns}", f"wan0@{ns}"])
    outcomes = []
    for i in range(20):
        packet = eth(IP(src=LAN_HOST, dst=REMOTE) / UDP(sport=7000 + i, dport=53))
        outcomes.append(dep.run(packet, ingress_ifindex=index["lan0"], netns=ns).action)
    assert outcomes[:16] == ["XDP_PASS"] * 16
    assert outcomes[16:] == ["XDP_DROP"] * 4
    stats = dep.stats()["nat"]
    assert stats["drop_nat_table_full"] == 4 and stats["translations"] == 16


def test_icmp_error_from_a_forwarded_server_leaves_with_the_nat_address(nat):
    from scapy.layers.inet import IPerror, UDPerror
    _, run = nat
    into = run(eth(IP(src=REMOTE, dst=NAT) / UDP(sport=9999, dport=5353) / b"q"), "wan")
    delivered = IP(bytes(into.packet[IP]))                    # as the inside server got it
    assert delivered.dst == LAN_SERVER and delivered[UDP].dport == 53
    error = eth(IP(src=LAN_SERVER, dst=REMOTE) / ICMP(type=3, code=3) / IPerror(bytes(delivered)))
    out = run(error, "lan")
    got = out.packet
    assert got[IP].src == NAT and got[IPerror].dst == NAT and got[UDPerror].dport == 5353
    assert checksums_valid(out.data)
    inner = IP(bytes(got[IPerror]))
    recomputed = inner.copy()
    del recomputed.chksum
    del recomputed[UDP].chksum
    assert bytes(IP(bytes(recomputed))) == bytes(inner)


def test_later_fragments_never_leave_with_the_inside_address(nat):
    dep, run = nat
    before = dep.stats()
    fragment = eth(IP(src=LAN_HOST, dst=REMOTE, proto=17, frag=185) / (b"\x00" * 40))
    assert run(fragment, "lan").action == "XDP_DROP"
    assert delta(before, dep.stats())["nat"]["drop_nat_fragment"] == 1


def test_a_port_forward_opens_only_on_a_syn(nat):
    _, run = nat
    stray = eth(IP(src=REMOTE, dst=NAT) / TCP(sport=6666, dport=8080, flags="A"))
    result = run(stray, "wan")
    assert result.action == "XDP_PASS" and result.data == bytes(stray)   # untouched, no state made


SWEPT = """
name: natswept
functions:
  nat:
    type: nat
    outside: wan0
    max_flows: 16
    timeouts: {udp: 1}
    snat: [{src: 198.18.1.0/24, ports: "20000-20099"}]
"""


def test_expired_flows_are_swept_so_a_full_table_takes_new_ones_again(deployed, gateways):
    import time
    ns, index = gateways["swept"]
    dep = deployed(SWEPT, "tailcall", tag="natswept", attach=[f"lan0@{ns}", f"wan0@{ns}"])

    def flow(i):
        packet = eth(IP(src=LAN_HOST, dst=REMOTE) / UDP(sport=8000 + i, dport=53))
        return dep.run(packet, ingress_ifindex=index["lan0"], netns=ns).action

    assert [flow(i) for i in range(16)] == ["XDP_PASS"] * 16
    assert flow(16) == "XDP_DROP"                        # full of live flows
    time.sleep(1.2)                                      # all of them idle past the UDP timeout
    assert [flow(100 + i) for i in range(16)] == ["XDP_PASS"] * 16   # none of them ever came back
