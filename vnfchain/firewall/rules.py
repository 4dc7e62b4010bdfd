"""Firewall rules: the YAML model, its validation, and the reference matcher.

A rule matches when every field it names matches (fields it omits match
anything); the first matching rule decides. ``first_match`` is the plain
definition of that, used as the oracle for the compiled classifier and the
kernel program.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal, Union

from pydantic import Field, ValidationInfo, field_serializer, field_validator, model_validator

from ..contract import Params
from ..names import InterfaceName

PROTO_NAMES = {"icmp": 1, "tcp": 6, "udp": 17, "icmpv6": 58}
PORT_PROTOS = (6, 17)
ICMP_PROTOS = (1, 58)
TCP_FLAGS = {"fin": 0x01, "syn": 0x02, "rst": 0x04, "psh": 0x08, "ack": 0x10, "urg": 0x20,
             "ece": 0x40, "cwr": 0x80}
ICMP_TYPES = {"echo-reply": 0, "destination-unreachable": 3, "redirect": 5, "echo-request": 8,
              "time-exceeded": 11, "parameter-problem": 12}
ICMPV6_TYPES = {"destination-unreachable": 1, "packet-too-big": 2, "time-exceeded": 3,
                "parameter-problem": 4, "echo-request": 128, "echo-reply": 129}
CT_STATES = ("new", "established", "related", "invalid")

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
PortSpec = Union[int, str]


def _as_list(value):
    if value == []:
        # first_match would read [] as "any", the classifier as "none": neither is obvious
        raise ValueError("an empty list matches no packet; leave the key out to match any")
    return value if isinstance(value, list) else [value]


def parse_ports(value) -> tuple[tuple[int, int], ...]:
    """80, "8000-8080" or a list of those -> ((lo, hi), ...)."""
    out = []
    for item in _as_list(value):
        if isinstance(item, bool):
            raise ValueError(f"{item!r} is not a port")
        if isinstance(item, int):
            lo = hi = item
        elif isinstance(item, str) and item.strip().isdigit():
            lo = hi = int(item)
        elif isinstance(item, str) and "-" in item:
            a, _, b = item.partition("-")
            if not (a.strip().isdigit() and b.strip().isdigit()):
                raise ValueError(f"'{item}' is not a port range; write it as 8000-8080")
            lo, hi = int(a), int(b)
        else:
            raise ValueError(f"{item!r} is not a port; write 80, \"8000-8080\" or a list of them")
        if not (0 <= lo <= hi <= 65535):
            raise ValueError(f"port range {lo}-{hi} must lie within 0-65535, low end first")
        out.append((lo, hi))
    return tuple(out)


def parse_flags(text: str) -> tuple[int, int]:
    """"syn,!ack" -> (mask, value): SYN must be set, ACK must be clear."""
    mask = value = 0
    for part in text.replace(" ", "").split(","):
        negate = part.startswith("!")
        name = part.lstrip("!").lower()
        if name not in TCP_FLAGS:
            raise ValueError(f"unknown TCP flag '{name}'; flags are {', '.join(TCP_FLAGS)} "
                             f"(prefix ! for must-be-clear, e.g. \"syn,!ack\")")
        mask |= TCP_FLAGS[name]
        if not negate:
            value |= TCP_FLAGS[name]
    return mask, value


class Rule(Params):
    action: Literal["allow", "drop", "goto"] = Field(description="what a match does")
    label: str | None = Field(None, pattern=r"^[a-z][a-z0-9_]{0,23}$",
                              description="branch label for action: goto (next: {label: fn})")
    src: Network | list[Network] | None = Field(None, description="source CIDR(s), IPv4 or IPv6")
    dst: Network | list[Network] | None = Field(None, description="destination CIDR(s)")
    proto: str | int | None = Field(None, description="tcp, udp, icmp, icmpv6 or a protocol number")
    sport: PortSpec | list[PortSpec] | None = Field(None, description="source port(s): 80, \"1024-65535\", [53, 123]")
    dport: PortSpec | list[PortSpec] | None = Field(None, description="destination port(s)")
    flags: str | None = Field(None, description="TCP flags, \"syn,!ack\": SYN set and ACK clear")
    icmp_type: str | int | None = Field(None, description="ICMP/ICMPv6 type, by name or number")
    iif: InterfaceName | None = Field(None, description="ingress interface name")
    ct: str | list[str] | None = Field(None, description="conntrack state(s): new, established, "
                                                          "related, invalid (needs conntrack: true)")
    comment: str = Field("", description="free text, shown in stats")

    @field_validator("src", "dst", mode="before")
    @classmethod
    def _cidrs(cls, v):
        if v is None:
            return v
        out = []
        for item in _as_list(v):
            try:
                out.append(ipaddress.ip_network(str(item), strict=False))
            except ValueError:
                raise ValueError(f"'{item}' is not a CIDR; write 198.18.0.0/24 or 2001:db8::/32") from None
        return out

    @field_validator("proto", mode="before")  # before: pydantic would read true as 1
    @classmethod
    def _proto(cls, v):
        if v is None:
            return v
        if isinstance(v, str) and v.lower() in PROTO_NAMES:
            return PROTO_NAMES[v.lower()]
        if isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255:
            return v
        raise ValueError(f"unknown protocol {v!r}; use tcp, udp, icmp, icmpv6 or a number 0-255")

    @field_validator("sport", "dport", mode="before")
    @classmethod
    def _no_bool_ports(cls, v):
        # pydantic would read true as port 1 before parse_ports could refuse it
        if v is not None and any(isinstance(item, bool) for item in _as_list(v)):
            raise ValueError(f"{v!r} is not a port; write 80, \"8000-8080\" or a list of them")
        return v

    @field_validator("sport", "dport")
    @classmethod
    def _ports(cls, v):
        return None if v is None else parse_ports(v)

    @field_validator("flags")
    @classmethod
    def _flags(cls, v):
        return None if v is None else parse_flags(v)

    @field_validator("ct")
    @classmethod
    def _ct(cls, v):
        if v is None:
            return v
        states = tuple(_as_list(v))
        for s in states:
            if s not in CT_STATES:
                raise ValueError(f"unknown conntrack state '{s}'; states are {', '.join(CT_STATES)}")
        return states

    @field_validator("icmp_type")
    @classmethod
    def _icmp_type(cls, v, info: ValidationInfo):
        if v is None:
            return v
        proto = info.data.get("proto")
        if proto not in ICMP_PROTOS:
            raise ValueError("icmp_type needs proto: icmp or icmpv6")
        names = ICMP_TYPES if proto == 1 else ICMPV6_TYPES
        if isinstance(v, str) and not v.isdigit():
            if v not in names:
                raise ValueError(f"unknown ICMP type '{v}'; known: {', '.join(names)} or a number")
            return names[v]
        number = int(v)
        if not 0 <= number <= 255:
            raise ValueError("icmp_type must be 0-255")
        return number

    # the YAML spelling back, so that a chain round-trips through to_yaml()
    @field_serializer("src", "dst")
    def _cidrs_out(self, v):
        return None if v is None else [str(n) for n in v]

    @field_serializer("sport", "dport")
    def _ports_out(self, v):
        return None if v is None else [lo if lo == hi else f"{lo}-{hi}" for lo, hi in v]

    @field_serializer("ct")
    def _ct_out(self, v):
        return None if v is None else list(v)

    @field_serializer("flags")
    def _flags_out(self, v):
        if v is None:
            return None
        mask, value = v
        return ",".join(("" if value & bit else "!") + name for name, bit in TCP_FLAGS.items() if mask & bit)

    @model_validator(mode="after")
    def _consistent(self):
        if (self.action == "goto") != (self.label is not None):
            raise ValueError("action: goto needs label: NAME, and only goto takes a label")
        families = {n.version for n in (self.src or []) + (self.dst or [])}
        if len(families) > 1:
            raise ValueError("src and dst mix IPv4 and IPv6, so the rule could never match; split it")
        if (self.sport or self.dport) and self.proto not in PORT_PROTOS:
            raise ValueError("sport/dport need proto: tcp or udp")
        if self.flags and self.proto != 6:
            raise ValueError("flags need proto: tcp")
        if self.proto in ICMP_PROTOS and families:
            wanted = 4 if self.proto == 1 else 6
            if families != {wanted}:
                raise ValueError(f"proto {'icmp' if wanted == 4 else 'icmpv6'} with IPv{families.pop()} "
                                 f"addresses never matches")
        return self

    @property
    def family(self) -> int | None:
        nets = (self.src or []) + (self.dst or [])
        if nets:
            return nets[0].version
        if self.proto == 1:
            return 4
        if self.proto == 58:
            return 6
        return None


@dataclass(frozen=True)
class Packet:
    """The fields a rule can look at, as the firewall sees them."""

    family: int                      # 4 or 6
    src: str
    dst: str
    proto: int
    sport: int | None = None         # None: not tcp/udp, or a later fragment
    dport: int | None = None
    tcp_flags: int | None = None     # None unless tcp
    icmp_type: int | None = None     # None unless icmp/icmpv6
    iif: str | None = None
    ct: str | None = None            # None when conntrack is off


def matches(rule: Rule, p: Packet) -> bool:
    fam = rule.family
    if fam is not None and fam != p.family:
        return False
    if rule.src and not any(ipaddress.ip_address(p.src) in n for n in rule.src):
        return False
    if rule.dst and not any(ipaddress.ip_address(p.dst) in n for n in rule.dst):
        return False
    if rule.proto is not None and rule.proto != p.proto:
        return False
    for spec, port in ((rule.sport, p.sport), (rule.dport, p.dport)):
        if spec and (port is None or not any(lo <= port <= hi for lo, hi in spec)):
            return False
    if rule.flags:
        mask, value = rule.flags
        if p.tcp_flags is None or p.tcp_flags & mask != value:
            return False
    if rule.icmp_type is not None and p.icmp_type != rule.icmp_type:
        return False
    if rule.iif is not None and p.iif != rule.iif:
        return False
    if rule.ct and p.ct not in rule.ct:
        return False
    return True


def first_match(rules: list[Rule], p: Packet) -> int | None:
    """Index of the first rule that matches ``p``, or None (the default applies)."""
    return next((i for i, r in enumerate(rules) if matches(r, p)), None)


def shadowed(rules: list[Rule]) -> list[tuple[int, int]]:
    """(earlier, later) pairs where the earlier rule matches everything the later
    one does, so the later one can never fire."""
    out = []
    for j, later in enumerate(rules):
        for i in range(j):
            if covers(rules[i], later):
                out.append((i, j))
                break
    return out


def covers(a: Rule, b: Rule) -> bool:
    """Does rule a match every packet rule b matches?"""
    if a.family is not None and a.family != b.family:
        return False
    for field in ("src", "dst"):
        na, nb = getattr(a, field), getattr(b, field)
        if na and (not nb or not all(any(y.version == x.version and y.subnet_of(x) for x in na) for y in nb)):
            return False
    if a.proto is not None and a.proto != b.proto:
        return False
    for field in ("sport", "dport"):
        pa, pb = getattr(a, field), getattr(b, field)
        if pa and (not pb or not all(any(alo <= lo and hi <= ahi for alo, ahi in pa) for lo, hi in pb)):
            return False
    if a.flags:
        if not b.flags:
            return False
        (ma, va), (mb, vb) = a.flags, b.flags
        if ma & ~mb or (vb & ma) != va:
            return False
    if a.icmp_type is not None and a.icmp_type != b.icmp_type:
        return False
    if a.iif is not None and a.iif != b.iif:
        return False
    if a.ct and (not b.ct or not set(b.ct) <= set(a.ct)):
        return False
    return True
