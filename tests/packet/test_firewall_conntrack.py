"""Firewall conntrack against blind and forged packets, through BPF_PROG_TEST_RUN
in both chain modes: TCP windows (RST, FIN and data outside them are invalid
and change nothing; a RST at the exact next sequence number closes), the TCP
flag table, ICMP that is not a tracked echo, and ICMP/ICMPv6 errors, related
only on their way back to the sender of the packet they quote.

The ruleset lets the client network open flows and lets everything else in only
as `established` or `related`, so a packet from the server side that passes
was judged part of a live flow (rule 0); the `ct_*` counters say why conntrack
refused the others."""
from __future__ import annotations

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, TCPerror, UDPerror
from scapy.layers.inet6 import IPv6ExtHdrDestOpt, ICMPv6DestUnreach, ICMPv6EchoReply, ICMPv6EchoRequest, ICMPv6PacketTooBig, IPv6, \
    IPerror6

from vnfchain import bpfsys
from vnfchain.firewall import conntrack
from vnfchain.firewall.rules import TCP_FLAGS
from tests.chain_fixtures import MODES
from tests.conntrack_peers import C, C6, S, S6, Tcp, data_flows, open_flow, ports, verdict
from tests.frames import eth

pytestmark = pytest.mark.root

ROUTER, ROUTER6 = "198.18.2.1", "2002:c612:201::1"

CHAIN = """
name: ct
functions:
  fw:
    type: firewall
    conntrack: true
    default: drop
    rules:
      - {action: allow, ct: [established, related]}
      - {action: allow, src: 198.18.1.0/24, ct: new}
      - {action: allow, src: "2002:c612:100::/40", ct: new}
"""

@pytest.fixture(params=MODES)
def fw(request, deployed):
    return deployed(CHAIN, request.param)


# -- the window ---------------------------------------------------------------------

# (description, forged segment from the server: seq and ack relative to the server's
#  next sequence number and the client's, payload, whether the firewall lets it in)
# Window: the client advertised 1000 << 7 = 128,000 bytes.
WINDOW = [
    ("next sequence number", 0, 0, 100, True),
    ("100,000 bytes ahead: inside the scaled window (a segment lost upstream)", 100_000, 0, 100, True),
    ("just past the window's right edge", 128_001, 0, 100, False),
    ("a retransmission of the last window", -100_000, 0, 100, True),
    ("older than one window", -200_000, 0, 100, False),
    ("acks data the client never sent", 0, 1, 100, False),
    ("acks far behind (not a late ack)", 0, -70_000, 100, False),
    ("half the sequence space away", 2**31, 0, 100, False),
]


@pytest.mark.parametrize("desc,dseq,dack,size,allowed", WINDOW, ids=[w[0] for w in WINDOW])
def test_window(fw, desc, dseq, dack, size, allowed):
    conn = open_flow(fw)
    action, changed = verdict(fw, conn.forge(1, "PA", seq=conn.nxt[1] + dseq, ack=conn.nxt[0] + dack,
                                             payload=b"y" * size))
    assert action == ("XDP_PASS" if allowed else "XDP_DROP")
    assert changed.get("ct_out_of_window", 0) == (not allowed)
    assert changed.get("rule0_hits", 0) == allowed
    assert data_flows(fw, conn)


@pytest.mark.parametrize("wscale,allowed", [((7, 7), True), ((7, None), False), ((None, 7), False)],
                         ids=["both SYNs scale", "only the SYN scales", "only the SYN-ACK scales"])
def test_window_scale_needs_both_syns(fw, wscale, allowed):
    """RFC 7323: windows scale only when both SYNs carry the option; 100,000
    bytes ahead is inside 1000 << 7 but far outside an unscaled 1000."""
    conn = open_flow(fw, wscale=wscale)
    action, _ = verdict(fw, conn.forge(1, "PA", seq=conn.nxt[1] + 100_000, payload=b"y" * 100))
    assert action == ("XDP_PASS" if allowed else "XDP_DROP")


def test_window_scale_option_anywhere_in_the_options(fw):
    """The option walk follows the option lengths, not a fixed layout: a SYN
    with the window scale last behind NOPs and a long unknown option."""
    conn = Tcp()
    conn.syn_options[0] = [("NOP", None)] * 3 + [(253, b"\x00" * 20), ("MSS", 1460), ("WScale", 7)]
    conn.open(fw)
    assert verdict(fw, conn.forge(1, "PA", seq=conn.nxt[1] + 100_000, payload=b"y"))[0] == "XDP_PASS"


# -- RST and FIN --------------------------------------------------------------------

@pytest.mark.parametrize("side", [1, 0], ids=["towards the client", "towards the server"])
def test_blind_rsts_leave_the_flow_alone(fw, side):
    conn = open_flow(fw)
    wrong = [conn.nxt[side] + d for d in (2**31, -2**30, 1_000_000, -300_000)]
    for seq in wrong:
        action, changed = verdict(fw, conn.forge(side, "R", seq=seq))
        assert (action, changed.get("ct_out_of_window")) == ("XDP_DROP", 1), seq
        assert "ct_rst_closed" not in changed
    assert data_flows(fw, conn)


OPEN_CHAIN = """
name: ctopen
functions:
  fw: {type: firewall, conntrack: true, default: allow}
"""


@pytest.mark.parametrize("mode", MODES)
def test_an_invalid_rst_a_rule_lets_through_still_changes_nothing(deployed, mode):
    """default: allow passes the blind RST, but conntrack still ignores it:
    only the RST at the next sequence number afterwards closes the flow."""
    dep = deployed(OPEN_CHAIN, mode)
    conn = open_flow(dep)
    action, changed = verdict(dep, conn.forge(1, "R", seq=conn.nxt[1] + 2**31))
    assert action == "XDP_PASS" and changed["ct_out_of_window"] == 1 and "ct_rst_closed" not in changed
    assert verdict(dep, conn.forge(1, "R"))[1]["ct_rst_closed"] == 1


def test_rst_in_window_but_not_exact_is_passed_and_the_flow_kept(fw):
    """RFC 5961: the endpoint answers such a RST with a challenge ACK; the
    firewall lets it through and keeps the flow for that exchange."""
    conn = open_flow(fw)
    action, changed = verdict(fw, conn.forge(1, "R", seq=conn.nxt[1] + 5000))
    assert action == "XDP_PASS" and changed["ct_rst_in_window"] == 1 and "ct_rst_closed" not in changed
    assert data_flows(fw, conn)


@pytest.mark.parametrize("side,flags", [(1, "R"), (0, "RA")], ids=["server RST", "client RST+ACK"])
def test_rst_at_the_next_sequence_number_closes(fw, side, flags):
    conn = open_flow(fw)
    action, changed = verdict(fw, conn.forge(side, flags))
    assert action == "XDP_PASS" and changed["ct_rst_closed"] == 1
    action, changed = verdict(fw, conn.forge(1, "PA", payload=b"late"))
    assert action == "XDP_DROP" and changed["ct_bad_state"] == 1     # no flow any more


def test_rst_at_the_receivers_ack_closes_while_data_is_in_flight(fw):
    """The server sent 3,000 bytes the client has not acked: the client's
    next expected number is the ack it sent last, which a RST may carry."""
    conn = open_flow(fw)
    acked = conn.nxt[1]
    for _ in range(3):
        assert fw.run(conn.send(1, "PA", payload=b"z" * 1000)).action == "XDP_PASS"
    action, changed = verdict(fw, conn.forge(1, "R", seq=acked))
    assert action == "XDP_PASS" and changed["ct_rst_closed"] == 1


def test_blind_fins_neither_pass_nor_close(fw):
    """A FIN outside the window (or with an ack out of range) is invalid; had
    the forged FINs counted, the flow would be closed both ways and a new SYN on
    the same ports would be let in as a reuse."""
    conn = open_flow(fw)
    forged = [conn.forge(1, "FA", seq=conn.nxt[1] + 2**31), conn.forge(0, "FA", seq=conn.nxt[0] - 2**30),
              conn.forge(1, "FA", ack=conn.nxt[0] + 2**30), conn.forge(0, "FA", ack=conn.nxt[1] - 2**31)]
    for frame in forged:
        action, changed = verdict(fw, frame)
        assert (action, changed.get("ct_out_of_window")) == ("XDP_DROP", 1)
    reuse = Tcp(isn=(9_000_000, 0))
    reuse.port = conn.port
    action, changed = verdict(fw, reuse.send(0, "S"))
    assert action == "XDP_DROP" and changed["ct_bad_state"] == 1   # a SYN on an open flow
    assert data_flows(fw, conn)


def test_fins_both_ways_close_and_the_ports_may_be_reused(fw):
    conn = open_flow(fw)
    for side, flags in ((0, "FA"), (1, "FA"), (0, "A")):
        assert fw.run(conn.send(side, flags)).action == "XDP_PASS", (side, flags)
    reuse = Tcp(isn=(9_000_000, 0))
    reuse.port = conn.port
    assert reuse.open(fw)


# -- states --------------------------------------------------------------------------

def test_syn_on_an_open_flow_is_refused_but_a_retransmitted_one_passes(fw):
    conn = Tcp()
    syn = conn.send(0, "S")
    for frame in (syn, conn.send(1, "SA")):
        assert fw.run(frame).action == "XDP_PASS"
    assert verdict(fw, syn)[0] == "XDP_PASS"                         # the SYN-ACK got lost downstream
    action, changed = verdict(fw, conn.forge(0, "S", seq=12345))     # not this connection's SYN
    assert action == "XDP_DROP" and changed["ct_bad_state"] == 1
    assert fw.run(conn.send(0, "A")).action == "XDP_PASS"
    assert data_flows(fw, conn)


def test_server_data_before_its_syn_ack_is_refused(fw):
    conn = Tcp()
    assert fw.run(conn.send(0, "S")).action == "XDP_PASS"
    action, changed = verdict(fw, conn.forge(1, "PA", seq=77, payload=b"early"))
    assert action == "XDP_DROP" and changed["ct_bad_state"] == 1


@pytest.mark.parametrize("ack_delta,allowed", [(0, True), (1, False), (-1, False)])
def test_refusal_must_ack_the_syn(fw, ack_delta, allowed):
    """A closed port answers a SYN with RST+ACK acking it exactly; that ends the flow."""
    conn = Tcp()
    assert fw.run(conn.send(0, "S")).action == "XDP_PASS"
    action, changed = verdict(fw, conn.forge(1, "RA", seq=0, ack=conn.nxt[0] + ack_delta))
    assert action == ("XDP_PASS" if allowed else "XDP_DROP")
    assert changed.get("ct_rst_closed", 0) == allowed
    synack = conn.forge(1, "SA")
    assert fw.run(synack).action == ("XDP_DROP" if allowed else "XDP_PASS")


def test_syn_ack_must_ack_the_syn(fw):
    conn = Tcp()
    assert fw.run(conn.send(0, "S")).action == "XDP_PASS"
    action, changed = verdict(fw, conn.forge(1, "SA", ack=conn.nxt[0] + 2**30))
    assert action == "XDP_DROP" and changed["ct_out_of_window"] == 1
    assert fw.run(conn.send(1, "SA")).action == "XDP_PASS"


# -- flags ---------------------------------------------------------------------------

def flag_text(flags: int) -> str:
    return "+".join(name.upper() for name, bit in TCP_FLAGS.items() if flags & bit) or "none"


def test_flag_table_every_combination(fw):
    """All 256 flag bytes, each on ports no flow uses: the ones nf_conntrack's
    tcp_valid_flags refuses are counted and dropped; of the others only a SYN
    without ACK may open a flow here."""
    wrong = []
    for flags in range(256):
        conn = Tcp()
        frame = conn.forge(0, "")
        frame[TCP].flags = flags
        action, changed = verdict(fw, frame)
        valid = conntrack.tcp_flags_valid(flags)
        opens = valid and flags & (TCP_FLAGS["syn"] | TCP_FLAGS["ack"]) == TCP_FLAGS["syn"]
        got = (action, changed.get("ct_bad_flags", 0))
        if got != ("XDP_PASS" if opens else "XDP_DROP", int(not valid)):
            wrong.append(f"{flag_text(flags)}: {got}")
    assert not wrong


INVALID_FLAGS = ["SF", "SR", "SRA", "SFA", "F", "", "FPU", "RF", "RFA", "U", "FSRPAUEC"]


@pytest.mark.parametrize("flags", INVALID_FLAGS, ids=[f or "none" for f in INVALID_FLAGS])
def test_invalid_flags_never_move_an_open_flow(fw, flags):
    """With the exact sequence and ack numbers a SYN+RST or RST+FIN would close
    the flow if the RST counted; they are invalid whatever the state."""
    conn = open_flow(fw)
    for side in (1, 0):
        action, changed = verdict(fw, conn.forge(side, flags))
        assert action == "XDP_DROP" and changed["ct_bad_flags"] == 1
        assert "ct_rst_closed" not in changed
    assert data_flows(fw, conn)


def test_invalid_flags_never_open_a_flow(fw):
    conn = Tcp()
    assert fw.run(conn.forge(0, "SF")).action == "XDP_DROP"
    conn.nxt[0] += 1
    assert fw.run(conn.forge(1, "SA")).action == "XDP_DROP"        # nothing to answer


# -- ICMP ----------------------------------------------------------------------------

def echo_flow(dep, ident) -> None:
    assert dep.run(eth(IP(src=C, dst=S) / ICMP(type=8, id=ident))).action == "XDP_PASS"
    assert dep.run(eth(IP(src=S, dst=C) / ICMP(type=0, id=ident))).action == "XDP_PASS"


ICMP_CASES = [
    ("a timestamp request between hosts with an echo flow of id 0", IP(src=S, dst=C) / ICMP(type=13, id=0), False),
    ("a timestamp reply", IP(src=S, dst=C) / ICMP(type=14, id=0), False),
    ("an echo request the reply way", IP(src=S, dst=C) / ICMP(type=8, id=0), False),
    ("an echo reply", IP(src=S, dst=C) / ICMP(type=0, id=0), True),
    ("an echo reply of another identifier", IP(src=S, dst=C) / ICMP(type=0, id=1), False),
    ("a redirect", IP(src=ROUTER, dst=C) / ICMP(type=5, code=1, gw=ROUTER) / IPerror(src=C, dst=S) / ICMP(type=8, id=0),
     False),
]


@pytest.mark.parametrize("desc,packet,allowed", ICMP_CASES, ids=[c[0] for c in ICMP_CASES])
def test_icmp_is_established_only_as_the_echo_of_a_flow(fw, desc, packet, allowed):
    echo_flow(fw, 0)
    assert fw.run(eth(packet)).action == ("XDP_PASS" if allowed else "XDP_DROP")


def unreachable(quoted, to=C):
    return eth(IP(src=ROUTER, dst=to) / ICMP(type=3, code=1) / IPerror(bytes(quoted)[:48]))


def test_icmp_errors_go_back_to_the_quoted_packets_sender(fw):
    sport = next(ports)
    sent = IP(src=C, dst=S) / UDP(sport=sport, dport=53)
    assert fw.run(eth(sent)).action == "XDP_PASS"
    answer = IP(src=S, dst=C) / UDP(sport=53, dport=sport)
    assert fw.run(eth(answer)).action == "XDP_PASS"
    assert fw.run(unreachable(sent)).action == "XDP_PASS"               # about the client's datagram, to it
    assert fw.run(unreachable(answer, to=S)).action == "XDP_PASS"       # about the server's, to the server
    assert fw.run(unreachable(sent, to=S)).action == "XDP_DROP"         # about the client's, to the server
    echo_flow(fw, 4242)
    assert fw.run(unreachable(IP(src=C, dst=S) / ICMP(type=8, id=4242))).action == "XDP_PASS"
    assert fw.run(unreachable(IP(src=C, dst=S) / ICMP(type=0, id=4242))).action == "XDP_DROP"   # no such echo


@pytest.mark.parametrize("dseq,allowed", [(-1000, True), (0, True), (1, False), (-200_000, False)],
                         ids=["sent data", "the next segment", "data never sent", "long acked"])
def test_icmp_error_must_quote_a_segment_its_sender_sent(fw, dseq, allowed):
    conn = open_flow(fw)
    assert fw.run(conn.send(0, "PA", payload=b"q" * 1000)).action == "XDP_PASS"
    quoted = IP(src=C, dst=S) / TCP(sport=conn.port[0], dport=80, seq=(conn.nxt[0] + dseq) % 2**32, flags="A")
    action, changed = verdict(fw, eth(IP(src=ROUTER, dst=C) / ICMP(type=3, code=4, nexthopmtu=1280) /
                                      IPerror(bytes(quoted)[:28])))
    assert action == ("XDP_PASS" if allowed else "XDP_DROP")
    assert changed.get("rule0_hits", 0) == allowed


def test_icmpv6_errors_quoting_a_tracked_flow_are_related(fw):
    sport = next(ports)
    sent = IPv6(src=C6, dst=S6) / UDP(sport=sport, dport=53)
    assert fw.run(eth(sent)).action == "XDP_PASS"
    errors = {
        "unreachable to the sender": (IPv6(src=ROUTER6, dst=C6) / ICMPv6DestUnreach(code=4) / IPerror6(bytes(sent)), True),
        "unreachable to the other end": (IPv6(src=ROUTER6, dst=S6) / ICMPv6DestUnreach(code=4) / IPerror6(bytes(sent)), False),
        "about an untracked datagram": (IPv6(src=ROUTER6, dst=C6) / ICMPv6DestUnreach(code=4) /
                                        IPerror6(src=C6, dst=S6) / UDPerror(sport=sport + 1, dport=53), False),
    }
    behind = IPv6(src=C6, dst=S6) / IPv6ExtHdrDestOpt() / UDP(sport=sport + 2, dport=53)
    assert fw.run(eth(behind)).action == "XDP_PASS"
    errors["unreachable about a datagram with destination options"] = (
        IPv6(src=ROUTER6, dst=C6) / ICMPv6DestUnreach(code=4) / IPerror6(bytes(behind)), True)
    conn = open_flow(fw, family=6)
    assert fw.run(conn.send(0, "PA", payload=b"q" * 1400)).action == "XDP_PASS"
    too_big = IPv6(src=C6, dst=S6) / TCP(sport=conn.port[0], dport=80, seq=(conn.nxt[0] - 1400) % 2**32, flags="PA")
    errors["packet too big about a TCP segment"] = (
        IPv6(src=ROUTER6, dst=C6) / ICMPv6PacketTooBig(mtu=1280) / IPerror6(bytes(too_big)), True)
    errors["packet too big about a segment never sent"] = (
        IPv6(src=ROUTER6, dst=C6) / ICMPv6PacketTooBig(mtu=1280) /
        IPerror6(src=C6, dst=S6) / TCPerror(sport=conn.port[0], dport=80, seq=(conn.nxt[0] + 2**30) % 2**32), False)
    wrong = []
    for name, (packet, allowed) in errors.items():
        action, changed = verdict(fw, eth(packet))
        if (action, changed.get("rule0_hits", 0)) != ("XDP_PASS" if allowed else "XDP_DROP", int(allowed)):
            wrong.append(f"{name}: {action}")
    assert not wrong


def test_icmpv6_echo_is_tracked_one_way(fw):
    assert fw.run(eth(IPv6(src=C6, dst=S6) / ICMPv6EchoRequest(id=9))).action == "XDP_PASS"
    assert fw.run(eth(IPv6(src=S6, dst=C6) / ICMPv6EchoReply(id=9))).action == "XDP_PASS"
    assert fw.run(eth(IPv6(src=S6, dst=C6) / ICMPv6EchoRequest(id=9))).action == "XDP_DROP"
    assert fw.run(eth(IPv6(src=C6, dst=S6) / ICMPv6EchoReply(id=9))).action == "XDP_DROP"


def test_tcp_over_ipv6_has_windows_too(fw):
    conn = open_flow(fw, family=6)
    assert verdict(fw, conn.forge(1, "R", seq=conn.nxt[1] + 2**31))[0] == "XDP_DROP"
    assert data_flows(fw, conn)
    assert verdict(fw, conn.forge(1, "R"))[1]["ct_rst_closed"] == 1


def test_a_flow_stamped_by_another_cpu_after_this_one_read_the_clock_is_live(fw):
    """Each CPU reads the clock once per packet; another CPU may stamp the flow
    later than that. Such a flow is not 'idle for ages' (an unsigned compare
    once tore live connections down under load, on two CPUs)."""
    import time
    conn = open_flow(fw)
    future = (time.clock_gettime_ns(time.CLOCK_MONOTONIC) + 10**9).to_bytes(8, "little")
    flows = next(path for name, path in fw.record.maps.items() if name.endswith("_flows"))
    with bpfsys.PinnedMap(flows) as table:
        for key in table.keys():
            value = table.lookup(key)[0]
            table.update(key, future + value[8:])     # last_seen comes first
    assert data_flows(fw, conn)
