"""nat: source NAT / masquerade and destination NAT / port forwarding (IPv4).

Packets from an ``snat`` network that the kernel's FIB sends out of the
``outside`` interface (asked with their protocol, ports, TOS and ingress
interface, as policy routing reads them; a fwmark netfilter sets later is
not seen) leave with the rule's address (``masquerade``: the
outside interface's own) and a port from its range; ICMP echo gets its
identifier translated. Packets arriving on ``outside`` for a ``dnat`` rule are
sent to the inside address and port. Replies are translated back, and so are
ICMP errors about a flow (the quoted packet too: addresses, ports, the quoted
IP, UDP and TCP checksums when the error carries them); checksums are
updated incrementally. The chain must be attached to the inside and outside
interfaces: direction comes from the ingress interface.

Nothing leaves with an inside address it did not translate: what an ``snat``
network sends out of ``outside`` that the NAT cannot translate (protocols
other than TCP, UDP and ICMP; ICMP other than echo requests and errors about
a known flow) is dropped as ``nat_untranslatable``. ``untranslatable: pass``
lets it leave as it is, with the inside address: only for outside networks
that route the inside addresses back (then the NAT is not what hides them).
Later IP fragments carry no ports, so those that would need source NAT are
dropped (``nat_fragment``) in any case.

State. A new flow starts *unconfirmed*. Each side (flows opened from the
inside, flows opened through a port forward) holds ``max_unconfirmed`` of
them; a new flow evicts its side's oldest (counted as ``evicted_unconfirmed``;
its port is free again), as nf_conntrack's early drop. A flow is *confirmed* and moves to the main table
(``max_flows``) when its opener answers the reply: for TCP the handshake's
ACK, which must acknowledge the responder's SYN-ACK (a spoofer that never saw
it cannot), for UDP and ICMP echo the opener's next packet after a reply. So a
flood of spoofed SYNs or datagrams to a port forward only churns the
port forward's unconfirmed flows: confirmed flows keep their mappings, and new
flows from the inside are not touched. An unconfirmed flow idles out after
``timeouts.unconfirmed`` (or its protocol's timeout, if shorter). A UDP flow
whose opener never sends again after the first answer (a one-shot DNS query;
a stream the opener never acknowledges) stays unconfirmed: it works, but is
evicted once ``max_unconfirmed`` newer flows from its side came after it. When the main
table is full of live flows, a confirmed flow stays unconfirmed and is counted
(``table_full``); no flow is dropped for room. A blind spoofer can still
confirm UDP flows through a port forward by sending twice.

A connection closes (``tcp_transitory``) on the inside end's FIN or RST, or
on a RST from the outside at the sequence number the inside end acknowledged
last or where the outside end's data ends (followed from those acks, within
64 KiB): a blind RST or FIN cannot make an idle connection expire early.

Expired confirmed flows are reclaimed when their packets come back, and by a
sweep: each flow entering the main table enters a ring of recent flows and
reclaims the expired ones it passes there. When no port of the range is free
for a destination, new flows are dropped (``nat_ports_exhausted``). A mapping
whose halves disagree is never used. A port forward opens only on a TCP SYN
(or any UDP datagram).

A change of the rules, the outside interface or the timeouts is a map update
(nothing compiled, flows kept); max_flows and max_unconfirmed change the
program and make the flow tables anew.
"""
from __future__ import annotations

import ipaddress
import time
from typing import Literal

from pydantic import Field, field_validator

from ..contract import FunctionType, MapSpec, Params, headroom, max_unconfirmed_field, replace_contents, unconfirmed_room
from ..errors import DeployError
from ..layout import BE16, BE32, U8, U16, U32, U64, Member, Struct
from ..names import InterfaceName


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
    tcp_transitory: int = Field(120, ge=1, description="seconds for closing TCP (the inside end's FIN or RST, "
                                                       "or a RST from outside at the sequence number the inside "
                                                       "end acknowledged); caps unconfirmed TCP too")
    udp: int = Field(30, ge=1, description="seconds an idle UDP mapping is kept")
    icmp: int = Field(30, ge=1, description="seconds an idle ICMP echo mapping is kept")
    unconfirmed: int = Field(30, ge=1, description="seconds an idle unconfirmed flow (half-open TCP, "
                                                   "unanswered UDP) is kept, if shorter than its protocol's")


class NatParams(Params):
    outside: InterfaceName = Field(description="the interface facing the outside (in the chain's netns)")
    snat: list[SnatRule] = Field([], description="source NAT: [{src, to, ports}]")
    dnat: list[DnatRule] = Field([], description="port forwards: [{proto, port, to, to_port, address}]")
    timeouts: NatTimeouts = Field(NatTimeouts(), description="idle timeouts, in seconds")
    max_flows: int = Field(65536, ge=16, le=4_194_304,
                           description="confirmed flows the table holds; when full, new flows stay unconfirmed")
    max_unconfirmed: int | None = max_unconfirmed_field(
        "unconfirmed flows each side (inside, port forwards) holds")
    untranslatable: Literal["drop", "pass"] = Field(
        "drop", description="what an snat network sends out that cannot be translated (GRE, ESP, SCTP, ICMP "
                            "but echo and errors): drop, or pass with its inside address")


PROTOS = {"tcp": 6, "udp": 17, "icmp": 1}
STATES = {0: "unconfirmed", 1: "established", 2: "closing", 3: "replied"}
NS = 1_000_000_000

TUPLE = Struct("tuple", "one side's view of a flow", [
    Member("saddr", BE32),
    Member("daddr", BE32),
    Member("sport", BE16),
    Member("dport", BE16),
    Member("proto", U8),
    Member("pad", U8, count=3),
])
MAPPING = Struct("mapping", "where the flow's other view points: the NAT address and port for `out`, the "
                            "inside address and port for `in`", [
    Member("last_seen", U64),
    Member("addr", BE32),
    Member("port", BE16),
    Member("state", U8, "NEW, ESTABLISHED, CLOSING or REPLIED"),
    Member("seq_known", U8, "TCP: seq holds a sequence number the outside end may RST at"),
    Member("seq", U32, "host order; inside view: the ack the inside end sent last; outside view: where the "
                       "outside end's segments end, as far as the inside end's acks vouch for them"),
    Member("pad", U32),
])
PENDING = Struct("pending", "an unconfirmed flow's view: its mapping first (code reading mappings reads both "
                            "tables alike), what confirming it takes, its ring slot", [
    Member("m", MAPPING),
    Member("isn", U32, "TCP: the responder's SYN-ACK sequence number, host order"),
    Member("slot", U32),
    Member("from", U8, "FROM_INSIDE or FROM_OUTSIDE"),
    Member("pad", U8, count=7),
])
PROTO_SLOTS = 32    # protocol number & (PROTO_SLOTS - 1) tells TCP, UDP and ICMP apart
TIMEOUTS = Struct("timeouts", "idle timeouts, ns, by protocol number & PROTO_MASK", [
    Member("confirmed", U64, "confirmed flows; TCP's slot: not established (closing)", count=PROTO_SLOTS),
    Member("unconfirmed", U64, "the protocol's timeout, capped by timeouts.unconfirmed", count=PROTO_SLOTS),
    Member("tcp_established", U64),
])
CFG = Struct("cfg", "the outside interface, the untranslatable policy and the timeouts", [
    Member("outside_ifindex", U32),
    Member("pass_untranslatable", U32, "1: let what cannot be translated leave as it is"),
    Member("timeouts", TIMEOUTS),
])
SNAT_KEY = Struct("snat_key", "an inside network", [
    Member("prefixlen", U32),
    Member("addr", BE32),
])
SNAT = Struct("snat", "what an inside network is translated to", [
    Member("to", BE32),
    Member("port_lo", U16, "host order"),
    Member("port_hi", U16),
])
DNAT_KEY = Struct("dnat_key", "a port forward's outside address and port", [
    Member("addr", BE32),
    Member("port", BE16, "0 for ICMP"),
    Member("proto", U8),
    Member("pad", U8),
])
DNAT = Struct("dnat", "where a port forward goes", [
    Member("to", BE32),
    Member("to_port", BE16),
    Member("pad", U16),
])
# the function's own counters, in the order of its counts map (rendered into C as <fn>_C_<NAME>)
COUNTS = ("new_snat_flows", "new_port_forward_flows", "confirmed_flows", "evicted_unconfirmed", "table_full")
# where flows live (by their inside views): confirmed, unconfirmed
TABLES = ("out", "new_out")


class Nat(FunctionType):
    name = "nat"
    summary = "SNAT/masquerade and DNAT/port forwarding with per-flow state (IPv4 TCP, UDP, ICMP echo)"
    Params = NatParams
    reasons = ("nat_table_full", "nat_ports_exhausted", "nat_fragment", "nat_untranslatable")

    def maps(self, params):
        unconfirmed = unconfirmed_room(params)
        # both sides' rings, and room for flows other CPUs are inserting while a ring evicts
        pending = 2 * unconfirmed + 128
        return [
            MapSpec("cfg", "array", 1, U32, CFG, "outside ifindex, untranslatable policy, timeouts"),
            MapSpec("snat", "lpm_trie", headroom(sum(len(_nets(r)) for r in params.snat) + 1, 16), SNAT_KEY, SNAT,
                    "inside network -> address and port range"),
            MapSpec("dnat", "hash", headroom(len(params.dnat) + 1, 16), DNAT_KEY, DNAT,
                    "outside address:port -> inside"),
            MapSpec("out", "hash", params.max_flows, TUPLE, MAPPING, "confirmed flows by their inside view"),
            MapSpec("in", "hash", params.max_flows, TUPLE, MAPPING, "confirmed flows by their outside view"),
            MapSpec("new_out", "hash", pending, TUPLE, PENDING, "unconfirmed flows by their inside view"),
            MapSpec("new_in", "hash", pending, TUPLE, PENDING, "unconfirmed flows by their outside view"),
            MapSpec("newring", "array", 2 * unconfirmed, U32, TUPLE,
                    "unconfirmed flows opened from each side in arrival order: the next slot's flow is evicted"),
            MapSpec("newcursor", "array", 2, U32, U64, "next slot of each side's unconfirmed ring"),
            MapSpec("ring", "array", 2 * params.max_flows, U32, TUPLE,
                    "recent confirmed flows, swept for expired ones as new ones come (twice the table: "
                    "half is always free)"),
            MapSpec("cursor", "array", 1, U32, U64, "next ring slot"),
            MapSpec("counts", "percpu_array", 8, U32, U64, "function counters"),
        ]

    def template_vars(self, params, ctx):
        return {"max_unconfirmed": unconfirmed_room(params), "counts": COUNTS, "proto_mask": PROTO_SLOTS - 1}

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
        with tables.open("cfg") as cfg:
            cfg.update(U32.pack(0), CFG.pack({
                "outside_ifindex": outside, "pass_untranslatable": int(params.untranslatable == "pass"),
                "timeouts": _timeouts(params.timeouts)}))
        wanted = []
        for rule in params.snat:
            to = address if rule.to == "masquerade" else rule.to
            lo, hi = rule.port_range()
            for net in _nets(rule):
                wanted.append((SNAT_KEY.pack({"prefixlen": net.prefixlen, "addr": int(net.network_address)}),
                               SNAT.pack({"to": int(to), "port_lo": lo, "port_hi": hi})))
        with tables.open("snat") as snat:
            replace_contents(snat, wanted)
        with tables.open("dnat") as dnat:
            replace_contents(dnat, [
                (DNAT_KEY.pack({"addr": int(rule.address or address), "port": rule.port, "proto": PROTOS[rule.proto]}),
                 DNAT.pack({"to": int(rule.to), "to_port": rule.to_port or rule.port}))
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
        rows = self.state_rows(maps, params)[1]
        out = {"translations": len(rows),
               "unconfirmed": sum(r[4] in (STATES[0], STATES[3]) for r in rows)}
        with maps.open("counts") as counts:
            for i, name in enumerate(COUNTS):
                out[name] = sum(counts.sum_u64(i.to_bytes(4, "little")))
        return out

    def state_rows(self, maps, params):
        """Live translations, confirmed and unconfirmed: expired ones (reclaimed
        lazily by the data path) are left out."""
        now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)   # bpf_ktime_get_ns's clock
        rows = []
        for table in TABLES:
            with maps.open(table) as views:
                for key in views.keys():
                    value = views.lookup(key)
                    if not value:
                        continue
                    k = TUPLE.unpack(key)
                    m = MAPPING.unpack(value[0][:MAPPING.size])   # a pending view starts with its mapping
                    idle = (now - m["last_seen"]) / NS
                    if idle > _timeout(params.timeouts, k["proto"], m["state"], unconfirmed=table != "out"):
                        continue
                    name = {6: "tcp", 17: "udp", 1: "icmp"}.get(k["proto"], str(k["proto"]))
                    rows.append([name, _endpoint(k["saddr"], k["sport"]), _endpoint(m["addr"], m["port"]),
                                 _endpoint(k["daddr"], k["dport"]), STATES.get(m["state"], str(m["state"])),
                                 f"{idle:.0f} s"])
        rows.sort()
        return ["proto", "inside", "translated", "remote", "state", "idle"], rows


def _timeouts(t: NatTimeouts) -> dict:
    """The data path's timeouts (struct timeouts), ns: a slot per protocol
    number, the slots no protocol the NAT translates uses holding ICMP's."""
    by_slot = {unconfirmed: [_timeout(t, PROTOS["icmp"], 0, unconfirmed) * NS] * PROTO_SLOTS
               for unconfirmed in (False, True)}
    for number in PROTOS.values():
        for unconfirmed, slots in by_slot.items():
            slots[number % PROTO_SLOTS] = _timeout(t, number, 0, unconfirmed) * NS
    return {"confirmed": by_slot[False], "unconfirmed": by_slot[True], "tcp_established": t.tcp_established * NS}


def _timeout(t: NatTimeouts, proto: int, state: int, unconfirmed: bool = False) -> int:
    """The data path's timeout for a mapping (nat.bpf.c.j2: *_timeout)."""
    if unconfirmed:
        return min(t.unconfirmed, t.tcp_transitory if proto == 6 else _timeout(t, proto, state))
    if proto == 6:
        return t.tcp_established if state == 1 else t.tcp_transitory
    return t.udp if proto == 17 else t.icmp


def _nets(rule: SnatRule) -> list[ipaddress.IPv4Network]:
    return rule.src if isinstance(rule.src, list) else [rule.src]


def _endpoint(addr: int, port: int) -> str:
    return f"{ipaddress.IPv4Address(addr)}:{port}" if port else str(ipaddress.IPv4Address(addr))


def _where(ctx) -> str:
    return f"network namespace '{ctx.netns}'" if ctx.netns else "the root network namespace"
