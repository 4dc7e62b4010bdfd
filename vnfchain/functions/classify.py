"""classify: steers packets to a branch by IP protocol and destination port.

A rule ``{proto: tcp, dport: 80, label: web}`` sends matching packets to the
successor named by ``next: {web: ...}``; packets no rule matches continue to the
default successor. A rule without ``dport`` matches every port of its protocol;
a rule with a port wins over one without.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from .base import FunctionType, MapSpec, Params, headroom, replace_contents

PROTOS = {"icmp": 1, "tcp": 6, "udp": 17, "icmpv6": 58}


class ClassifyRule(Params):
    proto: Literal["tcp", "udp", "icmp", "icmpv6"] = Field(description="IP protocol")
    dport: int | None = Field(None, ge=1, le=65535, strict=True,  # `dport: true` is not port 1
                              description="destination port (tcp/udp only)")
    label: str = Field(pattern=r"^[a-z][a-z0-9_]{0,23}$", description="branch label to emit")

    @field_validator("dport")
    @classmethod
    def _port_needs_l4(cls, v, info):
        if v is not None and info.data.get("proto") in ("icmp", "icmpv6"):
            raise ValueError("dport applies to tcp and udp only; remove it from icmp rules")
        return v


class ClassifyParams(Params):
    rules: list[ClassifyRule] = Field(
        min_length=1, max_length=1024,
        description="list of {proto, dport?, label}; first exact match wins")


class Classify(FunctionType):
    name = "classify"
    summary = "branch by IP protocol and destination port (labels go to next: {label: fn})"
    Params = ClassifyParams

    def maps(self, params):
        return [MapSpec("rules", "hash", headroom(len(params.rules)),
                        "(protocol, destination port) -> label id")]

    def labels(self, params):
        return {r.label for r in params.rules}

    def populate(self, tables, params, ctx):
        table = tables["rules"]
        wanted = {}
        for rule in params.rules:  # the first rule wins on duplicates
            wanted.setdefault((PROTOS[rule.proto], _be16(rule.dport or 0)), ctx.label_ids[rule.label])
        replace_contents(table, [(table.Key(proto=p, dport=d), table.Leaf(label))
                                 for (p, d), label in wanted.items()])


def _be16(port: int) -> int:
    return ((port & 0xFF) << 8) | (port >> 8)
