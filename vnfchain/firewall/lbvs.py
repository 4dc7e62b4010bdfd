"""Rules compiled for matching in O(fields), not O(rules): the Linear Bit-Vector
Search of bpf-iptables.

Every field splits its value space into classes (address prefixes, port
intervals, protocol numbers, ...), and each class carries a bitmap with bit i
set when rule i accepts values of that class (a rule that does not constrain
the field accepts all of them). A packet's candidate rules are the AND of its
classes' bitmaps; the lowest set bit is the first matching rule.

``Classifier.match`` is the same algorithm in Python: the tests hold it equal to
``rules.first_match`` and the kernel program equal to both.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from .rules import CT_STATES, Packet, Rule

FIELDS = ("src", "dst", "proto", "sport", "dport", "flags", "icmp_type", "iif", "ct")
NOT_TCP = 256            # flags class of packets that are not TCP
NOT_ICMP = 256           # icmp class of packets that are not ICMP
NO_PORT = 0              # port class of packets without ports (not tcp/udp, later fragments)
CT_UNTRACKED = len(CT_STATES)


@dataclass(frozen=True)
class Classifier:
    nrules: int
    words: int                                   # bitmap width in 64-bit words
    src4: tuple[tuple[ipaddress.IPv4Network, int], ...]   # prefix -> bitmap, /0 included
    dst4: tuple[tuple[ipaddress.IPv4Network, int], ...]
    src6: tuple[tuple[ipaddress.IPv6Network, int], ...]
    dst6: tuple[tuple[ipaddress.IPv6Network, int], ...]
    proto: tuple[int, ...]                       # 256 bitmaps
    sport_class: tuple[int, ...]                 # 65536 port -> class (classes start at 1)
    sport_bits: tuple[int, ...]                  # class -> bitmap; [NO_PORT] for no ports
    dport_class: tuple[int, ...]
    dport_bits: tuple[int, ...]
    flags: tuple[int, ...]                       # 257: by TCP flags byte; [NOT_TCP]
    icmp: tuple[int, ...]                        # 257: by ICMP type; [NOT_ICMP]
    iif: dict[str, int]                          # interface name -> bitmap
    iif_other: int                               # any other interface
    ct: tuple[int, ...]                          # new, established, related, invalid, untracked
    used: frozenset[str] = field(default_factory=frozenset)   # fields some rule constrains

    def match(self, p: Packet) -> int | None:
        """The first matching rule's index, by ANDing the packet's class bitmaps."""
        fam = "4" if p.family == 4 else "6"
        bits = (1 << self.nrules) - 1
        bits &= _lpm(getattr(self, "src" + fam), p.src)
        bits &= _lpm(getattr(self, "dst" + fam), p.dst)
        bits &= self.proto[p.proto]
        bits &= self.sport_bits[NO_PORT if p.sport is None else self.sport_class[p.sport]]
        bits &= self.dport_bits[NO_PORT if p.dport is None else self.dport_class[p.dport]]
        bits &= self.flags[NOT_TCP if p.tcp_flags is None else p.tcp_flags]
        bits &= self.icmp[NOT_ICMP if p.icmp_type is None else p.icmp_type]
        bits &= self.iif.get(p.iif, self.iif_other)
        bits &= self.ct[CT_UNTRACKED if p.ct is None else CT_STATES.index(p.ct)]
        return (bits & -bits).bit_length() - 1 if bits else None


def _lpm(table, address: str) -> int:
    addr = ipaddress.ip_address(address)
    best = max((net for net, _ in table if addr in net), key=lambda n: n.prefixlen)
    return dict(table)[best]


def words_for(nrules: int) -> int:
    return max(1, -(-nrules // 64))


def compile_rules(rules: list[Rule], words: int | None = None) -> Classifier:
    n = len(rules)
    words = words or words_for(n)
    if n > words * 64:
        raise ValueError(f"{n} rules do not fit in {words} words")
    return Classifier(
        nrules=n, words=words,
        src4=_addresses(rules, "src", 4), dst4=_addresses(rules, "dst", 4),
        src6=_addresses(rules, "src", 6), dst6=_addresses(rules, "dst", 6),
        proto=_proto(rules),
        **_ports(rules, "sport"), **_ports(rules, "dport"),
        flags=_flags(rules), icmp=_icmp(rules), **_iif(rules), ct=_ct(rules),
        used=frozenset(f for f in FIELDS if any(getattr(r, f) is not None for r in rules)))


def _bits(rules: list[Rule], accepts) -> int:
    out = 0
    for i, r in enumerate(rules):
        if accepts(r):
            out |= 1 << i
    return out


# Each field below is built in one pass over the rules: the rules that do not
# constrain the field (the wildcard) go into every class, the others only into
# the classes they accept. 10,000 rules compile in about a second.

def _addresses(rules: list[Rule], field_name: str, family: int):
    """Each prefix any rule names (and /0) with the rules that accept every
    address the prefix holds: longest-prefix match then finds the right set."""
    wildcard, named = 0, {}
    for i, r in enumerate(rules):
        if r.family not in (None, family):
            continue
        nets = getattr(r, field_name)
        if nets is None:
            wildcard |= 1 << i
        for n in nets or ():
            if n.version == family:
                named[n] = named.get(n, 0) | 1 << i
    root = ipaddress.ip_network("0.0.0.0/0" if family == 4 else "::/0")
    table = []
    for p in sorted(set(named) | {root}, key=lambda n: (n.prefixlen, n.network_address)):
        bits = wildcard
        for length in range(p.prefixlen + 1):  # every prefix that contains p
            bits |= named.get(p.supernet(new_prefix=length), 0)
        table.append((p, bits))
    return tuple(table)


def _ports(rules: list[Rule], field_name: str) -> dict:
    """Ports split into the intervals between every range's ends; class 0 is
    'no ports at all', which only rules without a port condition accept."""
    cuts = {0, 65536}
    for r in rules:
        for lo, hi in getattr(r, field_name) or ():
            cuts.update((lo, hi + 1))
    edges = sorted(cuts)
    first_class = {lo: c for c, lo in enumerate(edges[:-1], start=1)}
    port_class = [0] * 65536
    for c, (lo, hi) in enumerate(zip(edges, edges[1:]), start=1):
        port_class[lo:hi] = [c] * (hi - lo)
    wildcard = _bits(rules, lambda r: getattr(r, field_name) is None)
    specific = [0] * len(edges)
    for i, r in enumerate(rules):
        for lo, hi in getattr(r, field_name) or ():
            for c in range(first_class[lo], port_class[hi] + 1):
                specific[c] |= 1 << i
    bits = [wildcard] + [wildcard | specific[c] for c in range(1, len(edges))]
    return {f"{field_name}_class": tuple(port_class), f"{field_name}_bits": tuple(bits)}


def _by_value(rules: list[Rule], get, accepts, size: int) -> list[int]:
    """Bitmaps for values 0..size-1 of a small field: wildcard | rules accepting v."""
    wildcard = _bits(rules, lambda r: get(r) is None)
    out = [wildcard] * size
    for i, r in enumerate(rules):
        if get(r) is not None:
            for v in range(size):
                if accepts(r, v):
                    out[v] |= 1 << i
    return out


def _proto(rules: list[Rule]) -> tuple[int, ...]:
    wildcard = _bits(rules, lambda r: r.proto is None)
    out = [wildcard] * 256
    for i, r in enumerate(rules):
        if r.proto is not None:
            out[r.proto] |= 1 << i
    return tuple(out)


def _flags(rules: list[Rule]) -> tuple[int, ...]:
    by_value = _by_value(rules, lambda r: r.flags, lambda r, v: v & r.flags[0] == r.flags[1], 256)
    return tuple(by_value + [_bits(rules, lambda r: r.flags is None)])


def _icmp(rules: list[Rule]) -> tuple[int, ...]:
    wildcard = _bits(rules, lambda r: r.icmp_type is None)
    by_type = [wildcard] * 256
    for i, r in enumerate(rules):
        if r.icmp_type is not None:
            by_type[r.icmp_type] |= 1 << i
    return tuple(by_type + [wildcard])


def _iif(rules: list[Rule]) -> dict:
    other = _bits(rules, lambda r: r.iif is None)
    named: dict[str, int] = {}
    for i, r in enumerate(rules):
        if r.iif is not None:
            named[r.iif] = named.get(r.iif, other) | 1 << i
    return {"iif": dict(sorted(named.items())), "iif_other": other}


def _ct(rules: list[Rule]) -> tuple[int, ...]:
    states = _by_value(rules, lambda r: r.ct, lambda r, v: CT_STATES[v] in r.ct, len(CT_STATES))
    return tuple(states + [_bits(rules, lambda r: r.ct is None)])
