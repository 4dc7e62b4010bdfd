"""The one parser, as an attacker probes it: VLAN stacks, IPv4 options and lying
lengths, IPv6 extension headers, cut transport headers and fragments (RFC 1858).
Every frame goes through BPF_PROG_TEST_RUN in both chain modes; each row says
what a default-drop firewall (``strict``) and a default-allow one with
``unparsed: drop`` (``blocklist``) do with it, and why the parser gave up on it
(counted by the entry as ``unparsed_<reason>``, and by a firewall that drops it
as ``drop_unparsed_<reason>``)."""
from __future__ import annotations

import struct

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (ICMPv6EchoRequest, IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment,
                                IPv6ExtHdrHopByHop, IPv6ExtHdrRouting)
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.packet import Raw

from tests.chain_fixtures import MODES, delta
from vnfchain.chain.render import ENTRY

E = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
C, S = "198.18.1.2", "198.18.2.2"
C6, S6 = "2002:c612:102::2", "2002:c612:202::2"   # never on a wire: test runs only

STRICT = """
name: strict
exit: tx
functions:
  fw:
    type: firewall
    default: drop
    rules:
      - {action: allow, proto: tcp, dport: 80}
      - {action: allow, proto: udp, dport: 53}
      - {action: allow, proto: icmp, icmp_type: echo-request}
      - {action: allow, proto: icmpv6}
"""

BLOCKLIST = """
name: blocklist
exit: tx
functions:
  fw:
    type: firewall
    default: allow
    unparsed: drop
    rules:
      - {action: drop, proto: tcp, dport: 22}
"""


def vlans(n: int, inner):
    """n VLAN tags, outermost 802.1ad, the rest 802.1Q (a QinQ stack and deeper)."""
    frame = E
    for i in range(n):
        frame = frame / (Dot1AD(vlan=100 + i) if i == 0 else Dot1Q(vlan=100 + i))
    return frame / inner


def ipv4(payload: bytes, *, proto=6, ihl=None, options=b"", total=None, frag=0, ident=1, version=4):
    """An IPv4 header written field by field, so that every field can lie."""
    ihl = ihl if ihl is not None else 5 + len(options) // 4
    length = total if total is not None else 20 + len(options) + len(payload)
    header = struct.pack("!BBHHHBBH4s4s", version << 4 | ihl, 0, length, ident, frag, 64, proto, 0,
                         bytes(map(int, C.split("."))), bytes(map(int, S.split("."))))
    return Ether(src=E.src, dst=E.dst, type=0x0800) / Raw(header + options + payload)


def tcp(dport=80, **kw) -> bytes:
    return bytes(TCP(sport=40000, dport=dport, **kw))


AH = bytes([6, 4, 0, 0]) + bytes(20)     # next header TCP, (24 / 4) - 2, SPI, sequence, ICV


def dest_options(n: int, then: int, size: int = 8) -> bytes:
    """n destination-options headers of ``size`` bytes (IPv6 next header 60 must
    lead to them); the last names ``then``."""
    return b"".join(bytes([60 if i < n - 1 else then, size // 8 - 1]) + bytes(size - 2) for i in range(n))


# description, frame, strict verdict, blocklist verdict, the parser's reason (or None)
CASES = [
    ("plain TCP/80", E / IP(src=C, dst=S) / TCP(dport=80), "XDP_TX", "XDP_TX", None),
    ("one 802.1Q tag", E / Dot1Q(vlan=7) / IP(src=C, dst=S) / TCP(dport=80), "XDP_TX", "XDP_TX", None),
    ("QinQ", vlans(2, IP(src=C, dst=S) / TCP(dport=80)), "XDP_TX", "XDP_TX", None),
    ("four tags: the deepest stack walked", vlans(4, IP(src=C, dst=S) / TCP(dport=22)),
     "XDP_DROP", "XDP_DROP", None),
    ("five tags hide TCP/22", vlans(5, IP(src=C, dst=S) / TCP(dport=22)), "XDP_DROP", "XDP_DROP", "vlan"),
    ("a tag cut short", Ether(src=E.src, dst=E.dst, type=0x8100) / Raw(b"\x00\x07\x08"), "XDP_DROP", "XDP_DROP", "vlan"),
    ("ARP is not IP: non_ip", E / ARP(psrc=C, pdst=S), "XDP_TX", "XDP_TX", None),
    ("Ethernet padding after the datagram", E / IP(src=C, dst=S) / TCP(dport=80) / Raw(bytes(20)),
     "XDP_TX", "XDP_TX", None),
    ("IHL 4", ipv4(tcp(), ihl=4), "XDP_DROP", "XDP_DROP", "ip_header"),
    ("version 6 in an IPv4 frame", ipv4(tcp(), version=6), "XDP_DROP", "XDP_DROP", "ip_header"),
    ("total length past the frame", ipv4(tcp(), total=200), "XDP_DROP", "XDP_DROP", "ip_length"),
    ("total length inside the header", ipv4(tcp(), total=16), "XDP_DROP", "XDP_DROP", "ip_length"),
    ("record-route option, TCP/80", ipv4(tcp(), options=bytes([7, 7, 4]) + bytes(4) + b"\x00"),
     "XDP_TX", "XDP_TX", None),
    ("options hide TCP/22 from a fixed-offset reader", ipv4(tcp(22), options=bytes([7, 7, 4]) + bytes(5)),
     "XDP_DROP", "XDP_DROP", None),
    ("LSRR: the kernel would not deliver it here", ipv4(tcp(), options=bytes([131, 7, 4]) + bytes(4) + b"\x00"),
     "XDP_DROP", "XDP_DROP", "source_route"),
    ("SSRR after a no-op", ipv4(tcp(), options=bytes([1, 137, 7, 4]) + bytes(4)),
     "XDP_DROP", "XDP_DROP", "source_route"),
    ("option length 1", ipv4(tcp(), options=bytes([7, 1, 0, 0])), "XDP_DROP", "XDP_DROP", "ip_header"),
    ("option past the header", ipv4(tcp(), options=bytes([7, 9, 4, 0])), "XDP_DROP", "XDP_DROP", "ip_header"),
    ("more option steps than walked", ipv4(tcp(), options=bytes([1] * 11 + [0])),
     "XDP_DROP", "XDP_DROP", "ip_header"),
    ("TCP header cut short", ipv4(tcp()[:10]), "XDP_DROP", "XDP_DROP", "l4_header"),
    ("TCP data offset 4", ipv4(tcp(dataofs=4)), "XDP_DROP", "XDP_DROP", "l4_header"),
    ("TCP data offset past the datagram", ipv4(tcp(dataofs=15)), "XDP_DROP", "XDP_DROP", "l4_header"),
    ("UDP length past the datagram", ipv4(bytes(UDP(dport=53, len=100)) + b"q", proto=17),
     "XDP_DROP", "XDP_DROP", "l4_header"),
    ("UDP length 4", ipv4(bytes(UDP(dport=53, len=4)), proto=17), "XDP_DROP", "XDP_DROP", "l4_header"),
    ("ICMP of 4 bytes", ipv4(bytes(ICMP(type=8))[:4], proto=1), "XDP_DROP", "XDP_DROP", "l4_header"),
    ("tiny first fragment (RFC 1858)", ipv4(tcp()[:8], frag=0x2000), "XDP_DROP", "XDP_DROP", "tiny_fragment"),
    ("TCP fragment at offset 8 (RFC 1858)", ipv4(bytes(12), frag=1), "XDP_DROP", "XDP_DROP",
     "fragment_overlap"),
    ("a later fragment nobody's first", ipv4(bytes(16), frag=100, ident=999), "XDP_DROP", "XDP_DROP",
     "later_fragment"),
    ("IPv6 TCP/80", E / IPv6(src=C6, dst=S6) / TCP(dport=80), "XDP_TX", "XDP_TX", None),
    ("IPv6 TCP/80 behind hop-by-hop, atomic fragment, dest-opts, routing (0 left)",
     E / IPv6(src=C6, dst=S6) / IPv6ExtHdrHopByHop() / IPv6ExtHdrFragment() / IPv6ExtHdrDestOpt()
     / IPv6ExtHdrRouting(segleft=0) / TCP(dport=80), "XDP_TX", "XDP_TX", None),
    ("IPv6 TCP/22 behind destination options", E / IPv6(src=C6, dst=S6) / IPv6ExtHdrDestOpt() / TCP(dport=22),
     "XDP_DROP", "XDP_DROP", None),
    ("IPv6 AH is the protocol, as nftables sees it: no rule allows 51",
     E / IPv6(src=C6, dst=S6, nh=51) / Raw(AH + tcp()), "XDP_DROP", "XDP_TX", None),
    ("IPv6 echo behind hop-by-hop", E / IPv6(src=C6, dst=S6) / IPv6ExtHdrHopByHop() / ICMPv6EchoRequest(),
     "XDP_TX", "XDP_TX", None),
    ("IPv6 TCP/22 behind eight extension headers: all walked",
     E / IPv6(src=C6, dst=S6, nh=60) / Raw(dest_options(8, then=6) + tcp(22)), "XDP_DROP", "XDP_DROP", None),
    ("IPv6 nine extension headers hide TCP/22", E / IPv6(src=C6, dst=S6, nh=60) / Raw(dest_options(9, then=6) + tcp(22)),
     "XDP_DROP", "XDP_DROP", "ext_headers"),
    ("IPv6 fragment header behind destination options", E / IPv6(src=C6, dst=S6) / IPv6ExtHdrDestOpt()
     / IPv6ExtHdrFragment(m=1, id=81) / TCP(dport=80), "XDP_DROP", "XDP_DROP", "ext_headers"),
    ("IPv6 fragment header behind a routing header", E / IPv6(src=C6, dst=S6) / IPv6ExtHdrRouting(segleft=0)
     / IPv6ExtHdrFragment(id=82) / TCP(dport=80), "XDP_DROP", "XDP_DROP", "ext_headers"),
    ("IPv6 routing header with a segment left", E / IPv6(src=C6, dst=S6)
     / IPv6ExtHdrRouting(addresses=["2002:c612:303::3"], segleft=1) / TCP(dport=80),
     "XDP_DROP", "XDP_DROP", "source_route"),
    ("IPv6 hop-by-hop not first", E / IPv6(src=C6, dst=S6) / IPv6ExtHdrDestOpt() / IPv6ExtHdrHopByHop()
     / TCP(dport=80), "XDP_DROP", "XDP_DROP", "ext_headers"),
    ("IPv6 extension header cut short", E / IPv6(src=C6, dst=S6, nh=60) / Raw(bytes([6, 0, 0, 0])),
     "XDP_DROP", "XDP_DROP", "ext_headers"),
    ("IPv6 extension header longer than the datagram", E / IPv6(src=C6, dst=S6, nh=60) / Raw(bytes([6, 3]) + bytes(6)
                                                                                           + tcp()),
     "XDP_DROP", "XDP_DROP", "ext_headers"),
    ("IPv6 payload length past the frame", E / IPv6(src=C6, dst=S6, plen=400) / TCP(dport=80),
     "XDP_DROP", "XDP_DROP", "ip_length"),
    ("IPv6 jumbogram announcement", E / IPv6(src=C6, dst=S6, plen=0, nh=0) / Raw(bytes([6, 0]) + bytes(6)),
     "XDP_DROP", "XDP_DROP", "ip_length"),
    ("IPv6 tiny first fragment", E / IPv6(src=C6, dst=S6) / IPv6ExtHdrFragment(m=1, id=78, nh=6) / Raw(tcp()[:8]),
     "XDP_DROP", "XDP_DROP", "tiny_fragment"),
    ("IPv6 TCP fragment at offset 8", E / IPv6(src=C6, dst=S6) / IPv6ExtHdrFragment(offset=1, id=79, nh=6)
     / Raw(bytes(16)), "XDP_DROP", "XDP_DROP", "fragment_overlap"),
    ("IPv6 later fragment nobody's first", E / IPv6(src=C6, dst=S6) / IPv6ExtHdrFragment(offset=9, id=80, nh=6)
     / Raw(bytes(16)), "XDP_DROP", "XDP_DROP", "later_fragment"),
]


@pytest.fixture(params=MODES)
def chains(request, deployed):
    return deployed(STRICT, request.param), deployed(BLOCKLIST, request.param)


@pytest.mark.parametrize("desc,frame,strict,blocklist,reason", CASES, ids=[c[0] for c in CASES])
def test_frames(chains, desc, frame, strict, blocklist, reason):
    for dep, want, policy in zip(chains, (strict, blocklist), ("default drop", "unparsed: drop")):
        before = dep.stats()
        got = dep.run(frame).action
        changed = delta(before, dep.stats())
        assert got == want, f"{policy}: {desc} got {got}"
        entry = {k: v for k, v in changed[ENTRY].items() if k.startswith("unparsed_")}
        assert entry == ({f"unparsed_{reason}": 1} if reason else {}), f"{policy}: {desc}"
        if reason:
            assert changed["fw"].get(f"drop_unparsed_{reason}") == 1, f"{policy}: {desc}: {changed['fw']}"


def test_later_fragments_follow_their_first(chains):
    strict, blocklist = chains
    cases = [  # chain, first fragment, a later fragment of it, the datagram's verdict, the rule
        (strict, ipv4(tcp(80) + bytes(16), frag=0x2000, ident=501), ipv4(bytes(16), frag=5, ident=501),
         "XDP_TX", "rule0_hits"),
        (strict, ipv4(tcp(81) + bytes(16), frag=0x2000, ident=502), ipv4(bytes(16), frag=5, ident=502),
         "XDP_DROP", "default_hits"),
        (blocklist, ipv4(tcp(22) + bytes(16), frag=0x2000, ident=503), ipv4(bytes(16), frag=5, ident=503),
         "XDP_DROP", "rule0_hits"),
        (blocklist, ipv4(tcp(23) + bytes(16), frag=0x2000, ident=504), ipv4(bytes(16), frag=5, ident=504),
         "XDP_TX", "default_hits"),
        (strict, E / IPv6(src=C6, dst=S6) / IPv6ExtHdrFragment(m=1, id=505) / TCP(dport=80) / Raw(bytes(16)),
         E / IPv6(src=C6, dst=S6) / IPv6ExtHdrFragment(offset=5, id=505, nh=6) / Raw(bytes(16)),
         "XDP_TX", "rule0_hits"),
        (blocklist, E / IPv6(src=C6, dst=S6) / IPv6ExtHdrFragment(m=1, id=506) / TCP(dport=22) / Raw(bytes(16)),
         E / IPv6(src=C6, dst=S6) / IPv6ExtHdrFragment(offset=5, id=506, nh=6) / Raw(bytes(16)),
         "XDP_DROP", "rule0_hits"),
        # destination options in the fragmentable part: every fragment's header names
        # them (RFC 8200 4.5), not the UDP behind them, and the kernel reassembles
        # by source, destination and id alone
        (strict, E / IPv6(src=C6, dst=S6) / IPv6ExtHdrFragment(m=1, id=507) / IPv6ExtHdrDestOpt()
         / UDP(dport=53) / Raw(bytes(16)),
         E / IPv6(src=C6, dst=S6) / IPv6ExtHdrFragment(offset=5, id=507, nh=60) / Raw(bytes(16)),
         "XDP_TX", "rule1_hits"),
        (blocklist, E / IPv6(src=C6, dst=S6) / IPv6ExtHdrFragment(m=1, id=508) / IPv6ExtHdrDestOpt()
         / TCP(dport=22) / Raw(bytes(16)),
         E / IPv6(src=C6, dst=S6) / IPv6ExtHdrFragment(offset=5, id=508, nh=17) / Raw(bytes(16)),
         "XDP_DROP", "rule0_hits"),
    ]
    for dep, first, later, want, hit in cases:
        before = dep.stats()
        assert dep.run(first).action == want
        assert dep.run(later).action == want, f"a later fragment of {first!r}"
        changed = delta(before, dep.stats())
        assert changed["fw"][hit] == 2 and changed[ENTRY].get("unparsed_later_fragment") == 1
        assert not any(k.startswith("drop_unparsed") for k in changed["fw"])


def test_a_second_first_fragment_cannot_replace_a_dropped_one(chains):
    """tcp/22's first fragment is dropped; an offset-0 fragment of the same
    datagram with tcp/80 would be the only one the host sees, and be reassembled
    with the later ones: dropped too, and so are the later ones."""
    for dep in chains:
        before = dep.stats()
        assert dep.run(ipv4(tcp(22) + bytes(16), frag=0x2000, ident=701)).action == "XDP_DROP"
        assert dep.run(ipv4(tcp(80) + bytes(16), frag=0x2000, ident=701)).action == "XDP_DROP"
        assert dep.run(ipv4(bytes(16), frag=5, ident=701)).action == "XDP_DROP"
        assert delta(before, dep.stats())["fw"]["drop_fragment"] == 1


def test_an_orphan_later_fragment_condemns_its_datagram(chains):
    """A later fragment that comes before its first is dropped; its first must
    not then bring a datagram the host could only build without it (the
    kernel's reassembly discards overlapping pieces, so the host behind
    nftables would have dropped the whole datagram)."""
    strict, _ = chains
    before = strict.stats()
    assert strict.run(ipv4(bytes(16), frag=1 << 13 | 1, ident=801, proto=17)).action == "XDP_DROP"
    first = ipv4(bytes(UDP(dport=53, len=40)) + bytes(8), frag=0x2000, ident=801, proto=17)
    assert strict.run(first).action == "XDP_DROP"
    changed = delta(before, strict.stats())["fw"]
    assert changed["drop_unparsed_later_fragment"] == 1 and changed["drop_fragment"] == 1
    assert "rule1_hits" not in changed


def test_dropped_fragments_cannot_push_out_an_allowed_datagram(chains):
    """The verdicts of condemned datagrams are kept apart: a flood of dropped
    first fragments (more than the table holds) leaves an allowed datagram's
    later fragments their verdict."""
    strict, _ = chains
    assert strict.run(ipv4(tcp(80) + bytes(16), frag=0x2000, ident=40001)).action == "XDP_TX"
    for ident in range(9000):
        strict.run(ipv4(tcp(22) + bytes(16), frag=0x2000, ident=ident))
    assert strict.run(ipv4(bytes(16), frag=5, ident=40001)).action == "XDP_TX"


def test_a_fragment_of_another_datagram_does_not_follow(chains):
    """Same addresses and protocol, another id: the kernel would not reassemble
    them together, and the firewall does not let one vouch for the other."""
    strict, _ = chains
    assert strict.run(ipv4(tcp(80) + bytes(16), frag=0x2000, ident=601)).action == "XDP_TX"
    assert strict.run(ipv4(bytes(16), frag=5, ident=602)).action == "XDP_DROP"
    assert strict.run(ipv4(bytes(16), frag=5, ident=601, proto=17)).action == "XDP_DROP"


def test_unparsed_follows_default_unless_set(deployed):
    """default: allow alone lets unparsed frames through (and validate warns about it)."""
    dep = deployed(BLOCKLIST.replace("    unparsed: drop\n", "").replace("name: blocklist", "name: open"))
    frame = vlans(5, IP(src=C, dst=S) / TCP(dport=22))
    before = dep.stats()
    assert dep.run(frame).action == "XDP_TX"
    assert delta(before, dep.stats())[ENTRY] == {"rx_packets": 1, "rx_bytes": len(frame), "unparsed_vlan": 1}


def policies(name: str, unparsed: str) -> str:
    return f"""
name: {name}
exit: tx
functions:
  steer:
    type: classify
    rules: [{{proto: udp, label: udp}}]
    next: {{udp: scan, default: scan}}
  scan:
    type: dpi
    unparsed: {unparsed}
    signatures:
      - {{id: 1, content: "/etc/passwd", action: drop}}
"""


@pytest.mark.parametrize("mode", MODES)
def test_dpi_and_classify_policies(deployed, mode):
    scanning = deployed(policies("policies", "continue"), mode)
    closed = deployed(policies("policies-closed", "drop"), mode)
    bad = b"GET /etc/passwd HTTP/1.0\r\n\r\n"
    # the signature in a whole datagram, and far behind IPv6 extension headers
    assert scanning.run(ipv4(bytes(UDP(dport=9, len=8 + len(bad))) + bad, proto=17)).action == "XDP_DROP"
    deep = E / IPv6(src=C6, dst=S6, nh=60) / Raw(dest_options(7, then=17, size=48)
                                                  + bytes(UDP(dport=9, len=8 + len(bad))) + bad)
    assert scanning.run(deep).action == "XDP_DROP"
    # a later fragment's bytes are not a payload's start: never scanned, and
    # classify still steers it by its protocol
    later = ipv4(bad, proto=17, frag=3, ident=77)
    before = scanning.stats()
    assert scanning.run(later).action == "XDP_TX"
    changed = delta(before, scanning.stats())
    assert changed["steer"]["branch"] == 1 and "sig1_hits" not in changed["scan"]
    # unparsed: drop closes what the parser cannot read, counted by reason
    before = closed.stats()
    assert closed.run(later).action == "XDP_DROP"
    assert closed.run(vlans(6, IP(src=C, dst=S) / UDP(dport=9) / Raw(bad))).action == "XDP_DROP"
    changed = delta(before, closed.stats())
    assert changed["scan"]["drop_unparsed_later_fragment"] == 1 and changed["scan"]["drop_unparsed_vlan"] == 1
