"""Random firewall rulesets and packets for the differential tests.

One generator serves both hypothesis and plain seeded randomness: the
generators take a ``pick`` (``RandomPick`` around ``random.Random``, or
``DrawPick`` around hypothesis' ``draw``), so small rulesets shrink rule by
rule under hypothesis while 1,000-rule ones come from a seed (hypothesis'
buffer is too small for them)::

    rules = random_rules(RandomPick(seed), 1000, families=(4, 6))
    packets = [random_packet(RandomPick(seed), rules, families=(4,)) for _ in range(500)]

    @given(rules=rule_lists(max_size=40))        # a hypothesis strategy

Packets are ``Wire(packet, frag)``: the ``rules.Packet`` a firewall sees, and
how it travels (whole, first fragment, later fragment; a later fragment has no
ports, TCP flags or ICMP type). Packets mostly aim at a rule (every field it
names satisfied), sometimes with one field knocked off, so that near misses and
range edges are common; the rest are random.

Addresses: IPv4 only from 198.18.0.0/15 (RFC 2544 benchmarking range), never from
``RESERVED`` (the oracle bed's own links); IPv6 from 2001:db8::/32, which
only rules and pure-Python tests use, never the wire.
"""
from __future__ import annotations

import ipaddress
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

from hypothesis import strategies as st

from vnfchain.firewall.rules import CT_STATES, ICMP_TYPES, ICMPV6_TYPES, TCP_FLAGS, Packet, Rule

V4 = ipaddress.ip_network("198.18.0.0/15")
V6 = ipaddress.ip_network("2001:db8::/32")
#: the oracle bed's link subnets: never a packet's address
RESERVED = ipaddress.ip_network("198.19.255.0/24")
LABELS = ("web", "dns", "slow")
HOT_PORTS = (0, 1, 22, 53, 79, 80, 81, 443, 1023, 1024, 8000, 8080, 65534, 65535)
OTHER_PROTOS = (0, 47, 132, 255)
#: next-header values that the kernel (and our parser) walk past in IPv6
IPV6_EXTENSION_HEADERS = (0, 43, 44, 51, 60)
Frag = Literal["whole", "first", "later"]


# --- where randomness comes from ----------------------------------------------------

class RandomPick:
    """Choices from a seeded ``random.Random``."""

    def __init__(self, seed: int | random.Random):
        self.rnd = seed if isinstance(seed, random.Random) else random.Random(seed)

    def integer(self, lo: int, hi: int) -> int:
        return self.rnd.randint(lo, hi)

    def choice(self, items: Sequence):
        return items[self.rnd.randrange(len(items))]

    def chance(self, p: float) -> bool:
        return self.rnd.random() < p


class DrawPick:
    """Choices drawn by hypothesis; every choice shrinks toward the plainest value
    (first item, low number, feature absent)."""

    def __init__(self, draw):
        self.draw = draw

    def integer(self, lo: int, hi: int) -> int:
        return self.draw(st.integers(lo, hi))

    def choice(self, items: Sequence):
        return self.draw(st.sampled_from(list(items)))

    def chance(self, p: float) -> bool:
        return self.draw(st.integers(0, 999)) >= 1000 - round(p * 1000)


# --- rules ----------------------------------------------------------------------------

def _address(pick, family: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address with a bias to a few hot values, so that prefixes nest and overlap."""
    if family == 4:
        while True:
            second = pick.choice((18, 19))
            third = pick.choice((0, 1, 2, 128, 254)) if pick.chance(0.7) else pick.integer(0, 255)
            fourth = pick.choice((0, 1, 7, 8, 127, 128, 255)) if pick.chance(0.6) else pick.integer(0, 255)
            addr = ipaddress.IPv4Address(f"198.{second}.{third}.{fourth}")
            if addr not in RESERVED:
                return addr
    word = pick.choice((0, 1, 0xff)) if pick.chance(0.7) else pick.integer(0, 0xffff)
    low = pick.choice((0, 1, 0xff)) if pick.chance(0.7) else pick.integer(0, 0xffff)
    return ipaddress.IPv6Address(int(V6.network_address) | (word << 64) | low)


def _network(pick, family: int) -> str:
    addr = _address(pick, family)
    if family == 4:
        length = pick.choice((24, 16, 15, 20, 23, 25, 28, 30, 31, 32)) if pick.chance(0.8) else pick.integer(15, 32)
    else:
        length = pick.choice((64, 32, 48, 63, 65, 112, 127, 128)) if pick.chance(0.8) else pick.integer(32, 128)
    return f"{addr}/{length}"           # host bits set on purpose: the model masks them


def _networks(pick, family: int):
    if pick.chance(0.6):
        return _network(pick, family)
    return [_network(pick, family) for _ in range(pick.integer(1, 4))]


def _port(pick) -> int:
    return pick.choice(HOT_PORTS) if pick.chance(0.6) else pick.integer(0, 65535)


def _ports(pick):
    def one():
        lo = _port(pick)
        if pick.chance(0.4):
            hi = min(65535, lo + pick.choice((1, 10, 100, 1000, 30000)))
            return f"{lo}-{hi}"
        return lo
    if pick.chance(0.6):
        return one()
    return [one() for _ in range(pick.integer(1, 4))]


def _flags(pick) -> str:
    names = list(TCP_FLAGS)
    chosen = []
    for _ in range(pick.integer(1, 3)):
        name = pick.choice(names)
        if name not in chosen:
            chosen.append(name)
    return ",".join(("!" if pick.chance(0.4) else "") + name for name in chosen)


def random_rule(pick, *, families=(4, 6), ifaces=("fw-in0", "fw-in1"), with_ct: bool = False,
                specific: float = 0.0) -> Rule:
    """One valid rule, as a user would write it in YAML (names, ranges, lists).
    With chance ``specific`` it is a narrow one (long prefixes, tcp/udp with a
    destination port), as most of a long real ACL is: broad rules early in a
    long list would leave nothing for the rules after them."""
    spec: dict = {"action": pick.choice(("allow", "drop", "goto"))}
    if spec["action"] == "goto":
        spec["label"] = pick.choice(LABELS)
    if specific and pick.chance(specific):
        return _specific_rule(pick, spec, families)
    family = pick.choice(tuple(families) + (None,)) if pick.chance(0.7) else None
    protos = [None, "tcp", "udp", 6, 17, "TCP"]
    if family in (None, 4) and 4 in families:
        protos.append("icmp")
    if family in (None, 6) and 6 in families:
        protos.append("icmpv6")
    protos += list(OTHER_PROTOS)
    proto = pick.choice(protos) if pick.chance(0.75) else None
    if proto is not None:
        spec["proto"] = proto
    number = Rule(action="allow", proto=proto).proto if proto is not None else None
    if family is not None:
        for side in ("src", "dst"):
            if pick.chance(0.6):
                spec[side] = _networks(pick, family)
        if "src" not in spec and "dst" not in spec:
            spec["src"] = _networks(pick, family)
    if number in (6, 17):
        for side in ("sport", "dport"):
            if pick.chance(0.45 if side == "sport" else 0.7):
                spec[side] = _ports(pick)
    if number == 6 and pick.chance(0.4):
        spec["flags"] = _flags(pick)
    if number in (1, 58) and pick.chance(0.6):
        names = ICMP_TYPES if number == 1 else ICMPV6_TYPES
        spec["icmp_type"] = pick.choice(list(names)) if pick.chance(0.5) else pick.integer(0, 255)
    if pick.chance(0.15):
        spec["iif"] = pick.choice(tuple(ifaces) + ("other0",))
    if with_ct and pick.chance(0.25):
        states = [pick.choice(CT_STATES) for _ in range(pick.integer(1, 2))]
        spec["ct"] = states[0] if len(states) == 1 else sorted(set(states))
    if set(spec) <= {"action", "label"} and not pick.chance(0.1):
        spec["proto"] = pick.choice(("udp", "tcp") + OTHER_PROTOS)   # match-alls are rare: they end the list
    return Rule.model_validate(spec)


def _specific_rule(pick, spec: dict, families) -> Rule:
    family = pick.choice(tuple(families))
    shortest = 24 if family == 4 else 64
    longest = 32 if family == 4 else 128
    for side in ("src", "dst"):
        spec[side] = f"{_address(pick, family)}/{pick.integer(shortest, longest)}"
    spec["proto"] = pick.choice(("tcp", "udp"))
    spec["dport"] = _ports(pick)
    return Rule.model_validate(spec)


def random_rules(pick, n: int, **kw) -> list[Rule]:
    return [random_rule(pick, **kw) for _ in range(n)]


@st.composite
def rule_lists(draw, min_size: int = 1, max_size: int = 30, **kw) -> list[Rule]:
    """Hypothesis strategy: a list of rules (shrinks by dropping and simplifying rules)."""
    pick = DrawPick(draw)
    return [random_rule(pick, **kw) for _ in range(draw(st.integers(min_size, max_size)))]


# --- packets --------------------------------------------------------------------------

@dataclass(frozen=True)
class Wire:
    packet: Packet
    frag: Frag = "whole"

    def __str__(self) -> str:
        p = self.packet
        fields = [f"{p.src} -> {p.dst}", f"proto {p.proto}"]
        fields += [f"{k} {getattr(p, k)}" for k in ("sport", "dport", "icmp_type", "iif", "ct")
                   if getattr(p, k) is not None]
        if p.tcp_flags is not None:
            fields.append(f"flags {p.tcp_flags:#04x}")
        if self.frag != "whole":
            fields.append(f"{self.frag} fragment")
        return ", ".join(fields)


def _inside(pick, nets, family: int):
    nets = [n for n in nets if n.version == family]
    for _ in range(8):
        net = pick.choice(nets)
        # an edge of the prefix half the time: off-by-one bugs live there
        if pick.chance(0.5):
            offset = pick.choice((0, net.num_addresses - 1))
        else:
            offset = pick.integer(0, net.num_addresses - 1)
        addr = net.network_address + offset
        if addr not in RESERVED:
            return addr
    return _address(pick, family)


class _Edges:
    """Prefixes and port-range ends of a ruleset, gathered once per ruleset."""

    def __init__(self, rules: list[Rule]):
        self.nets = {(field, fam): [n for r in rules for n in (getattr(r, field) or []) if n.version == fam]
                     for field in ("src", "dst") for fam in (4, 6)}
        self.ports = {field: [e for r in rules for lo, hi in (getattr(r, field) or ())
                              for e in (lo - 1, lo, hi, hi + 1) if 0 <= e <= 65535]
                      for field in ("sport", "dport")}


def _near(pick, edges: _Edges, field: str, family: int):
    """An address just outside or on the edge of some rule's prefix, or a random one."""
    nets = edges.nets[field, family]
    if nets and pick.chance(0.6):
        net = pick.choice(nets)
        space = V4 if family == 4 else V6
        candidates = [net.network_address - 1, net.broadcast_address + 1, net.network_address,
                      net.broadcast_address]
        addr = pick.choice(candidates)
        if addr in space and addr not in RESERVED:
            return addr
    return _address(pick, family)


def _port_near(pick, edges: _Edges, field: str) -> int:
    ends = edges.ports[field]
    if ends and pick.chance(0.6):
        return pick.choice(ends)
    return _port(pick)


def random_packet(pick, rules: list[Rule], *, families=(4, 6), ifaces=("fw-in0", "fw-in1"),
                  with_ct: bool = False, fragments: bool = True, edges: _Edges | None = None) -> Wire:
    """A packet aimed at a random rule (with one field possibly knocked off) or
    near the rules' edges; ``ifaces`` are the ingress interfaces it may use."""
    edges = edges or _Edges(rules)
    aimed = [r for r in rules if r.family in (None,) + tuple(families)]
    target = pick.choice(aimed) if aimed and pick.chance(0.75) else None
    broken = pick.choice((None, None, "family", "src", "dst", "proto", "sport", "dport", "flags",
                          "icmp", "iif", "ct", "frag"))

    def aim(field: str) -> bool:
        return target is not None and broken != field

    family = target.family if aim("family") and target.family is not None else pick.choice(tuple(families))

    def address(field: str):
        nets = getattr(target, field) if target is not None else None
        if aim(field) and nets and any(n.version == family for n in nets):
            return _inside(pick, nets, family)
        return _near(pick, edges, field, family)

    src, dst = address("src"), address("dst")
    if aim("proto") and target.proto is not None and target.family in (None, family):
        proto = target.proto
    else:
        proto = pick.choice((6, 17, 1 if family == 4 else 58, 6, 17) + OTHER_PROTOS + (58 if family == 4 else 1,))
    if family == 6 and proto in IPV6_EXTENSION_HEADERS:
        proto = 255     # in IPv6 these numbers name extension headers, never the transport
    frag: Frag = "whole"
    if fragments and (not aim("frag") or pick.chance(0.1)) and pick.chance(0.3):
        frag = pick.choice(("first", "later"))
    has_l4 = frag != "later"

    def port(field: str):
        if not (has_l4 and proto in (6, 17)):
            return None
        spec = getattr(target, field) if target is not None else None
        if aim(field) and spec:
            lo, hi = pick.choice(spec)
            return pick.choice((lo, hi)) if pick.chance(0.5) else pick.integer(lo, hi)
        return _port_near(pick, edges, field)

    sport, dport = port("sport"), port("dport")
    tcp_flags = None
    if has_l4 and proto == 6:
        tcp_flags = pick.integer(0, 255)
        if aim("flags") and target.flags:
            mask, value = target.flags
            tcp_flags = (tcp_flags & ~mask) | value
    icmp_type = None
    if has_l4 and (family, proto) in ((4, 1), (6, 58)):
        if aim("icmp") and target.icmp_type is not None:
            icmp_type = target.icmp_type
        else:
            icmp_type = pick.choice((0, 3, 8, 11, 128, 129)) if pick.chance(0.6) else pick.integer(0, 255)
    if aim("iif") and target.iif in ifaces:
        iif = target.iif
    else:
        iif = pick.choice(tuple(ifaces))
    ct = None
    if with_ct:
        if aim("ct") and target.ct:
            ct = pick.choice(target.ct)
        else:
            ct = pick.choice(CT_STATES + (None,))
    return Wire(Packet(family=family, src=str(src), dst=str(dst), proto=proto, sport=sport, dport=dport,
                       tcp_flags=tcp_flags, icmp_type=icmp_type, iif=iif, ct=ct), frag)


def random_packets(pick, rules: list[Rule], n: int, **kw) -> list[Wire]:
    edges = _Edges(rules)
    return [random_packet(pick, rules, edges=edges, **kw) for _ in range(n)]


@st.composite
def packet_lists(draw, rules: list[Rule], min_size: int = 1, max_size: int = 30, **kw) -> list[Wire]:
    pick, edges = DrawPick(draw), _Edges(rules)
    return [random_packet(pick, rules, edges=edges, **kw) for _ in range(draw(st.integers(min_size, max_size)))]


# --- verdicts -------------------------------------------------------------------------

def verdict(rules: list[Rule], index: int | None, default: str) -> str:
    """What the firewall does with a packet whose first matching rule is ``index``:
    ``allow``, ``drop`` or ``goto:LABEL``."""
    if index is None:
        return default
    rule = rules[index]
    return f"goto:{rule.label}" if rule.action == "goto" else rule.action


def describe(rules: list[Rule], index: int | None) -> str:
    if index is None:
        return "default"
    return f"rule {index} {rules[index].model_dump(exclude_defaults=True)}"


def as_later_fragment(w: Wire) -> Wire:
    """The same packet as a later fragment: what the firewall can no longer see."""
    return Wire(replace(w.packet, sport=None, dport=None, tcp_flags=None, icmp_type=None), "later")


def nft_counters(listing: str) -> dict[str, int]:
    """Packets counted per rule comment ("rule 12", "default") in the output of
    ``nft -j list chain ...`` of a ruleset made with ``nft.ruleset(counters=True)``."""
    out: dict[str, int] = {}
    for item in json.loads(listing)["nftables"]:
        rule = item.get("rule")
        if rule:
            counted = [e["counter"]["packets"] for e in rule["expr"] if "counter" in e]
            comment = rule.get("comment", "")      # one rule may be several nft rules
            out[comment] = out.get(comment, 0) + counted[0]
    return out
