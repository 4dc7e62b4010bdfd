"""classify: steers packets to a branch by IP protocol and destination port.

A rule ``{proto: tcp, dport: 80, label: web}`` sends matching packets to the
successor named by ``next: {web: ...}``; packets no rule matches continue to the
default successor. A rule without ``dport`` matches every port of its protocol;
a rule with a port wins over one without.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from ..contract import FunctionType, MapSpec, Params, headroom, replace_contents
from ..layout import BE16, U8, U32, Member, Struct

PROTOS = {"icmp": 1, "tcp": 6, "udp": 17, "icmpv6": 58}

KEY = Struct("key", "(IP protocol, destination port) of a rule; port 0 = any port", [
    Member("proto", U8),
    Member("pad", U8),
    Member("dport", BE16),
])


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
        return [MapSpec("rules", "hash", headroom(len(params.rules)), KEY, U32,
                        "(protocol, destination port) -> label id")]

    def labels(self, params):
        return {r.label for r in params.rules}

    def populate(self, tables, params, ctx):
        wanted = {}
        for rule in params.rules:  # the first rule wins on duplicates
            wanted.setdefault(KEY.pack({"proto": PROTOS[rule.proto], "dport": rule.dport or 0}),
                              U32.pack(ctx.label_ids[rule.label]))
        with tables.open("rules") as table:
            replace_contents(table, list(wanted.items()))
