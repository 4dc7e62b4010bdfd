"""counter: counts packets and bytes per IP protocol, then hands the packet on.

The worked example of a function type: one parameter, two maps declared with
their layouts, its own counters. The verdict lives in a map, so changing it is
a config change: a map update, nothing compiled.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..chain.verdicts import VERDICTS
from ..contract import FunctionType, MapSpec, Params
from ..layout import S32, U32, U64, Member, Struct

# Protocol numbers shown by name in `vnfchain stats`; the map is indexed by the
# IP protocol number, with NON_IP for frames that carry no IPv4/IPv6.
PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6"}
NON_IP = 255

TALLY = Struct("tally", "what one protocol number brought, per CPU", [
    Member("packets", U64),
    Member("bytes", U64),
])
CFG = Struct("cfg", "what the packet gets after it is counted", [
    Member("verdict", S32, "VC_CONTINUE, VC_DROP, VC_PASS or VC_TX"),
])


class CounterParams(Params):
    verdict: Literal["continue", "drop", "pass", "tx"] = Field(
        "continue", description="what happens to the packet after it is counted")


class Counter(FunctionType):
    name = "counter"
    summary = "count packets and bytes per IP protocol, then continue (or drop/pass/tx)"
    Params = CounterParams

    def maps(self, params):
        return [MapSpec("cfg", "array", 1, U32, CFG, "the verdict"),
                MapSpec("by_proto", "percpu_array", 256, U32, TALLY,
                        f"packets and bytes per IP protocol number ({NON_IP}: not IP)")]

    def template_vars(self, params, ctx):
        return {"non_ip": NON_IP}

    def populate(self, tables, params, ctx):
        with tables.open("cfg") as cfg:
            cfg.update(U32.pack(0), CFG.pack({"verdict": VERDICTS.index(params.verdict)}))

    def read_counters(self, maps, params):
        out: dict[str, int] = {}
        for proto, rows in maps.items_percpu("by_proto", fields=("packets", "bytes")):
            if rows["packets"]:
                name = "non_ip" if proto == NON_IP else PROTO_NAMES.get(proto, f"proto_{proto}")
                out[f"{name}_packets"] = rows["packets"]
                out[f"{name}_bytes"] = rows["bytes"]
        return out
