"""Crafted frames for the evasion differential (tests/netns/test_firewall_evasion.py).

A ``Case`` describes one attempt to slip a datagram past a firewall: the VLAN
stack it travels in, the IPv4 header's lies (IHL, options, lengths, version,
flags), the IPv6 extension header chain, the transport header's lies (data
offset, length, truncation) and how the datagram is cut into fragments
(tiny first fragment, overlapping rewrite, out of order, later ones alone,
another datagram's id). ``case.frames(n)`` turns it into Ethernet frames,
built by hand because scapy would "fix" the lies.

Identity: case number ``n`` sends from its own address, so that whatever a
guard delivers -- one frame or a reassembled fragment set -- names its case:

    IPv4  198.18.0.0 + n          (blocked=True: 198.18.128.0 + n, the range the
                                   policies' `drop src` rules name)
    IPv6  2002:c612:XXXX::1       the 6to4 image of that IPv4 address

so every address stays in 198.18.0.0/15 or its 6to4 image 2002:c612::/31.
Guards answer from 198.19.0.0/16 (and 2002:c613::/32), which cases never use.

``KNOWN_TRICKS`` names one case per published trick; ``cases()`` and
``batches()`` are the hypothesis strategies that mix the same ingredients.
"""
from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field, fields, replace

from hypothesis import assume
from hypothesis import strategies as st

from tests.frames import pseudo_header, with_checksum

GUARD_MAC = "02:c6:13:00:00:01"
SENDER_MAC = "02:c6:12:00:00:01"
ETH_IP, ETH_IP6 = 0x0800, 0x86DD
TPID_Q, TPID_AD = 0x8100, 0x88A8
TCP, UDP, ICMP, ICMP6 = 6, 17, 1, 58
SYN, ACK = 0x02, 0x10

#: the guards' devices: VLAN path from the veth g0, and the device's IPv4 address
GUARD_DEVICES = {
    "g0": ((), "198.19.0.1"),
    "g0.10": (((TPID_Q, 10),), "198.19.10.1"),
    "g0.20": (((TPID_AD, 20),), "198.19.20.1"),
    "g0.20.30": (((TPID_AD, 20), (TPID_Q, 30)), "198.19.30.1"),
}
PLAIN = ipaddress.IPv4Network("198.18.0.0/17")
BLOCKED = ipaddress.IPv4Network("198.18.128.0/17")   # what the policies' `drop src` rules name
IDENTS = PLAIN.num_addresses - 1           # case numbers 1 .. IDENTS
WIRE_MAX = 14 + 1500                       # a frame on the veths: Ethernet header and MTU
PAYLOAD = b"vnfchain-evasion-payload"      # 24 bytes: TCP is 44 bytes long, UDP 32, ICMP 32

# extension header kinds -> IPv6 next-header numbers
EXT_NUMBER = {"hbh": 0, "rt": 43, "frag": 44, "ah": 51, "none": 59, "dst": 60}


def six_to_four(v4: ipaddress.IPv4Address, host: int = 1) -> ipaddress.IPv6Address:
    """2002:AABB:CCDD::host, the 6to4 image of IPv4 address AA.BB.CC.DD."""
    return ipaddress.IPv6Address((0x2002 << 112) | (int(v4) << 80) | host)


def six_to_four_network(net: ipaddress.IPv4Network) -> ipaddress.IPv6Network:
    return ipaddress.IPv6Network(f"{six_to_four(net.network_address, 0)}/{16 + net.prefixlen}")


def guard_address(device: str, family: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    v4 = ipaddress.IPv4Address(GUARD_DEVICES[device][1])
    return v4 if family == 4 else six_to_four(v4)


def source(n: int, blocked: bool, family: int):
    if not 1 <= n <= IDENTS:
        raise ValueError(f"case number {n} is outside 1..{IDENTS}")
    v4 = (BLOCKED if blocked else PLAIN).network_address + n
    return v4 if family == 4 else six_to_four(v4)


def case_number(address: str) -> int | None:
    """The case number a delivered datagram's source address names, or None."""
    addr = ipaddress.ip_address(address.split("%")[0])
    if addr.version == 6:
        if int(addr) >> 112 != 0x2002:
            return None
        addr = ipaddress.IPv4Address((int(addr) >> 80) & 0xFFFFFFFF)
    for net in (PLAIN, BLOCKED):
        if addr in net:
            return int(addr) - int(net.network_address) or None
    return None


# --- the ingredients -------------------------------------------------------------------

@dataclass(frozen=True)
class Transport:
    """The transport header and payload; ``cut`` keeps only its first bytes (the
    IP lengths then tell the truth about the shorter datagram)."""

    proto: int = TCP
    sport: int = 40000
    dport: int = 80
    flags: int = SYN
    doff: int = 5                  # TCP data offset as written (the header is 20 bytes)
    icmp_type: int = 8
    udp_len_delta: int = 0         # UDP length field minus the true length
    cut: int | None = None

    def encode(self, src: bytes, dst: bytes) -> bytes:
        if self.proto == TCP:
            data, at = struct.pack("!HHIIBBHHH", self.sport, self.dport, 1, 0, (self.doff & 15) << 4,
                                   self.flags, 8192, 0, 0) + PAYLOAD, 16
        elif self.proto == UDP:
            length = max(0, min(0xFFFF, 8 + len(PAYLOAD) + self.udp_len_delta))
            data, at = struct.pack("!HHHH", self.sport, self.dport, length, 0) + PAYLOAD, 6
        elif self.proto in (ICMP, ICMP6):
            data, at = struct.pack("!BBHHH", self.icmp_type, 0, 0, 0x7663, 1) + PAYLOAD, 2
        else:
            data, at = PAYLOAD, None
        if self.cut is not None:
            data = data[:self.cut]
        if at is None or at + 2 > len(data):
            return data
        # a checksum over what is really sent: an IPv6 raw socket drops ICMPv6 with a wrong one
        pseudo = b"" if self.proto == ICMP else pseudo_header(src, dst, self.proto, len(data))
        return with_checksum(data, at, pseudo, udp=self.proto == UDP)


@dataclass(frozen=True)
class V4:
    """What the IPv4 header says beyond the defaults."""

    ihl: int | None = None         # as written; None: what the options need
    options: bytes = b""           # padded with EOL to a multiple of 4
    df: bool = False
    evil: bool = False             # the reserved flag bit


@dataclass(frozen=True)
class Ext:
    """One IPv6 extension header. ``size`` in bytes (hbh/dst/ah: a multiple of
    8; rt: 8 + 16 per address); ``len_delta`` makes its length field lie."""

    kind: str                      # hbh, dst, rt, frag, ah, none
    size: int = 8
    rt_type: int = 0
    segments_left: int = 0
    len_delta: int = 0

    def encode(self, next_header: int, dst: bytes, ident: int) -> bytes:
        if self.kind == "frag":        # an atomic fragment: offset 0, no more fragments
            return struct.pack("!BBHI", next_header, 0, 0, ident)
        if self.kind == "none":
            return b""
        if self.kind == "ah":          # length in 4-byte words minus 2
            return struct.pack("!BBHII", next_header, (self.size // 4 - 2 + self.len_delta) & 0xFF, 0,
                               0x100, 1) + bytes(self.size - 12)
        length = (self.size // 8 - 1 + self.len_delta) & 0xFF
        if self.kind == "rt":
            addresses = (self.size - 8) // 16
            last = max(addresses - 1, 0) if self.rt_type == 4 else 0
            return struct.pack("!BBBBBBH", next_header, length, self.rt_type, self.segments_left,
                               last, 0, 0) + dst * addresses
        return struct.pack("!BB", next_header, length) + _skippable_options(self.size - 2)


def _skippable_options(size: int) -> bytes:
    """``size`` bytes of hop-by-hop/destination options the stack skips: an
    experimental type (0x1e, "skip if unknown") rather than padding, because
    the stack refuses more than 7 bytes of padding in a row (RFC 8504), and
    at most 8 of them, its default limit per header."""
    out = b""
    while size:
        if size == 1:
            return out + b"\x00"                    # Pad1
        n = min(size, 257)
        n -= n == size - 1                          # never leave a single byte but for Pad1
        out += bytes([0x1E, n - 2]) + bytes(n - 2)
        size -= n
    return out


@dataclass(frozen=True)
class Piece:
    """One fragment: bytes ``start:end`` of the fragmentable part (``alt``: of
    the case's ``alt`` transport, to overwrite), at offset ``start``."""

    start: int
    end: int | None
    more: bool
    alt: bool = False
    ident_delta: int = 0           # another datagram's id


@dataclass(frozen=True)
class Case:
    label: str
    family: int = 4
    vlans: tuple[tuple[int, int], ...] = ()
    device: str = "g0"             # whose address is the destination
    blocked: bool = False          # source in the range the `drop src` rules name
    l4: Transport = Transport()
    v4: V4 = V4()
    ext: tuple[Ext, ...] = ()      # IPv6: before the transport (not fragmented)
    ext_frag: tuple[Ext, ...] = () # IPv6: inside the fragmentable part
    pieces: tuple[Piece, ...] = () # empty: one unfragmented datagram
    alt: Transport | None = None   # what overwriting pieces carry
    length_delta: int = 0          # IPv4 total / IPv6 payload length minus the true one
    version: int | None = None     # the IP version nibble, when it lies
    eth_type: int | None = None    # the innermost ethertype, when it lies
    trim: int = 0                  # bytes cut off the end of every frame
    pad: bytes = b""               # bytes after the datagram in every frame
    expect: str | None = None      # controls: "delivered" or "refused" by both guards; "reassembled":
                                   # fragments of an allowed datagram, delivered by the guard that
                                   # reassembles before its rules (conntrack) and by the chain

    def describe(self) -> str:
        """The label and the fields that differ from a plain TCP SYN to port 80."""
        return f"{self.label}: {_brief(self, skip=('label', 'expect'))}"

    def _repr_pretty_(self, printer, cycle) -> None:   # how hypothesis prints a falsifying batch
        printer.text(self.describe())

    def frames(self, n: int) -> list[bytes]:
        src = source(n, self.blocked, self.family).packed
        dst = guard_address(self.device, self.family).packed
        eth = bytes.fromhex(GUARD_MAC.replace(":", "") + SENDER_MAC.replace(":", ""))
        for tpid, vid in self.vlans:
            eth += struct.pack("!HH", tpid, vid & 0xFFF)
        eth += struct.pack("!H", self.eth_type or (ETH_IP if self.family == 4 else ETH_IP6))
        build = self._ipv4 if self.family == 4 else self._ipv6
        return [(eth + ip)[:len(eth + ip) - self.trim] + self.pad for ip in build(n, src, dst)]

    def _ipv4(self, n: int, src: bytes, dst: bytes) -> list[bytes]:
        options = self.v4.options + bytes(-len(self.v4.options) % 4)
        ihl = self.v4.ihl if self.v4.ihl is not None else 5 + len(options) // 4
        flags = (0x8000 if self.v4.evil else 0) | (0x4000 if self.v4.df else 0)

        def datagram(payload: bytes, frag: int, ident: int) -> bytes:
            total = 20 + len(options) + len(payload) + self.length_delta
            header = struct.pack("!BBHHHBBH4s4s", ((self.version or 4) << 4) | (ihl & 15), 0, total & 0xFFFF,
                                 ident & 0xFFFF, flags | frag, 64, self.l4.proto, 0, src, dst) + options
            packet = header + payload
            # checksummed over the IHL the header claims, so that a lying IHL gets past the checksum
            covered = max(ihl, 5) * 4
            return with_checksum(packet[:covered], 10) + packet[covered:]

        whole = self.l4.encode(src, dst)
        if not self.pieces:
            return [datagram(whole, 0, n)]
        alt = self.alt.encode(src, dst) if self.alt else whole
        return [datagram((alt if p.alt else whole)[p.start:p.end], (0x2000 if p.more else 0) | p.start // 8,
                         n + p.ident_delta) for p in self.pieces]

    def _ipv6(self, n: int, src: bytes, dst: bytes) -> list[bytes]:
        def chain(exts: tuple[Ext, ...], last: int) -> bytes:
            out = b""
            for i, ext in enumerate(exts):
                following = EXT_NUMBER[exts[i + 1].kind] if i + 1 < len(exts) else last
                out += ext.encode(following, dst, n)
            return out

        def first_number(exts: tuple[Ext, ...], last: int) -> int:
            return EXT_NUMBER[exts[0].kind] if exts else last

        def datagram(next_header: int, payload: bytes) -> bytes:
            length = (len(payload) + self.length_delta) & 0xFFFF
            return struct.pack("!IHBB16s16s", (self.version or 6) << 28, length, next_header, 64, src, dst) + payload

        proto = self.l4.proto
        fragmentable = chain(self.ext_frag, proto) + self.l4.encode(src, dst)
        if not self.pieces:
            return [datagram(first_number(self.ext, first_number(self.ext_frag, proto)),
                             chain(self.ext, first_number(self.ext_frag, proto)) + fragmentable)]
        alt = chain(self.ext_frag, proto) + self.alt.encode(src, dst) if self.alt else fragmentable
        head = chain(self.ext, EXT_NUMBER["frag"])
        out = []
        for p in self.pieces:
            frag = struct.pack("!BBHI", first_number(self.ext_frag, proto), 0, p.start // 8 << 3 | p.more,
                               n + p.ident_delta)
            out.append(datagram(first_number(self.ext, EXT_NUMBER["frag"]),
                                head + frag + (alt if p.alt else fragmentable)[p.start:p.end]))
        return out


def _brief(obj, skip=()) -> str:
    """A dataclass as Name(field=value) with only the fields that differ from
    their defaults; numbers that are ethertypes in hex."""
    parts = []
    for f in fields(obj):
        value = getattr(obj, f.name)
        if f.name in skip or value == f.default:
            continue
        if hasattr(value, "__dataclass_fields__"):
            text = _brief(value)
        elif isinstance(value, tuple) and value and hasattr(value[0], "__dataclass_fields__"):
            text = "(" + ", ".join(_brief(v) for v in value) + ")"
        elif f.name == "vlans":
            text = " ".join(f"{tpid:#06x}/{vid}" for tpid, vid in value)
        elif f.name == "eth_type":
            text = f"{value:#06x}"
        else:
            text = repr(value)
        parts.append(f"{f.name}={text}")
    return f"{type(obj).__name__}({', '.join(parts)})"


# --- fragment plans ------------------------------------------------------------------

def split(*cuts: int) -> tuple[Piece, ...]:
    """In order, cut at the given byte offsets (multiples of 8)."""
    ends = list(cuts) + [None]
    starts = [0] + list(cuts)
    return tuple(Piece(s, e, e is not None) for s, e in zip(starts, ends))


# --- what a policy allows or refuses, and the known tricks ----------------------------

FORBIDDEN_TCP = Transport(dport=22)
FORBIDDEN_UDP = Transport(proto=UDP, dport=161)
ALLOWED = {"tcp/80": Transport(), "udp/53": Transport(proto=UDP, dport=53, sport=5353),
           "icmp echo": Transport(proto=ICMP), "icmpv6 echo": Transport(proto=ICMP6, icmp_type=128)}


def controls(devices) -> list[Case]:
    """Well-formed frames every policy of the test allows, through each of the
    guards' ``devices`` (untagged and priority-tagged on g0) in each family, so
    that a guard that drops everything fails; and ones every policy refuses."""
    out = []
    paths = [(device, GUARD_DEVICES[device][0]) for device in devices] + [("g0", ((TPID_Q, 0),))]
    for device, vlans in paths:
        for family in (4, 6):
            for name, l4 in ALLOWED.items():
                if (l4.proto == ICMP and family == 6) or (l4.proto == ICMP6 and family == 4):
                    continue
                via = " ".join(f"{tpid:#06x}/{vid}" for tpid, vid in vlans) or "untagged"
                out.append(Case(f"control: {name} via {device} ({via})", family, vlans, device, l4=l4,
                                expect="delivered"))
    # every IPv6 fragment's header names what starts the fragmentable part (here
    # destination options), not the UDP behind it: the datagram is whole all the same
    out.append(Case("control: udp/53 in IPv6 fragments, destination options after the fragment header", 6,
                    l4=ALLOWED["udp/53"], ext_frag=(Ext("dst"),), pieces=split(24), expect="reassembled"))
    for family in (4, 6):
        out += [Case("control: tcp/22", family, l4=FORBIDDEN_TCP, expect="refused"),
                Case("control: udp/161", family, l4=FORBIDDEN_UDP, expect="refused"),
                Case("control: tcp/80 from a dropped source", family, blocked=True, expect="refused")]
    return out


VID0 = (TPID_Q, 0)
QINQ = GUARD_DEVICES["g0.20.30"][0]
NOP4 = b"\x01\x01\x01\x01"
LSRR = bytes([0x83, 7, 4]) + bytes([198, 19, 0, 1])
SSRR = bytes([0x89, 7, 8]) + bytes([198, 19, 0, 1])   # pointer past the list: the route is done
RECORD_ROUTE = bytes([0x07, 7, 4]) + bytes(4)
TIMESTAMP = bytes([0x44, 8, 5, 0]) + bytes(4)
TCP_LEN = 20 + len(PAYLOAD)


def _known() -> list[Case]:
    t22, u161 = FORBIDDEN_TCP, FORBIDDEN_UDP
    k = []
    # VLAN stacks: the kernel strips any number of VID-0 (priority) tags
    for depth in (1, 2, 3, 4, 6):
        k.append(Case(f"{depth} VID-0 tags, tcp/22", vlans=(VID0,) * depth, l4=t22))
    k += [Case("3 VID-0 tags, udp/161, IPv6", 6, (VID0,) * 3, l4=u161),
          Case("QinQ 20/30 and 2 VID-0 tags, tcp/22", vlans=QINQ + (VID0,) * 2, device="g0.20.30", l4=t22),
          Case("VLAN 10 and 2 VID-0 tags, tcp/22, IPv6", 6, ((TPID_Q, 10), VID0, VID0), "g0.10", l4=t22),
          Case("3 VID-0 802.1ad tags, tcp/22", vlans=((TPID_AD, 0),) * 3, l4=t22),
          Case("3 VID-0 tags, tcp/80 from a dropped source", vlans=(VID0,) * 3, blocked=True),
          Case("VLAN 99 (no such device), tcp/22", vlans=((TPID_Q, 99),), l4=t22),
          Case("VLAN 10 inside VLAN 10, tcp/22", vlans=((TPID_Q, 10),) * 2, device="g0.10", l4=t22)]
    # IPv4 header lies
    for ihl in (0, 4):
        k.append(Case(f"IHL {ihl}, tcp/22", l4=t22, v4=V4(ihl=ihl)))
    k += [Case("IHL 6 over a 20-byte header, tcp/22", l4=t22, v4=V4(ihl=6)),
          Case("IHL 15 over a 20-byte header, tcp/22", l4=t22, v4=V4(ihl=15)),
          Case("4 NOP options, tcp/22", l4=t22, v4=V4(options=NOP4)),
          Case("40 bytes of NOP options, tcp/22", l4=t22, v4=V4(options=NOP4 * 10)),
          Case("LSRR via the guard, tcp/22", l4=t22, v4=V4(options=LSRR)),
          Case("SSRR done, tcp/22", l4=t22, v4=V4(options=SSRR)),
          Case("record route, tcp/22", l4=t22, v4=V4(options=RECORD_ROUTE)),
          Case("timestamp option, tcp/22", l4=t22, v4=V4(options=TIMESTAMP)),
          Case("total length ends inside the TCP ports, port 80 beyond it", length_delta=-(TCP_LEN - 2)),
          Case("total length ends after the ports, tcp/22", l4=t22, length_delta=-(TCP_LEN - 4)),
          Case("total length longer than the frame, tcp/22", l4=t22, length_delta=40),
          Case("trailing garbage after the datagram, tcp/22", l4=t22, pad=b"\x00\x50" * 8),
          Case("version 6 in an IPv4 frame, tcp/22", l4=t22, version=6),
          Case("IPv4 under the IPv6 ethertype, tcp/22", l4=t22, eth_type=ETH_IP6),
          Case("DF and MF, offset 0, alone, tcp/22", l4=t22, v4=V4(df=True), pieces=(Piece(0, None, True),)),
          Case("reserved flag bit, tcp/22", l4=t22, v4=V4(evil=True))]
    # IPv4 fragments
    frag_tricks = [
        ("tiny first fragment (8 bytes of TCP), tcp/22", t22, split(8), None),
        ("tiny first fragment (16 bytes of TCP), tcp/22", t22, split(16), None),
        ("first fragment holds the TCP header, tcp/22", t22, split(24), None),
        ("three fragments, out of order, tcp/22", t22, tuple(reversed(split(8, 24))), None),
        ("later fragments alone, tcp/22", t22, split(8, 24)[1:], None),
        ("first fragment alone, tcp/22", t22, split(24)[:1], None),
        ("offset-1 fragment rewrites TCP flags (RFC 1858)", Transport(flags=ACK),
         split(24) + (Piece(8, 24, True, alt=True),), Transport(flags=SYN)),
        ("tcp/80 then an offset-0 fragment with tcp/22 (RFC 3128)", Transport(),
         (Piece(0, 24, True), Piece(0, 24, True, alt=True), Piece(24, None, False)), t22),
        ("tcp/22 then an offset-0 fragment with tcp/80", t22,
         (Piece(0, 24, True), Piece(0, 24, True, alt=True), Piece(24, None, False)), Transport()),
        ("duplicate ids: tcp/80's head, tcp/22's tail", Transport(),
         (Piece(0, 8, True), Piece(8, None, False, alt=True)), t22),
        ("tiny first fragment, udp/161 (8 bytes: the header)", u161, split(8), None),
        ("tiny first fragment of an echo request with a dropped source", Transport(proto=ICMP), split(8), None),
    ]
    for label, l4, pieces, alt in frag_tricks:
        k.append(Case(label, l4=l4, pieces=pieces, alt=alt, blocked="dropped source" in label))
    # IPv6 extension headers
    hbh, dst8 = Ext("hbh"), Ext("dst")
    six = [
        ("hop-by-hop, tcp/22", (hbh,), t22),
        ("destination options, udp/161", (dst8,), u161),
        ("hop-by-hop and 3 destination options, tcp/22", (hbh,) + (dst8,) * 3, t22),
        ("12 destination options headers, tcp/22", (dst8,) * 12, t22),
        ("a 1 KiB destination options header, tcp/22", (Ext("dst", 1024),), t22),
        ("routing type 0, segments left 0, tcp/22", (Ext("rt", 24),), t22),
        ("routing type 0, segments left 1, tcp/22", (Ext("rt", 24, segments_left=1),), t22),
        ("routing type 2, segments left 0, tcp/22", (Ext("rt", 24, rt_type=2),), t22),
        ("segment routing header, segments left 0, tcp/22", (Ext("rt", 24, rt_type=4),), t22),
        ("atomic fragment, tcp/22", (Ext("frag"),), t22),
        ("atomic fragment behind hop-by-hop, udp/161", (hbh, Ext("frag")), u161),
        ("AH, tcp/22", (Ext("ah", 24),), t22),
        ("12 AH headers, tcp/22", (Ext("ah", 16),) * 12, t22),
        ("hop-by-hop after destination options, tcp/22", (dst8, hbh), t22),
        ("no next header after hop-by-hop", (hbh, Ext("none")), Transport(proto=59)),
        ("destination options whose length runs past the packet, tcp/22", (Ext("dst", len_delta=20),), t22),
    ]
    for label, exts, l4 in six:
        k.append(Case(label, 6, ext=exts, l4=l4))
    k += [Case("IPv6 tiny first fragment (8 bytes of TCP), tcp/22", 6, l4=t22, pieces=split(8)),
          Case("IPv6 first fragment holds the TCP header, tcp/22", 6, l4=t22, pieces=split(24)),
          Case("IPv6 header chain split: TCP only in the 2nd fragment, tcp/22", 6, l4=t22,
               ext_frag=(Ext("dst", 16),), pieces=split(16)),
          Case("IPv6 later fragment alone, tcp/22", 6, l4=t22, pieces=split(24)[1:]),
          Case("IPv6 fragments, hop-by-hop first, tcp/80 from a dropped source", 6, blocked=True,
               ext=(hbh,), pieces=split(24)),
          Case("IPv6 under the IPv4 ethertype, tcp/22", 6, l4=t22, eth_type=ETH_IP)]
    # transport header lies
    k += [Case("TCP data offset 0, tcp/22", l4=replace(t22, doff=0)),
          Case("TCP data offset 15 beyond the packet, tcp/22", l4=replace(t22, doff=15)),
          Case("TCP cut to its ports, tcp/22", l4=replace(t22, cut=4)),
          Case("TCP cut to 12 bytes, tcp/22, IPv6", 6, l4=replace(t22, cut=12)),
          Case("TCP cut to 2 bytes, tcp/22", l4=replace(t22, cut=2)),
          Case("TCP with no flags, tcp/22", l4=replace(t22, flags=0)),
          Case("TCP with every flag, tcp/22", l4=replace(t22, flags=0xFF)),
          Case("UDP cut to its ports, udp/161", l4=replace(u161, cut=4)),
          Case("UDP length says 4, udp/161", l4=replace(u161, udp_len_delta=-28)),
          Case("UDP length says more than the packet, udp/161", l4=replace(u161, udp_len_delta=100)),
          Case("ICMP cut to its type, from a dropped source", l4=Transport(proto=ICMP, cut=1), blocked=True),
          Case("ICMPv6 echo cut to 4 bytes, from a dropped source", 6, l4=Transport(proto=ICMP6, icmp_type=128, cut=4),
               blocked=True)]
    return k


KNOWN_TRICKS: list[Case] = _known()


# --- hypothesis strategies -------------------------------------------------------------
#
# A generated case is a well-formed datagram aimed at what some policy refuses
# (tcp/22, udp/161, a dropped source) with one or two themes of lies on top;
# lies on every layer at once would mostly make frames no stack accepts.

TPIDS = st.sampled_from((TPID_Q, TPID_AD))
VIDS = st.sampled_from((0, 0, 0, 10, 20, 30, 99, 4095))
TCP_PORTS = st.sampled_from((22, 22, 22, 80, 0, 443))
UDP_PORTS = st.sampled_from((161, 161, 53, 0))
TCP_FLAGS = st.sampled_from((SYN, ACK, SYN | ACK, 0, 0xFF, 0x29, 0x03, 0x04))
OPTIONS = st.sampled_from((NOP4, NOP4 * 10, LSRR, SSRR, RECORD_ROUTE, TIMESTAMP, b"\x94\x04\x00\x00",
                           b"\x00" * 4, b"\xff\x00\x00\x00"))
THEMES = ("vlan", "header", "fragments", "transport", "length")


@st.composite
def vlan_stacks(draw) -> tuple[tuple[tuple[int, int], ...], str]:
    """1-6 tags: a guard device's own path with VID-0 tags around it, or any mix."""
    device = draw(st.sampled_from(list(GUARD_DEVICES)))
    if draw(st.booleans()):
        tags = GUARD_DEVICES[device][0] + tuple(draw(st.lists(st.tuples(TPIDS, st.just(0)), min_size=1, max_size=4)))
    else:
        tags = tuple(draw(st.lists(st.tuples(TPIDS, VIDS), min_size=1, max_size=6)))
    return tags, device


@st.composite
def transports(draw, family: int) -> Transport:
    proto = draw(st.sampled_from((TCP, TCP, TCP, UDP, UDP, ICMP if family == 4 else ICMP6, 47, 132)))
    return Transport(proto=proto, dport=draw(UDP_PORTS if proto == UDP else TCP_PORTS),
                     sport=draw(st.sampled_from((40000, 53, 80))), flags=draw(TCP_FLAGS),
                     icmp_type=draw(st.sampled_from((8, 0, 3) if family == 4 else (128, 129, 1))))


@st.composite
def transport_lies(draw, l4: Transport) -> Transport:
    return replace(l4, doff=draw(st.sampled_from((5, 0, 4, 6, 15))),
                   udp_len_delta=draw(st.sampled_from((0, -28, -4, 8, 100))),
                   cut=draw(st.sampled_from((None, 1, 2, 4, 8, 12, 19))))


@st.composite
def ext_chains(draw) -> tuple[Ext, ...]:
    """0-12 extension headers, mostly in an order the stack accepts (hop-by-hop
    first, routing with no segments left), sometimes not."""
    valid = st.sampled_from(("dst", "dst", "rt", "frag", "ah"))
    out = [Ext("hbh", draw(st.sampled_from((8, 16, 64))))] if draw(st.booleans()) else []
    for kind in draw(st.lists(valid, max_size=12 - len(out))):
        if kind == "dst":
            ext = Ext(kind, draw(st.sampled_from((8, 8, 16, 64, 256))))
        elif kind == "rt":
            ext = Ext(kind, draw(st.sampled_from((8, 24, 40))), rt_type=draw(st.sampled_from((0, 2))))
        elif kind == "ah":
            ext = Ext(kind, draw(st.sampled_from((16, 24, 32))))
        else:
            ext = Ext(kind)
        out.append(ext)
    if out and draw(st.integers(0, 3)) == 0:           # one thing the stack may refuse
        i = draw(st.integers(0, len(out) - 1))
        out[i] = draw(st.sampled_from((replace(out[i], len_delta=1), replace(out[i], len_delta=40), Ext("hbh"),
                                       Ext("rt", 24, rt_type=4), Ext("rt", 24, segments_left=1), Ext("none"))))
    return tuple(out)


@st.composite
def fragment_plans(draw, length: int) -> tuple[tuple[Piece, ...], bool]:
    """(pieces, whether some piece overwrites with the alternative transport)."""
    cuts = sorted(set(draw(st.lists(st.sampled_from([c for c in (8, 16, 24, 32, 40) if c < length]),
                                    min_size=1, max_size=3))))
    pieces = list(split(*cuts))
    overwrite = False
    for change in draw(st.lists(st.sampled_from(("reverse", "drop first", "drop last", "duplicate",
                                                 "overwrite 0", "overwrite 8", "other id")), max_size=2)):
        if change == "reverse":
            pieces.reverse()
        elif change == "drop first" and len(pieces) > 1:
            pieces.pop(0)
        elif change == "drop last" and len(pieces) > 1:
            pieces.pop()
        elif change == "duplicate":
            pieces.append(pieces[draw(st.integers(0, len(pieces) - 1))])
        elif change.startswith("overwrite"):
            start = int(change.split()[1])
            pieces.insert(draw(st.integers(0, len(pieces))), Piece(start, start + 16, True, alt=True))
            overwrite = True
        elif change == "other id":
            i = draw(st.integers(0, len(pieces) - 1))
            pieces[i] = replace(pieces[i], ident_delta=IDENTS)
    return tuple(pieces), overwrite


@st.composite
def cases(draw) -> Case:
    """One crafted case: a datagram some policy refuses, IPv6 ones often behind
    extension headers, with one or two themes of lies."""
    family = draw(st.sampled_from((4, 6)))
    l4 = draw(transports(family))
    case = Case("generated", family, l4=l4, blocked=draw(st.integers(0, 4)) == 0)
    if family == 6 and draw(st.booleans()):
        case = replace(case, ext=draw(ext_chains()))
    for theme in sorted(draw(st.sets(st.sampled_from(THEMES), min_size=1, max_size=2))):
        if theme == "vlan":
            vlans, device = draw(vlan_stacks())
            case = replace(case, vlans=vlans, device=device)
        elif theme == "header" and family == 4:
            case = replace(case, v4=V4(ihl=draw(st.sampled_from((None, None, 0, 4, 6, 15))), options=draw(OPTIONS),
                                       df=draw(st.booleans()), evil=draw(st.booleans())))
        elif theme == "header":
            case = replace(case, ext=draw(ext_chains()))
        elif theme == "transport":
            case = replace(case, l4=draw(transport_lies(l4)))
        elif theme == "fragments":
            length = len(case.l4.encode(bytes(4), bytes(4)))
            if family == 6 and draw(st.booleans()):
                case = replace(case, ext_frag=(Ext("dst", draw(st.sampled_from((8, 16, 24)))),))
                length += case.ext_frag[0].size
            if length > 8:
                pieces, overwrite = draw(fragment_plans(length))
                alt = replace(case.l4, dport=draw(TCP_PORTS), flags=draw(TCP_FLAGS)) if overwrite else None
                case = replace(case, pieces=pieces, alt=alt)
        else:
            lie = draw(st.sampled_from(("length", "length", "trim", "pad", "version", "ethertype")))
            if lie == "length":
                case = replace(case, length_delta=draw(st.sampled_from((-42, -40, -24, -20, -4, 4, 40))))
            elif lie == "trim":
                case = replace(case, trim=draw(st.sampled_from((1, 4, 20))))
            elif lie == "pad":
                case = replace(case, pad=draw(st.sampled_from((b"\x00" * 6, b"\x00\x16" * 10, b"\x00\x50" * 10))))
            elif lie == "version":
                case = replace(case, version=draw(st.sampled_from((0, 4, 6, 15))))
            else:
                case = replace(case, eth_type=ETH_IP6 if family == 4 else ETH_IP)
    # what the wire carries: longer chains of extension headers do not leave the sender
    assume(all(len(frame) <= WIRE_MAX for frame in case.frames(1)))
    return case


def batches(min_size: int = 10, max_size: int = 40):
    return st.lists(cases(), min_size=min_size, max_size=max_size)
