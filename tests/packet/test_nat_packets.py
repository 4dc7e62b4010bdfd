"""NAT through BPF_PROG_TEST_RUN in a gateway namespace (lan0 inside, wan0
outside): each translation, its reply, and checksums a receiver accepts; how a
flow is confirmed, and that a flood of spoofed SYNs to a port forward moves no
confirmed flow and keeps no new one out; that nothing leaves with an inside
address it did not translate — in both chain modes."""
from __future__ import annotations

import contextlib
import os

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Ether

from tests.chain_fixtures import MODES, delta
from tests.frames import checksums_valid, eth, internet_checksum, pseudo_header, spoofed_syns
from tests.scratch_netns import scratch_netns
from vnfchain.testrun import call_in_netns, run_xdp

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
        for i, name in enumerate(MODES + tuple(f"flood-{m}" for m in MODES) + ("small", "swept", "ports", "pass")
                                 + tuple(f"blind-{m}" for m in MODES)):
            ns, index, _ip = stack.enter_context(scratch_netns(
                f"{NS}g{i}", {"lan0": ["198.18.1.1/24", "198.18.2.1/24"], "wan0": ["198.18.100.1/24"]},
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




def runner(dep, gateway):
    """run(packet, side) through dep on its gateway's lan0 or wan0."""
    ns, index = gateway

    def run(packet, side):
        return dep.run(packet, ingress_ifindex=index[f"{side}0"], netns=ns)
    return run


def on_gateway(deployed, gateways, text, name, mode="tailcall"):
    """(deployment, run) of a chain of its own, attached to gateway ``name``."""
    gateway = gateways[name]
    dep = deployed(text, mode, tag=f"nat{name}"[:10], attach=[f"lan0@{gateway[0]}", f"wan0@{gateway[0]}"])
    return dep, runner(dep, gateway)


def confirmed_udp(run, sport):
    """A UDP flow from LAN_HOST, answered and then confirmed by its next datagram:
    the first and the last translated datagram."""
    out = run(eth(IP(src=LAN_HOST, dst=REMOTE) / UDP(sport=sport, dport=53)), "lan")
    run(eth(IP(src=REMOTE, dst=NAT) / UDP(sport=53, dport=out.packet[UDP].sport)), "wan")
    return out, run(eth(IP(src=LAN_HOST, dst=REMOTE) / UDP(sport=sport, dport=53)), "lan")


def snat_handshake(run, src, sport, dst=REMOTE, dport=80, isn=1000):
    """A TCP handshake from the inside through the NAT: (translated port, the
    three results)."""
    syn = run(eth(IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags="S", seq=1)), "lan")
    port = syn.packet[TCP].sport
    synack = run(eth(IP(src=dst, dst=NAT) / TCP(sport=dport, dport=port, flags="SA", seq=isn, ack=2)), "wan")
    ack = run(eth(IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags="A", seq=2, ack=isn + 1)), "lan")
    return port, (syn, synack, ack)


def forward_handshake(run, remote, rport, isn=5000):
    """A TCP handshake from the outside through the 8080 port forward."""
    syn = run(eth(IP(src=remote, dst=NAT) / TCP(sport=rport, dport=8080, flags="S", seq=1)), "wan")
    synack = run(eth(IP(src=LAN_SERVER, dst=remote) / TCP(sport=8080, dport=rport, flags="SA", seq=isn, ack=2)),
                 "lan")
    ack = run(eth(IP(src=remote, dst=NAT) / TCP(sport=rport, dport=8080, flags="A", seq=2, ack=isn + 1)), "wan")
    return syn, synack, ack


def state_of(dep, inside, remote):
    """The state `vnfchain status` shows for the flow, or None."""
    rows = [r for r in dep.state()["nat"][1] if r[1] == inside and r[3] == remote]
    return rows[0][4] if rows else None


def test_a_flow_is_confirmed_when_its_opener_acknowledges_the_reply(nat):
    dep, run = nat
    before = dep.stats()
    inside, remote = f"{LAN_HOST}:41000", f"{REMOTE}:80"
    syn = run(eth(IP(src=LAN_HOST, dst=REMOTE) / TCP(sport=41000, dport=80, flags="S", seq=1)), "lan")
    port = syn.packet[TCP].sport
    assert state_of(dep, inside, remote) == "unconfirmed"
    run(eth(IP(src=REMOTE, dst=NAT) / TCP(sport=80, dport=port, flags="SA", seq=7000, ack=2)), "wan")
    assert state_of(dep, inside, remote) == "replied"
    # an ACK that does not acknowledge the SYN-ACK (a blind guess) confirms nothing
    run(eth(IP(src=LAN_HOST, dst=REMOTE) / TCP(sport=41000, dport=80, flags="A", seq=2, ack=123456)), "lan")
    assert state_of(dep, inside, remote) == "replied"
    ack = run(eth(IP(src=LAN_HOST, dst=REMOTE) / TCP(sport=41000, dport=80, flags="A", seq=2, ack=7001)), "lan")
    assert ack.packet[TCP].sport == port and checksums_valid(ack.data)
    assert state_of(dep, inside, remote) == "established"
    back = run(eth(IP(src=REMOTE, dst=NAT) / TCP(sport=80, dport=port, flags="A", seq=7001, ack=2)), "wan")
    assert (back.packet[IP].dst, back.packet[TCP].dport) == (LAN_HOST, 41000)     # the same mapping, now main

    # UDP: the opener's next datagram after a reply
    out = run(eth(IP(src=LAN_HOST, dst=REMOTE) / UDP(sport=41001, dport=53)), "lan")
    run(eth(IP(src=REMOTE, dst=NAT) / UDP(sport=53, dport=out.packet[UDP].sport)), "wan")
    assert state_of(dep, f"{LAN_HOST}:41001", f"{REMOTE}:53") == "replied"
    again = run(eth(IP(src=LAN_HOST, dst=REMOTE) / UDP(sport=41001, dport=53)), "lan")
    assert again.packet[UDP].sport == out.packet[UDP].sport
    assert state_of(dep, f"{LAN_HOST}:41001", f"{REMOTE}:53") == "established"

    # through the port forward: the remote's ACK of the inside server's SYN-ACK
    forward_handshake(run, "198.18.100.7", 41002)
    assert state_of(dep, f"{LAN_SERVER}:8080", "198.18.100.7:41002") == "established"
    counted = delta(before, dep.stats())["nat"]
    assert counted["confirmed_flows"] == 3
    assert counted["new_snat_flows"] == 2 and counted["new_port_forward_flows"] == 1


FLOOD = """
name: natflood
functions:
  nat:
    type: nat
    outside: wan0
    max_flows: 64
    max_unconfirmed: 16
    snat: [{src: 198.18.1.0/24, ports: "20000-20099"}]
    dnat: [{proto: tcp, port: 8080, to: 198.18.1.12}]
"""


def flood(dep, gateway, frames):
    """Run the frames in through wan0, all in one thread in the gateway's netns."""
    ns, index = gateway
    fd = dep.entry_fd()
    try:
        return call_in_netns(ns, lambda: [run_xdp(fd, f, ingress_ifindex=index["wan0"]).action for f in frames])
    finally:
        os.close(fd)


@pytest.mark.parametrize("mode", MODES)
def test_a_syn_flood_to_a_port_forward_moves_no_flow_and_keeps_no_new_one_out(deployed, gateways, mode):
    gateway = gateways[f"flood-{mode}"]
    dep, run = on_gateway(deployed, gateways, FLOOD, f"flood-{mode}", mode)
    # confirmed flows, both ways: the table (64) is nearly full of them
    snat = {sport: snat_handshake(run, LAN_HOST, sport)[0] for sport in range(42000, 42040)}
    for rport in range(43000, 43010):
        forward_handshake(run, "198.18.100.9", rport)
    # a new flow from the inside that is half-way through its handshake when the flood comes
    syn = run(eth(IP(src=LAN_HOST, dst=REMOTE) / TCP(sport=44000, dport=80, flags="S", seq=1)), "lan")
    half_open = syn.packet[TCP].sport
    before = dep.stats()

    n = 2000                                      # >> max_unconfirmed and max_flows, each SYN sent twice
    frames = [f for f in spoofed_syns(n, NAT, 8080) for _ in range(2)]
    assert flood(dep, gateway, frames) == ["XDP_PASS"] * 2 * n   # each translated in
    counted = delta(before, dep.stats())["nat"]
    assert counted["new_port_forward_flows"] == n
    assert counted["evicted_unconfirmed"] == n - 16   # the port-forward table churned, nothing else
    assert "confirmed_flows" not in counted and "table_full" not in counted

    for sport, port in snat.items():              # every confirmed flow keeps its mapping
        out = run(eth(IP(src=LAN_HOST, dst=REMOTE) / TCP(sport=sport, dport=80, flags="A")), "lan")
        assert out.packet[TCP].sport == port
        back = run(eth(IP(src=REMOTE, dst=NAT) / TCP(sport=80, dport=port, flags="A")), "wan")
        assert (back.packet[IP].dst, back.packet[TCP].dport) == (LAN_HOST, sport)
    for rport in range(43000, 43010):
        into = run(eth(IP(src="198.18.100.9", dst=NAT) / TCP(sport=rport, dport=8080, flags="A")), "wan")
        assert (into.packet[IP].dst, into.packet[TCP].dport) == (LAN_SERVER, 8080)
        reply = run(eth(IP(src=LAN_SERVER, dst="198.18.100.9") / TCP(sport=8080, dport=rport, flags="A")), "lan")
        assert (reply.packet[IP].src, reply.packet[TCP].sport) == (NAT, 8080)

    # the half-open inside flow finishes its handshake on the port it had
    synack = run(eth(IP(src=REMOTE, dst=NAT) / TCP(sport=80, dport=half_open, flags="SA", seq=9, ack=2)), "wan")
    assert (synack.packet[IP].dst, synack.packet[TCP].dport) == (LAN_HOST, 44000)
    run(eth(IP(src=LAN_HOST, dst=REMOTE) / TCP(sport=44000, dport=80, flags="A", seq=2, ack=10)), "lan")
    # and new flows, inside out and through the port forward, get mappings and are confirmed
    port, (syn, _, _) = snat_handshake(run, LAN_HOST, 44001)
    assert syn.action == "XDP_PASS" and port in RANGE and checksums_valid(syn.data)
    syn, _, _ = forward_handshake(run, "198.18.100.10", 44002)
    assert syn.packet[IP].dst == LAN_SERVER and checksums_valid(syn.data)
    after = delta(before, dep.stats())["nat"]
    assert after["confirmed_flows"] == 3
    assert "drop" not in delta(before, dep.stats())["nat"]


SMALL = """
name: natsmall
functions:
  nat:
    type: nat
    outside: wan0
    max_flows: 16
    snat: [{src: 198.18.1.0/24, ports: "20000-20099"}]
"""


def test_a_full_table_keeps_new_flows_unconfirmed_rather_than_dropping_them(deployed, gateways):
    dep, run = on_gateway(deployed, gateways, SMALL, "small")
    for i in range(16):
        confirmed_udp(run, 7000 + i)
    stats = dep.stats()["nat"]
    assert stats["confirmed_flows"] == 16 and stats["table_full"] == 0
    out, again = confirmed_udp(run, 7100)             # the 17th: no room in the table
    assert out.action == again.action == "XDP_PASS" and again.packet[UDP].sport == out.packet[UDP].sport
    back = run(eth(IP(src=REMOTE, dst=NAT) / UDP(sport=53, dport=out.packet[UDP].sport)), "wan")
    assert (back.packet[IP].dst, back.packet[UDP].dport) == (LAN_HOST, 7100)    # it works, unconfirmed
    stats = dep.stats()["nat"]
    assert stats["table_full"] >= 1 and stats["confirmed_flows"] == 16 and stats["drop"] == 0
    assert state_of(dep, f"{LAN_HOST}:7100", f"{REMOTE}:53") == "replied"
    assert stats["translations"] == 17 and stats["unconfirmed"] == 1


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
    dep, run = on_gateway(deployed, gateways, SWEPT, "swept")
    for i in range(17):
        confirmed_udp(run, 8000 + i)
    assert dep.stats()["nat"]["table_full"] >= 1      # full of live flows
    time.sleep(1.2)                                   # all of them idle past the UDP timeout
    before = dep.stats()
    for i in range(16):
        confirmed_udp(run, 8100 + i)                  # none of the old ones ever came back
    counted = delta(before, dep.stats())["nat"]
    assert counted["confirmed_flows"] == 16 and "table_full" not in counted


PORTS = """
name: natports
functions:
  nat:
    type: nat
    outside: wan0
    max_unconfirmed: 16
    timeouts: {unconfirmed: 1}
    snat: [{src: 198.18.2.0/24, ports: "30000-30003"}]
"""


def test_an_evicted_or_expired_unconfirmed_flow_gives_its_port_back(deployed, gateways):
    import time
    dep, run = on_gateway(deployed, gateways, PORTS, "ports")

    def syn(host, dst=REMOTE):
        return run(eth(IP(src=f"198.18.2.{host}", dst=dst) / TCP(sport=1000, dport=80, flags="S")), "lan")

    assert sorted(syn(h).packet[TCP].sport for h in range(10, 14)) == [30000, 30001, 30002, 30003]
    assert syn(14).action == "XDP_DROP"              # all four ports held by unconfirmed flows
    before = dep.stats()
    for h in range(16):                               # 16 newer flows (other remotes) evict those four
        assert syn(20 + h, dst=f"198.18.100.{20 + h}").action == "XDP_PASS"
    assert delta(before, dep.stats())["nat"]["evicted_unconfirmed"] == 4
    assert syn(14).packet[TCP].sport in range(30000, 30004)      # a port is free again
    assert syn(15).action == "XDP_PASS"
    time.sleep(1.2)                                   # every unconfirmed flow idles out
    assert sorted(syn(h, dst="198.18.100.99").packet[TCP].sport for h in range(30, 34)) == \
        [30000, 30001, 30002, 30003]


BLIND = """
name: natblind
functions:
  nat:
    type: nat
    outside: wan0
    timeouts: {tcp_transitory: 1}
    snat: [{src: 198.18.1.0/24, ports: "20000-20099"}]
"""


@pytest.mark.parametrize("mode", MODES)
def test_a_blind_rst_or_fin_from_outside_does_not_cut_an_idle_connection_short(deployed, gateways, mode):
    import time
    dep, run = on_gateway(deployed, gateways, BLIND, f"blind-{mode}", mode)
    inside, remote = f"{LAN_HOST}:45000", f"{REMOTE}:80"
    port, _ = snat_handshake(run, LAN_HOST, 45000, isn=1000)     # the inside end now expects 1001
    assert state_of(dep, inside, remote) == "established"
    # a spoofer who guessed the NAT port but not the sequence number: the
    # endpoint ignores these, and so must the mapping (or it idles out in
    # tcp_transitory instead of tcp_established)
    for flags, seq in (("R", 5_000_000), ("RA", 77), ("FA", 5_000_000)):
        out = run(eth(IP(src=REMOTE, dst=NAT) / TCP(sport=80, dport=port, flags=flags, seq=seq, ack=2)), "wan")
        assert (out.packet[IP].dst, out.packet[TCP].dport) == (LAN_HOST, 45000)   # the endpoint decides
        assert state_of(dep, inside, remote) == "established"
    time.sleep(1.3)                                               # idle past tcp_transitory
    back = run(eth(IP(src=REMOTE, dst=NAT) / TCP(sport=80, dport=port, flags="A", seq=1001, ack=2)), "wan")
    assert (back.packet[IP].dst, back.packet[TCP].dport) == (LAN_HOST, 45000)
    # the remote's real RST, at the sequence number the inside end acknowledged
    run(eth(IP(src=LAN_HOST, dst=REMOTE) / TCP(sport=45000, dport=80, flags="A", seq=2, ack=1500)), "lan")
    run(eth(IP(src=REMOTE, dst=NAT) / TCP(sport=80, dport=port, flags="R", seq=1500)), "wan")
    assert state_of(dep, inside, remote) == "closing"
    # an abortive close right behind data the inside end has not acknowledged yet
    port3, _ = snat_handshake(run, LAN_HOST, 45002, isn=3000)
    third = (f"{LAN_HOST}:45002", remote)
    # a spoofed segment far off does not move where the remote's data ends
    run(eth(IP(src=REMOTE, dst=NAT) / TCP(sport=80, dport=port3, flags="PA", seq=9_000_000, ack=2) / b"x"), "wan")
    run(eth(IP(src=REMOTE, dst=NAT) / TCP(sport=80, dport=port3, flags="R", seq=9_000_001)), "wan")
    assert state_of(dep, *third) == "established"
    run(eth(IP(src=REMOTE, dst=NAT) / TCP(sport=80, dport=port3, flags="PA", seq=3001, ack=2) / (b"x" * 100)), "wan")
    run(eth(IP(src=REMOTE, dst=NAT) / TCP(sport=80, dport=port3, flags="R", seq=3100)), "wan")
    assert state_of(dep, *third) == "established"                  # one short of the end: a guess
    run(eth(IP(src=REMOTE, dst=NAT) / TCP(sport=80, dport=port3, flags="R", seq=3101)), "wan")
    assert state_of(dep, *third) == "closing"
    # and the inside end's own FIN closes its flow, whatever its numbers
    port2, _ = snat_handshake(run, LAN_HOST, 45001)
    run(eth(IP(src=LAN_HOST, dst=REMOTE) / TCP(sport=45001, dport=80, flags="FA", seq=9, ack=3)), "lan")
    assert state_of(dep, f"{LAN_HOST}:45001", remote) == "closing"
    time.sleep(1.3)
    gone = run(eth(IP(src=REMOTE, dst=NAT) / TCP(sport=80, dport=port, flags="A", seq=1500, ack=2)), "wan")
    assert gone.packet[IP].dst == NAT                             # closed and idle: reclaimed


@pytest.fixture(scope="module")
def policy_routed():
    """Per chain mode, a gateway whose main table sends 198.18.200.0/24 back inside
    (lan0), and whose policy sends TCP to port 443 there out of wan0 (`ip rule ... dport 443`)."""
    with contextlib.ExitStack() as stack:
        made = {}
        for mode in MODES:
            ns, index, ip = stack.enter_context(scratch_netns(
                f"{NS}p{mode[0]}", {"lan0": ["198.18.1.1/24"], "wan0": ["198.18.100.1/24"]}, forwarding=True))
            ip("route", "add", "198.18.200.0/24", "via", "198.18.1.254", "dev", "lan0")
            ip("route", "add", "198.18.200.0/24", "via", "198.18.100.254", "dev", "wan0", "table", "100")
            ip("rule", "add", "ipproto", "tcp", "dport", "443", "lookup", "100", "pref", "100")
            made[mode] = (ns, index)
        yield made


@pytest.mark.parametrize("mode", MODES)
def test_what_policy_routing_sends_out_by_its_port_is_translated(deployed, policy_routed, mode):
    """The NAT asks the FIB whether a packet leaves by the outside as the kernel
    will route it: with its ports (and TOS), or TCP to port 443 here would leave
    by wan0 with its inside address."""
    ns, _ = gateway = policy_routed[mode]
    dep = deployed(CHAIN, mode, attach=[f"lan0@{ns}", f"wan0@{ns}"])
    run = runner(dep, gateway)
    out = run(eth(IP(src=LAN_HOST, dst="198.18.200.2") / TCP(sport=46000, dport=443, flags="S")), "lan")
    assert out.packet[IP].src == NAT and out.packet[TCP].sport in RANGE and checksums_valid(out.data)
    inside = eth(IP(src=LAN_HOST, dst="198.18.200.2") / TCP(sport=46001, dport=80, flags="S"))
    stays = run(inside, "lan")                                   # the main table: back inside
    assert stays.action == "XDP_PASS" and stays.data == bytes(inside)


@pytest.mark.parametrize("proto, payload", [
    (47, bytes.fromhex("00000800") + b"\x45" + bytes(19)),           # GRE carrying IPv4
    (50, bytes.fromhex("0000100000000001") + bytes(16)),              # ESP: SPI, sequence, data
    (51, bytes.fromhex("3b04000000001000000000010000000000000000")),   # AH
    (132, bytes.fromhex("0fa00050000000000000000001000010") + bytes(16)),  # SCTP INIT to port 80
], ids=["gre", "esp", "ah", "sctp"])
def test_a_protocol_the_nat_cannot_translate_never_leaves_with_the_inside_address(nat, proto, payload):
    dep, run = nat
    before = dep.stats()
    frame = eth(IP(src=LAN_HOST, dst=REMOTE, proto=proto) / payload)
    assert run(frame, "lan").action == "XDP_DROP"
    assert delta(before, dep.stats())["nat"]["drop_nat_untranslatable"] == 1
    # from outside the snat networks, or arriving from the outside: not the NAT's business
    for packet, side in [(eth(IP(src="198.18.3.5", dst=REMOTE, proto=proto) / payload), "lan"),
                         (eth(IP(src=REMOTE, dst=NAT, proto=proto) / payload), "wan"),
                         (eth(IP(src=LAN_HOST, dst="198.18.2.9", proto=proto) / payload), "lan")]:  # stays inside
        result = run(packet, side)
        assert result.action == "XDP_PASS" and result.data == bytes(packet)


def test_icmp_the_nat_cannot_translate_never_leaves_with_the_inside_address(nat):
    from scapy.layers.inet import IPerror, TCPerror
    dep, run = nat
    before = dep.stats()
    for icmp in [ICMP(type=13),                                     # timestamp request
                 ICMP(type=0, id=4242),                             # an echo reply to nothing we sent
                 ICMP(type=5, gw="198.18.1.1") / IPerror(src=REMOTE, dst=LAN_HOST) / TCPerror(),   # redirect
                 ICMP(type=3, code=3) / IPerror(src=REMOTE, dst=LAN_HOST) / TCPerror(sport=1, dport=2)]:
        assert run(eth(IP(src=LAN_HOST, dst=REMOTE) / icmp), "lan").action == "XDP_DROP", icmp.summary()
    assert delta(before, dep.stats())["nat"]["drop_nat_untranslatable"] == 4


PASS = """
name: natpass
functions:
  nat:
    type: nat
    outside: wan0
    untranslatable: pass
    snat: [{src: 198.18.1.0/24}]
"""


def test_untranslatable_pass_lets_it_leave_as_it_is(deployed, gateways):
    dep, run = on_gateway(deployed, gateways, PASS, "pass")
    frame = eth(IP(src=LAN_HOST, dst=REMOTE, proto=47) / bytes.fromhex("00000800"))
    result = run(frame, "lan")
    assert result.action == "XDP_PASS" and result.data == bytes(frame)
    assert dep.stats()["nat"]["drop"] == 0


def quoted_tcp_checksum_verifies(quoted: bytes) -> bool:
    """Does the TCP checksum of a packet an ICMP error quotes whole verify
    against the quoted pseudo-header?"""
    segment = quoted[(quoted[0] & 0x0F) * 4:]
    return internet_checksum(pseudo_header(quoted[12:16], quoted[16:20], 6, len(segment)) + segment) == 0


@pytest.mark.parametrize("quoted", ["8 bytes", "header", "whole"])
def test_an_icmp_error_quoting_tcp_keeps_every_checksum_valid_both_ways(nat, quoted):
    """The quoted TCP checksum lies at bytes 16-17 of the quoted TCP header: an
    error quoting at least 18 bytes of it gets it updated with the quoted
    addresses and ports; one quoting 8 bytes carries none."""
    from scapy.packet import Raw
    _, run = nat
    payload = b"payload!"
    take = {"8 bytes": 20 + 8, "header": 20 + 20, "whole": 20 + 20 + len(payload)}[quoted]

    def error_about(packet: bytes, outer) -> bytes:
        return bytes(eth(outer / ICMP(type=3, code=13) / Raw(packet[:take])))

    def check(frame: bytes, inner_src: str, inner_dst: str, sport: int, dport: int, tcp_sum: bytes):
        icmp = frame[14 + 20:]
        inner = icmp[8:]
        assert internet_checksum(icmp) == 0 and internet_checksum(frame[14:34]) == 0    # ICMP, outer IP
        assert internet_checksum(inner[:20]) == 0                                       # quoted IP
        assert (str(IP(inner[:20]).src), str(IP(inner[:20]).dst)) == (inner_src, inner_dst)
        assert (int.from_bytes(inner[20:22], "big"), int.from_bytes(inner[22:24], "big")) == (sport, dport)
        if quoted != "8 bytes":
            assert inner[20 + 16:20 + 18] == tcp_sum
        if quoted == "whole":
            assert quoted_tcp_checksum_verifies(inner)

    # out: the inside host's segment as it sent it, and as the NAT sent it on
    sent = bytes(IP(src=LAN_HOST, dst=REMOTE) / TCP(sport=45000, dport=80, flags="S") / payload)
    on_the_wire = bytes(run(eth(IP(sent)), "lan").packet[IP])
    back = run(error_about(on_the_wire, IP(src="198.18.100.254", dst=NAT)), "wan").data
    assert str(IP(back[14:]).dst) == LAN_HOST
    check(back, LAN_HOST, REMOTE, 45000, 80, sent[20 + 16:20 + 18])

    # in through the port forward, and an error about it from the inside server
    sent = bytes(IP(src=REMOTE, dst=NAT) / TCP(sport=45001, dport=8080, flags="S") / payload)
    delivered = bytes(run(eth(IP(sent)), "wan").packet[IP])
    got = run(error_about(delivered, IP(src=LAN_SERVER, dst=REMOTE)), "lan").data
    assert str(IP(got[14:]).src) == NAT
    check(got, REMOTE, NAT, 45001, 8080, sent[20 + 16:20 + 18])
