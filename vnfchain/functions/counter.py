"""counter: counts packets and bytes per IP protocol, then hands the packet on.

The worked example of a function type: one parameter, one map, its own counters.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from .base import FunctionType, MapSpec, Params

# Protocol numbers shown by name in `vnfchain stats`; the map is indexed by the
# IP protocol number, with NON_IP for frames that carry no IPv4/IPv6.
PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6"}
NON_IP = 255


class CounterParams(Params):
    verdict: Literal["continue", "drop", "pass", "tx"] = Field(
        "continue", description="what happens to the packet after it is counted")


class Counter(FunctionType):
    name = "counter"
    summary = "count packets and bytes per IP protocol, then continue (or drop/pass/tx)"
    Params = CounterParams

    def maps(self, params):
        return [MapSpec("by_proto", "percpu_array", 256,
                        "packets and bytes per IP protocol number (255: not IP)")]

    def template_vars(self, params, ctx):
        return {"verdict": f"VC_{params.verdict.upper()}", "non_ip": NON_IP}

    def read_counters(self, maps, params):
        out: dict[str, int] = {}
        for proto, rows in maps.items_percpu("by_proto", fields=("packets", "bytes")):
            if rows["packets"]:
                name = "non_ip" if proto == NON_IP else PROTO_NAMES.get(proto, f"proto_{proto}")
                out[f"{name}_packets"] = rows["packets"]
                out[f"{name}_bytes"] = rows["bytes"]
        return out
