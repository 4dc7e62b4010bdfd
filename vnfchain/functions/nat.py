"""nat: source NAT / masquerade and destination NAT / port forwarding (IPv4).

Packets from an ``snat`` network that the kernel's FIB sends out of the
``outside`` interface leave with the rule's address (``masquerade``: the
outside interface's own) and a port from its range; ICMP echo gets its
identifier translated. Packets arriving on ``outside`` for a ``dnat`` rule are
sent to the inside address and port. Replies are translated back, checksums
updated incrementally. The chain must be attached to the inside and outside
interfaces: direction comes from the ingress interface.

State is two pinned hash maps (the inside and the outside view of each flow),
with per-protocol timeouts. Expired flows are reclaimed when their packets
come back, and by a sweep: each new flow enters a ring of recent flows and
reclaims the expired ones it passes there. A full table drops new flows with the reason
``nat_table_full``; when no port of the range is free for a destination,
``nat_ports_exhausted``. A mapping whose halves disagree is never used. Later
IP fragments carry no ports, so those that would need source NAT are dropped
(``nat_fragment``) rather than leak the inside address; a port forward opens
only on a TCP SYN (or any UDP datagram).
"""
from __future__ import annotations

import ipaddress
import struct
import time
from typing import Literal

from pydantic import Field, field_validator

from ..errors import DeployError
from ..names import InterfaceName
from .base import FunctionType, MapSpec, Params, headroom, replace_contents


class SnatRule(Params):
    src: ipaddress.IPv4Network | list[ipaddress.IPv4Network] = Field(
        description="inside network(s) whose traffic is translated")
    to: Literal["masquerade"] | ipaddress.IPv4Address = Field(
        "masquerade", description="translated source address; masquerade: the outside interface's")
    ports: str = Field("20000-59999", description="range of translated source ports (and ICMP ids)")

    @field_validator("ports")
    @classmethod
    def _range(cls, v):
        lo, _, hi = v.partition("-")
        if not (lo.isdigit() and hi.isdigit() and 1 <= int(lo) <= int(hi) <= 65535):
            raise ValueError(f"ports '{v}' must be a range like 20000-59999 within 1-65535")
        return v

    def port_range(self) -> tuple[int, int]:
        lo, _, hi = self.ports.partition("-")
        return int(lo), int(hi)


class DnatRule(Params):
    proto: Literal["tcp", "udp"] = Field(description="protocol of the forwarded port")
    port: int = Field(ge=1, le=65535, description="port on the outside address")
    to: ipaddress.IPv4Address = Field(description="inside address it is forwarded to")
    to_port: int | None = Field(None, ge=1, le=65535, description="inside port (default: the same port)")
    address: ipaddress.IPv4Address | None = Field(
        None, description="outside address it listens on (default: the outside interface's)")


class NatTimeouts(Params):
    tcp_established: int = Field(3600, ge=1, description="seconds an idle established TCP mapping is kept")
    tcp_transitory: int = Field(120, ge=1, description="seconds for TCP not yet answered, or closing")
    udp: int = Field(30, ge=1, description="seconds an idle UDP mapping is kept")
    icmp: int = Field(30, ge=1, description="seconds an idle ICMP echo mapping is kept")


class NatParams(Params):
    outside: InterfaceName = Field(description="the interface facing the outside (in the chain's netns)")
    snat: list[SnatRule] = Field([], description="source NAT: [{src, to, ports}]")
    dnat: list[DnatRule] = Field([], description="port forwards: [{proto, port, to, to_port, address}]")
    timeouts: NatTimeouts = Field(NatTimeouts(), description="idle timeouts, in seconds")
    max_flows: int = Field(65536, ge=16, le=4_194_304, description="flows the table holds; more are dropped")


PROTOS = {"tcp": 6, "udp": 17, "icmp": 1}
TUPLE = struct.Struct("<4s4s2s2sB3x")        # struct nat_tuple, fields in network order
MAPPING = struct.Struct("<Q4s2sBx")         # struct nat_mapping
STATES = {0: "new", 1: "established", 2: "closing"}


class Nat(FunctionType):
    name = "nat"
    summary = "SNAT/masquerade and DNAT/port forwarding with per-flow state (IPv4 TCP, UDP, ICMP echo)"
    Params = NatParams
    reasons = ("nat_table_full", "nat_ports_exhausted", "nat_fragment")

    def maps(self, params):
        return [
            MapSpec("cfg", "array", 1, "outside ifindex"),
            MapSpec("snat", "lpm_trie", headroom(sum(len(_nets(r)) for r in params.snat) + 1, 16),
                    "inside network -> address and port range"),
            MapSpec("dnat", "hash", headroom(len(params.dnat) + 1, 16), "outside address:port -> inside"),
            MapSpec("out", "hash", params.max_flows, "flows by their inside view"),
            MapSpec("in", "hash", params.max_flows, "flows by their outside view"),
            MapSpec("ring", "array", 2 * params.max_flows,
                    "recent flows, swept for expired ones as new ones come (twice the table: half is always free)"),
            MapSpec("cursor", "array", 1, "next ring slot"),
        ]

    def template_vars(self, params, ctx):
        return {"timeouts": params.timeouts}

    def preflight(self, params, ctx):
        self._outside(params, ctx)
        self._outside_address(params, ctx)

    def _outside(self, params, ctx) -> int:
        outside = ctx.resolve_ifindex(params.outside)
        if not outside:
            raise DeployError(f"function '{ctx.function}': outside interface '{params.outside}' does not "
                              f"exist in {_where(ctx)}; fix 'outside:' or the chain's attach list")
        return outside

    def populate(self, tables, params, ctx):
        outside = self._outside(params, ctx)
        address = self._outside_address(params, ctx)
        cfg = tables["cfg"]
        value = cfg[cfg.Key(0)]
        value.outside_ifindex = outside
        cfg[cfg.Key(0)] = value
        snat = tables["snat"]
        wanted = []
        for rule in params.snat:
            to = address if rule.to == "masquerade" else rule.to
            lo, hi = rule.port_range()
            for net in _nets(rule):
                key = snat.Key(prefixlen=net.prefixlen, addr=_be32(net.network_address))
                wanted.append((key, snat.Leaf(to=_be32(to), port_lo=lo, port_hi=hi)))
        replace_contents(snat, wanted)
        dnat = tables["dnat"]
        replace_contents(dnat, [
            (dnat.Key(addr=_be32(rule.address or address), port=_be16(rule.port), proto=PROTOS[rule.proto]),
             dnat.Leaf(to=_be32(rule.to), to_port=_be16(rule.to_port or rule.port)))
            for rule in params.dnat])

    def _outside_address(self, params, ctx):
        needs = any(r.to == "masquerade" for r in params.snat) or any(r.address is None for r in params.dnat)
        if not needs:
            return None
        found = ctx.resolve_ipv4(params.outside) if ctx.resolve_ipv4 else []
        if not found:
            raise DeployError(f"function '{ctx.function}': masquerade needs an IPv4 address on "
                              f"'{params.outside}' in {_where(ctx)}; add one or give 'to:' an address")
        return ipaddress.IPv4Address(found[0])

    def read_counters(self, maps, params):
        return {"translations": len(self.state_rows(maps, params)[1])}

    def state_rows(self, maps, params):
        """Live translations: expired ones (reclaimed lazily by the data path) are left out."""
        now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)   # bpf_ktime_get_ns's clock
        rows = []
        with maps.open("out") as out:
            for key in out.keys():
                value = out.lookup(key)
                if not value:
                    continue
                saddr, daddr, sport, dport, proto = TUPLE.unpack(key)
                last_seen, addr, port, state = MAPPING.unpack(value[0])
                idle = (now - last_seen) / 1e9
                if idle > _timeout(params.timeouts, proto, state):
                    continue
                name = {6: "tcp", 17: "udp", 1: "icmp"}.get(proto, str(proto))
                rows.append([name, _endpoint(saddr, sport), _endpoint(addr, port), _endpoint(daddr, dport),
                             STATES.get(state, str(state)), f"{idle:.0f} s"])
        rows.sort()
        return ["proto", "inside", "translated", "remote", "state", "idle"], rows


def _timeout(t: NatTimeouts, proto: int, state: int) -> int:
    """The data path's timeout for a mapping (nat.bpf.c.j2: *_timeout)."""
    if proto == 6:
        return t.tcp_established if state == 1 else t.tcp_transitory
    return t.udp if proto == 17 else t.icmp


def _nets(rule: SnatRule) -> list[ipaddress.IPv4Network]:
    return rule.src if isinstance(rule.src, list) else [rule.src]


def _be32(address) -> int:
    return int.from_bytes(ipaddress.IPv4Address(address).packed, "little")


def _be16(port: int) -> int:
    return ((port & 0xFF) << 8) | (port >> 8)


def _endpoint(addr: bytes, port: bytes) -> str:
    p = int.from_bytes(port, "big")
    return f"{ipaddress.IPv4Address(addr)}:{p}" if p else str(ipaddress.IPv4Address(addr))


def _where(ctx) -> str:
    return f"network namespace '{ctx.netns}'" if ctx.netns else "the root network namespace"
