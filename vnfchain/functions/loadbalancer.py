"""loadbalancer: L4 load balancing of virtual IPs by Maglev consistent hashing.

A service is a virtual IP (IPv4 or IPv6), port and protocol (TCP or UDP) with
weighted backends of the same family. A new flow goes to the backend that the service's Maglev table
(``table_size`` slots, prime; built in Python, vnfchain/lb/maglev.py) holds at
the flow's hash; the connection table (an LRU of ``max_flows`` flows) then
keeps the flow on that backend, across changes of the backend set, while the
backend lives and the flow is not idle longer than ``idle_timeout``.

Modes, per service:

- ``nat`` (default): the destination becomes the backend's address and port,
  checksums updated; the backend's replies must come back through the chain
  (route the client networks via the chain's host), where the VIP and service
  port are put back as their source. Follow the function with ``forward``
  (or let the chain's ``exit: pass`` hand packets to the kernel's routing).
- ``dsr``: direct server return at L2: only the Ethernet addresses change (the
  backend's MAC comes from the kernel's neighbour table, through the FIB) and
  the packet is sent towards the backend, which must hold the VIP on a
  loopback (with ``arp_ignore``) and answers the client directly. A backend
  with no neighbour entry yet gets nothing (``lb_no_neighbor``): ping it once.
- ``ipip``: the packet is wrapped in an outer header to the backend, as
  Katran does: IPv4 in IPv4 (protocol 4) from ``encap_src``, IPv6 in IPv6
  (next header 41, the flow's hash in the flow label) from ``encap_src6``;
  the backend decapsulates.

New flows wait *unconfirmed* beside the connection table until the client
answers: in ``nat`` mode its ACK must acknowledge the backend's SYN-ACK (a
flow picked up mid-stream: its next packet after a non-RST answer; UDP: after
a reply), in ``dsr`` and ``ipip`` modes, which see no replies, its next packet
(TCP: an ACK without SYN). ``max_unconfirmed`` of them are held, the oldest
evicted for a new one (``evicted_unconfirmed``), each idling out after
``unconfirmed_timeout``: a flood of spoofed SYNs to a VIP never pushes an
established flow out of the connection table (where, after a backend change,
it would be hashed again onto another backend). ``table_hits`` counts packets
of known flows, confirmed or not. In ``dsr``/``ipip`` mode a blind spoofer
that sends a SYN and then an ACK confirms its flow; a UDP flow whose client
sends once stays unconfirmed. Every TCP or UDP packet not to a VIP costs one
more lookup (the unconfirmed flows' reply table) when a nat-mode service exists.

Live changes to backends, weights, drains, modes, ``encap_src``/
``encap_src6``/``icmp_echo`` and the timeouts (``idle_timeout``,
``unconfirmed_timeout``) are map updates (nothing is compiled): a new
Maglev table is written into the idle half of the service's table and
switched in with one map update. ``drain: true`` takes a backend out of the
table (no new flows) while its flows continue; removing a backend moves its
flows, others stay. A change that fails half-way writes the running config
back. Edits that compile (the program is replaced live, flows stay on their
backends): ``table_size``, ``max_unconfirmed``, and outgrowing the room the maps
were made with (services: 4, 8, 16 ...; backends in all: 16, 32, 64 ...) —
then a new set of config maps is made for the new program, and per-backend
counters start again. ``max_flows`` makes a new connection table: every flow
is scheduled again (Maglev gives most the same backend; flows on a backend
whose table share changed since they started are moved).

Memory: the Maglev tables take 2 x (service room) x ``table_size`` x 4 bytes
(4 services at 65537: 2 MB); the connection table ``max_flows`` x ~90 bytes
and the nat reply table twice that; the unconfirmed flows ``max_unconfirmed``
x ~150 bytes and their reply table ~80 bytes a flow.

ipip specifics: the outer header adds 20 (IPv6: 40) bytes, so mind the MTU
towards the backends; a backend without a neighbour entry gets the
encapsulated packet through the kernel stack, which resolves it; VLAN-tagged
frames are not encapsulated (``lb_encap_failed``). ICMP errors about a VIP's
flow (e.g. "packet too big") are not passed to the backends.

Policies: echo requests to a VIP (ICMP and ICMPv6) are answered by the chain
(``icmp_echo``); other ICMP to a VIP passes untouched; IP fragments to a VIP are
dropped (``lb_fragment``: a later fragment has no ports to find its flow by;
for IPv6, a packet whose first extension header is a fragment header); IPv4
options are kept (headers are found by their length); IPv6 extension headers
are not walked (a packet with one is not balanced). Traffic to a VIP port with
no service, and all non-VIP traffic, continues untouched. A service whose
backends are all drained drops new flows (``lb_no_backend``).
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal

from pydantic import Field, field_validator, model_validator

from ..contract import FunctionType, MapSpec, Params, headroom, max_unconfirmed_field, unconfirmed_room, write_array
from ..layout import BE16, BE32, U8, U16, U32, U64, Member, Struct
from ..lb import maglev

PROTOS = {"tcp": 6, "udp": 17}
MODES = {"nat": 0, "dsr": 1, "ipip": 2}
ACTIVE, DRAINING = 1, 2
ECHO = 1
NS = 1_000_000_000

# addresses are 16 bytes, IPv4 in the first 4 (as in struct vc_meta), family 4 or 6 beside them
VIP = Struct("vip", "a virtual IP", [
    Member("addr", BE32, count=4),
    Member("family", U8, "4 or 6"),
    Member("pad", U8, count=3),
])
SVC_KEY = Struct("svc_key", "a service: VIP, port, protocol", [
    Member("vip", BE32, count=4),
    Member("port", BE16),
    Member("proto", U8),
    Member("family", U8),
])
SVC = Struct("svc", "a service's table and mode", [
    Member("id", U32, "index of its two ring halves and of its counters"),
    Member("version", U8, "the live half of its ring"),
    Member("mode", U8, "NAT, DSR or IPIP"),
    Member("pad", U16),
])
BACKEND = Struct("backend", "a backend of a service", [
    Member("addr", BE32, "of the service's family", count=4),
    Member("port", BE16, "nat mode: destination port at the backend"),
    Member("flags", U8, "ACTIVE or DRAINING; 0: gone"),
    Member("pad", U8),
    Member("svc", U32, "the service it serves"),
])
TUPLE = Struct("tuple", "a flow as the client sent it, and a nat-mode reply as the backend sends it", [
    Member("saddr", BE32, count=4),
    Member("daddr", BE32, count=4),
    Member("sport", BE16),
    Member("dport", BE16),
    Member("proto", U8),
    Member("family", U8),
    Member("pad", U8, count=2),
])
FLOW = Struct("flow", "a flow's backend: its id, and who that is (an id can change when the config maps "
                      "are made anew, or be given to another backend later)", [
    Member("last_seen", U64),
    Member("backend", U32),
    Member("port", BE16),
    Member("pad", U16),
    Member("addr", BE32, count=4),
])
BE_KEY = Struct("be_key", "who a backend is, to find its id again", [
    Member("svc", SVC_KEY),
    Member("addr", BE32, count=4),
    Member("port", BE16),
    Member("pad", U16),
])
PENDING = Struct("pending", "an unconfirmed flow: its backend, what confirming it takes, its ring slot", [
    Member("flow", FLOW),
    Member("isn", U32, "the backend's SYN-ACK sequence number, host order"),
    Member("slot", U32),
    Member("state", U8, "P_*"),
    Member("syn", U8, "opened by a TCP SYN: only the handshake confirms it"),
    Member("pad", U8, count=6),
])
REV = Struct("rev", "what a nat-mode reply's source becomes", [
    Member("vip", BE32, count=4),
    Member("port", BE16),
    Member("pad", U16),
])
CFG = Struct("cfg", "settings of all services", [
    Member("encap_src", BE32, "outer source address of ipip (IPv4)"),
    Member("has_nat", U32, "any nat-mode service: replies need looking up"),
    Member("encap_src6", BE32, "... and of IPv6 in IPv6", count=4),
    Member("idle_ns", U64, "how long an idle flow keeps its backend"),
    Member("unconfirmed_ns", U64, "... and an idle unconfirmed one"),
])
BSTATS = Struct("bstats", "what a backend got", [
    Member("packets", U64),
    Member("bytes", U64),
    Member("flows", U64),
])
# the function's own counters, in the order of its counts map (rendered into C as <fn>_C_<NAME>)
COUNTS = ("new_flows", "table_hits", "moved_flows", "replies", "echo_replies", "confirmed_flows",
          "evicted_unconfirmed")


Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class Backend(Params):
    ip: Address = Field(description="backend address (the service's family)")
    port: int | None = Field(None, ge=1, le=65535,
                             description="nat mode: port at the backend (default: the service port)")
    weight: int = Field(1, ge=1, le=1000,
                        description="share of new flows relative to the other backends, 1-1000 (0: use drain)")
    drain: bool = Field(False, description="take no new flows; existing ones continue")


class Service(Params):
    vip: Address = Field(description="virtual IP clients connect to (IPv4 or IPv6)")
    port: int = Field(ge=1, le=65535, description="service port on the VIP")
    proto: Literal["tcp", "udp"] = Field("tcp", description="tcp or udp")
    mode: Literal["nat", "dsr", "ipip"] = Field("nat", description="nat, dsr (L2 MAC rewrite) or ipip")
    name: str | None = Field(None, max_length=40,
                             description="shown in stats, up to 40 characters (default VIP:port/proto)")
    backends: list[Backend] = Field(min_length=1, description="[{ip, port, weight, drain}]")

    @model_validator(mode="after")
    def _check(self):
        seen = set()
        for b in self.backends:
            if b.ip.version != self.vip.version:
                raise ValueError(f"backend {b.ip} is IPv{b.ip.version} but VIP {self.vip} is "
                                 f"IPv{self.vip.version}; a service's backends must be of its family")
            if self.mode != "nat" and b.port not in (None, self.port):
                raise ValueError(f"backend {b.ip}: mode {self.mode} cannot change the port "
                                 f"(the packet reaches the backend as sent); drop 'port:' or use mode nat")
            ident = (b.ip, b.port or self.port)
            if ident in seen:
                raise ValueError(f"backend {_endpoint(b.ip, ident[1])} is listed twice")
            seen.add(ident)
        return self

    @property
    def label(self) -> str:
        return self.name or f"{_endpoint(self.vip, self.port)}/{self.proto}"

    def key_fields(self) -> dict:
        return {"vip": _addr16(self.vip), "port": self.port, "proto": PROTOS[self.proto], "family": self.vip.version}

    def key(self) -> bytes:
        return SVC_KEY.pack(self.key_fields())


class LbParams(Params):
    services: list[Service] = Field(min_length=1, description="[{vip, port, proto, mode, name, backends}]")
    table_size: int = Field(maglev.DEFAULT_SIZE, ge=7, le=1_000_003,
                            description="Maglev table slots per service: a prime, 7-1,000,003 (default 65537)")
    max_flows: int = Field(65536, ge=16, le=4_194_304,
                           description="connection-table size, 16-4,194,304 (LRU: the least recent "
                                       "flow makes room)")
    idle_timeout: int = Field(300, ge=1, le=31_536_000,
                              description="seconds a flow keeps its backend while idle (up to a year)")
    max_unconfirmed: int | None = max_unconfirmed_field(
        "unconfirmed flows (half-open TCP, unanswered UDP) held apart from the connection table")
    unconfirmed_timeout: int = Field(30, ge=1, le=31_536_000,
                                     description="seconds an idle unconfirmed flow keeps its backend "
                                                 "(at most idle_timeout)")
    encap_src: ipaddress.IPv4Address | None = Field(
        None, description="outer source address of IPv4 ipip services (required by them)")
    encap_src6: ipaddress.IPv6Address | None = Field(
        None, description="outer source address of IPv6 ipip services (required by them)")
    icmp_echo: bool = Field(True, description="answer echo requests (ping) to the VIPs")

    @field_validator("table_size")
    @classmethod
    def _prime(cls, v):
        if not maglev.is_prime(v):
            raise ValueError(f"table_size {v} is not prime; Maglev needs a prime such as 65537, "
                             f"{_next_prime(v)} or 251")
        return v

    @model_validator(mode="after")
    def _check(self):
        keys = [(s.vip, s.port, s.proto) for s in self.services]
        for i, k in enumerate(keys):
            if k in keys[:i]:
                raise ValueError(f"service {_endpoint(k[0], k[1])}/{k[2]} is defined twice")
        ipip = {s.vip.version for s in self.services if s.mode == "ipip"}
        if 4 in ipip and self.encap_src is None:
            raise ValueError("IPv4 ipip services need encap_src: the outer source address, e.g. the "
                             "address of the interface towards the backends")
        if 6 in ipip and self.encap_src6 is None:
            raise ValueError("IPv6 ipip services need encap_src6: the outer source address, e.g. the "
                             "address of the interface towards the backends")
        return self


class LoadBalancer(FunctionType):
    name = "loadbalancer"
    summary = "L4 load balancer: Maglev hashing, weights, affinity, drain; nat, dsr and ipip modes (IPv4, IPv6)"
    Params = LbParams
    reasons = ("lb_no_backend", "lb_fragment", "lb_no_neighbor", "lb_encap_failed", "no_route")

    def maps(self, params):
        svcs, backends = _caps(params)
        return [
            MapSpec("cfg", "array", 1, U32, CFG, "encap sources, whether replies need translating, timeouts"),
            MapSpec("vips", "hash", svcs, VIP, U32, "virtual IPs -> flags"),
            MapSpec("svcs", "hash", svcs, SVC_KEY, SVC, "VIP, port, protocol -> service id, live table half, mode"),
            MapSpec("ring", "array", 2 * svcs * params.table_size, U32, U32,
                    "two Maglev tables per service: the live one and the next"),
            MapSpec("backends", "array", backends, U32, BACKEND, "backend id -> address, port, state, service"),
            MapSpec("beidx", "hash", backends, BE_KEY, U32, "service and backend address -> backend id"),
            MapSpec("bstats", "percpu_array", backends, U32, BSTATS, "packets, bytes, new flows per backend"),
            MapSpec("flows", "lru_hash", params.max_flows, TUPLE, FLOW, "connection table: client flow -> backend"),
            MapSpec("rev", "lru_hash", 2 * params.max_flows, TUPLE, REV, "nat mode: backend reply -> VIP and port"),
            # room for flows other CPUs are inserting while the ring evicts
            MapSpec("pending", "hash", unconfirmed_room(params) + 64, TUPLE, PENDING, "unconfirmed flows -> backend"),
            MapSpec("pending_rev", "hash", unconfirmed_room(params) + 64, TUPLE, REV,
                    "nat mode: an unconfirmed flow's backend reply -> VIP and port"),
            MapSpec("newring", "array", unconfirmed_room(params), U32, TUPLE,
                    "unconfirmed flows in arrival order: the next slot's flow is evicted"),
            MapSpec("newcursor", "array", 1, U32, U64, "next slot of the unconfirmed ring"),
            MapSpec("counts", "percpu_array", 8, U32, U64, "function counters"),
        ]

    def template_vars(self, params, ctx):
        svcs, backends = _caps(params)
        return {"table_size": params.table_size, "max_unconfirmed": unconfirmed_room(params), "counts": COUNTS,
                "shape": f"{svcs}x{backends}x{params.table_size}"}

    def populate(self, tables, params, ctx):
        with tables.open("cfg") as cfg:
            # first: a new ipip or nat service must find its settings in place
            cfg.update(U32.pack(0), CFG.pack({
                "encap_src": int(params.encap_src or 0), "has_nat": int(any(s.mode == "nat" for s in params.services)),
                "encap_src6": (params.encap_src6 or ipaddress.IPv6Address(0)).packed,
                "idle_ns": params.idle_timeout * NS,
                "unconfirmed_ns": min(params.unconfirmed_timeout, params.idle_timeout) * NS}))
        with tables.open("svcs") as svcs, tables.open("backends") as backends, tables.open("beidx") as beidx, \
                tables.open("vips") as vips, tables.open("ring") as ring:
            _Writer(params, svcs, backends, beidx, vips, ring).write()

    def read_counters(self, maps, params):
        out = {}
        with maps.open("counts") as counts:
            for i, name in enumerate(COUNTS):
                out[name] = sum(counts.sum_u64(U32.pack(i)))
        for row in _backend_rows(maps, params):
            if row.stats[0]:
                where = f"{row.svc.label} {_endpoint(row.backend.ip, row.backend.port or row.svc.port)}"
                out[f"{where} flows"] = row.stats[2]
                out[f"{where} packets"] = row.stats[0]
        return out

    def state_rows(self, maps, params):
        """What the data path holds: each backend's state and share of its
        service's live table, read from the maps."""
        rows = []
        for row in _backend_rows(maps, params, shares=True):
            rows.append([row.svc.label, row.svc.mode, _endpoint(row.backend.ip, row.backend.port or row.svc.port),
                         str(row.backend.weight), {ACTIVE: "active", DRAINING: "draining"}.get(row.flags, "?"),
                         f"{100 * row.share:.1f}%", str(row.stats[2]), str(row.stats[0])])
        return ["service", "mode", "backend", "weight", "state", "table", "flows", "packets"], rows


def _caps(params) -> tuple[int, int]:
    """(services, backends) the maps have room for: ids stay below these."""
    return (headroom(len(params.services), 4),
            headroom(sum(len(s.backends) for s in params.services), 16))


def _backend_name(svc: Service, b: Backend) -> str:
    """What a backend's Maglev permutation is derived from."""
    return _endpoint(b.ip, b.port or svc.port)


def _endpoint(ip, port: int) -> str:
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def _addr16(ip) -> bytes:
    return ip.packed.ljust(16, b"\0")


def _port(svc: Service, b: Backend) -> int:
    return b.port or svc.port


def _table(params, svc: Service, ids: list[int]) -> tuple[int, ...]:
    return maglev.build(tuple((bid, _backend_name(svc, b), 0 if b.drain else b.weight)
                              for bid, b in zip(ids, svc.backends)), params.table_size)


class _Writer:
    """Writes a config into the maps so that no lookup sees a half-written state.

    Every table is built before any map is touched. Then: the backends (new ones,
    and new states: a draining backend may still be picked by the old table,
    which the data path allows), each service's next table into the idle half
    of its ring and one map update to switch to it, and last what is gone.
    Services and backends keep their ids while the maps live; a flow also
    remembers its backend's address, so it finds the backend again when the
    ids change with a new set of maps."""

    def __init__(self, params, svcs, backends, beidx, vips, ring):
        self.params = params
        self.svcs, self.backends, self.beidx, self.vips, self.ring = svcs, backends, beidx, vips, ring

    def write(self) -> None:
        params = self.params
        svc_cap, be_cap = _caps(params)
        old_svcs = {}
        for key in self.svcs.keys():
            value = self.svcs.lookup(key)
            if value:
                old_svcs[key] = SVC.unpack(value[0])
        svc_ids = _keep_ids([s.key() for s in params.services],
                            {k: v["id"] for k, v in old_svcs.items() if v["id"] < svc_cap}, svc_cap)
        old_backends = {}
        for bid, value in enumerate(self.backends.read_array(0, self.backends.max_entries)):
            entry = BACKEND.unpack(value)
            if entry["flags"]:
                old_backends[(entry["svc"], entry["addr"], entry["port"])] = bid
        ident = {(s.key(), b.ip, b.port or s.port): (svc_ids[s.key()], _addr16(b.ip), _port(s, b))
                 for s in params.services for b in s.backends}
        be_ids = _keep_ids(list(ident.values()), {k: v for k, v in old_backends.items() if v < be_cap}, be_cap)
        tables = {}
        for s in params.services:
            ids = [be_ids[ident[(s.key(), b.ip, b.port or s.port)]] for b in s.backends]
            tables[s.key()] = _table(params, s, ids)

        for s in params.services:
            sid = svc_ids[s.key()]
            for b in s.backends:
                who = ident[(s.key(), b.ip, b.port or s.port)]
                self.backends.update(U32.pack(be_ids[who]), BACKEND.pack(
                    {"addr": who[1], "port": who[2], "flags": DRAINING if b.drain else ACTIVE, "svc": sid}))
                self.beidx.update(_be_key(s, b), U32.pack(be_ids[who]))
        for s in params.services:
            sid = svc_ids[s.key()]
            old = old_svcs.get(s.key())
            version = (old["version"] ^ 1) & 1 if old and old["id"] == sid else 0
            write_array(self.ring, (sid * 2 + version) * params.table_size, [U32.pack(t) for t in tables[s.key()]])
            self.svcs.update(s.key(), SVC.pack({"id": sid, "version": version, "mode": MODES[s.mode]}))
        vip_flags = {VIP.pack({"addr": _addr16(s.vip), "family": s.vip.version}): ECHO if params.icmp_echo else 0
                     for s in params.services}
        for vip, flags in vip_flags.items():
            self.vips.update(vip, U32.pack(flags))

        for key in set(old_svcs) - set(svc_ids):
            self.svcs.delete(key)
        for vip in set(self.vips.keys()) - set(vip_flags):
            self.vips.delete(vip)
        wanted_idx = {_be_key(s, b) for s in params.services for b in s.backends}
        for key in set(self.beidx.keys()) - wanted_idx:
            self.beidx.delete(key)
        for bid in set(old_backends.values()) - set(be_ids.values()):
            self.backends.update(U32.pack(bid), BACKEND.pack())


def _be_key(svc: Service, b: Backend) -> bytes:
    return BE_KEY.pack({"svc": svc.key_fields(), "addr": _addr16(b.ip), "port": _port(svc, b)})


def _keep_ids(wanted: list, old: dict, cap: int) -> dict:
    """Ids for ``wanted`` keys below ``cap``: a key keeps its old id; new keys
    take the lowest ids nobody held, then ids of keys that are going away (whose
    entries live until the end of the write). A flow whose backend's id went to
    another backend notices: it remembers its backend's address."""
    ids = {k: old[k] for k in wanted if k in old}
    taken = set(ids.values())
    held = set(old.values())
    free = iter([i for i in range(cap) if i not in held] + sorted(held - taken))
    for k in wanted:
        if k not in ids:
            ids[k] = next(free)
    return ids


@dataclass
class _Row:
    svc: Service
    backend: Backend
    flags: int
    stats: list[int]          # packets, bytes, new flows
    share: float = 0.0        # of the service's live table


def _backend_rows(maps, params, shares: bool = False):
    """A row per configured backend the maps hold, from the maps."""
    with maps.open("svcs") as svcs, maps.open("backends") as backends, maps.open("bstats") as bstats, \
            maps.open("ring") as ring:
        by_ident = {}
        for bid, value in enumerate(backends.read_array(0, backends.max_entries)):
            entry = BACKEND.unpack(value)
            if entry["flags"]:
                by_ident[(entry["svc"], entry["addr"], entry["port"])] = (bid, entry["flags"])
        for s in params.services:
            value = svcs.lookup(s.key())
            if not value:
                continue
            svc = SVC.unpack(value[0])
            sid = svc["id"]
            held = {}
            if shares:
                size = params.table_size
                table = [U32.unpack(v) for v in ring.read_array((sid * 2 + svc["version"]) * size, size)]
                held = maglev.shares(table)
            for b in s.backends:
                found = by_ident.get((sid, _addr16(b.ip), _port(s, b)))
                if found:
                    yield _Row(s, b, found[1], bstats.sum_u64(U32.pack(found[0])), held.get(found[0], 0.0))


def _next_prime(n: int) -> int:
    while not maglev.is_prime(n):
        n += 1
    return n
