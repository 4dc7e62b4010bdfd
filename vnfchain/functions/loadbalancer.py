"""loadbalancer: L4 load balancing of virtual IPs by Maglev consistent hashing.

A service is a virtual IP, port and protocol (TCP or UDP, IPv4) with weighted
backends. A new flow goes to the backend that the service's Maglev table
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
- ``ipip``: the packet is wrapped in an outer IPv4 header (protocol 4) from
  ``encap_src`` to the backend, as Katran does; the backend decapsulates.

Live changes to backends, weights and drains are map updates (no compile):
a new Maglev table is written into the idle half of the service's table and
switched in with one map update. ``drain: true`` takes a backend out of the
table (no new flows) while its flows continue; removing a backend moves its
flows, others stay.

Policies: echo requests to a VIP are answered by the chain (``icmp_echo``);
other ICMP to a VIP passes untouched; IP fragments to a VIP are dropped
(``lb_fragment``: a later fragment has no ports to find its flow by); IPv4
options are kept (headers are found by their length). Traffic to a VIP port
with no service, and all non-VIP traffic, continues untouched. IPv6 is not
balanced (passes untouched). A service whose backends are all drained drops
new flows (``lb_no_backend``).
"""
from __future__ import annotations

import ipaddress
import struct
from typing import Literal

from pydantic import Field, field_validator, model_validator

from ..lb import maglev
from .base import FunctionType, MapSpec, Params, headroom, write_array

PROTOS = {"tcp": 6, "udp": 17}
MODES = {"nat": 0, "dsr": 1, "ipip": 2}
ACTIVE, DRAINING = 1, 2
ECHO = 1

SVC_KEY = struct.Struct("<4s2sBx")       # struct svc_key: vip, port (network order), proto
SVC = struct.Struct("<IBBH")             # struct svc: id, version, mode
BACKEND = struct.Struct("<4s2sBxI")      # struct backend: addr, port, flags, svc
CFG = struct.Struct("<4sI")              # struct cfg: encap_src, has_nat
U32 = struct.Struct("<I")
COUNTS = ("new_flows", "table_hits", "moved_flows", "replies", "echo_replies")


class Backend(Params):
    ip: ipaddress.IPv4Address = Field(description="backend address")
    port: int | None = Field(None, ge=1, le=65535,
                             description="nat mode: port at the backend (default: the service port)")
    weight: int = Field(1, ge=1, le=1000, description="share of new flows, relative to the other backends")
    drain: bool = Field(False, description="take no new flows; existing ones continue")


class Service(Params):
    vip: ipaddress.IPv4Address = Field(description="virtual IP clients connect to")
    port: int = Field(ge=1, le=65535, description="service port on the VIP")
    proto: Literal["tcp", "udp"] = Field("tcp", description="tcp or udp")
    mode: Literal["nat", "dsr", "ipip"] = Field("nat", description="nat, dsr (L2 MAC rewrite) or ipip")
    name: str | None = Field(None, max_length=40, description="shown in stats (default VIP:port/proto)")
    backends: list[Backend] = Field(min_length=1, description="[{ip, port, weight, drain}]")

    @model_validator(mode="after")
    def _check(self):
        seen = set()
        for b in self.backends:
            if self.mode != "nat" and b.port not in (None, self.port):
                raise ValueError(f"backend {b.ip}: mode {self.mode} cannot change the port "
                                 f"(the packet reaches the backend as sent); drop 'port:' or use mode nat")
            ident = (b.ip, b.port or self.port)
            if ident in seen:
                raise ValueError(f"backend {b.ip}:{ident[1]} is listed twice")
            seen.add(ident)
        return self

    @property
    def label(self) -> str:
        return self.name or f"{self.vip}:{self.port}/{self.proto}"

    def key(self) -> bytes:
        return SVC_KEY.pack(self.vip.packed, self.port.to_bytes(2, "big"), PROTOS[self.proto])


class LbParams(Params):
    services: list[Service] = Field(min_length=1, description="[{vip, port, proto, mode, name, backends}]")
    table_size: int = Field(maglev.DEFAULT_SIZE, ge=7, le=1_000_003,
                            description="Maglev table slots per service; a prime (default 65537)")
    max_flows: int = Field(65536, ge=16, le=4_194_304,
                           description="connection-table size (LRU: the least recent flow makes room)")
    idle_timeout: int = Field(300, ge=1, description="seconds a flow keeps its backend while idle")
    encap_src: ipaddress.IPv4Address | None = Field(None, description="outer source address of ipip services")
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
                raise ValueError(f"service {k[0]}:{k[1]}/{k[2]} is defined twice")
        if any(s.mode == "ipip" for s in self.services) and self.encap_src is None:
            raise ValueError("ipip services need encap_src: the outer source address, e.g. the "
                             "address of the interface towards the backends")
        return self


class LoadBalancer(FunctionType):
    name = "loadbalancer"
    summary = "L4 load balancer: Maglev hashing, weights, affinity, drain; nat, dsr and ipip modes (IPv4)"
    Params = LbParams
    reasons = ("lb_no_backend", "lb_fragment", "lb_no_neighbor", "lb_encap_failed", "no_route")
    pinned_populate = True

    def maps(self, params):
        svcs, backends = _caps(params)
        return [
            MapSpec("cfg", "array", 1, "encap source, whether replies need translating"),
            MapSpec("vips", "hash", svcs, "virtual IPs -> flags"),
            MapSpec("svcs", "hash", svcs, "VIP, port, protocol -> service id, live table half, mode"),
            MapSpec("ring", "array", 2 * svcs * params.table_size,
                    "two Maglev tables per service: the live one and the next"),
            MapSpec("backends", "array", backends, "backend id -> address, port, state, service"),
            MapSpec("flows", "lru_hash", params.max_flows, "connection table: client flow -> backend"),
            MapSpec("rev", "lru_hash", 2 * params.max_flows, "nat mode: backend reply -> VIP and port"),
            MapSpec("bstats", "percpu_array", backends, "packets, bytes, new flows per backend"),
            MapSpec("counts", "percpu_array", 8, "function counters"),
        ]

    def template_vars(self, params, ctx):
        return {"table_size": params.table_size, "idle_timeout": params.idle_timeout}

    def populate(self, tables, params, ctx):
        with tables.open("svcs") as svcs, tables.open("backends") as backends, \
                tables.open("vips") as vips, tables.open("ring") as ring, tables.open("cfg") as cfg:
            _Writer(params, svcs, backends, vips, ring).write()
            cfg.update(U32.pack(0), CFG.pack((params.encap_src or ipaddress.IPv4Address(0)).packed,
                                             int(any(s.mode == "nat" for s in params.services))))

    def read_counters(self, maps, params):
        out = {}
        with maps.open("counts") as counts:
            for i, name in enumerate(COUNTS):
                out[name] = sum(counts.sum_u64(U32.pack(i)))
        for svc, backend, _, stats in _backend_rows(maps, params):
            if stats[0]:
                where = f"{svc.label} {backend.ip}:{backend.port or svc.port}"
                out[f"{where} flows"] = stats[2]
                out[f"{where} packets"] = stats[0]
        return out

    def state_rows(self, maps, params):
        rows = []
        for svc, backend, index, stats in _backend_rows(maps, params):
            share = _share(params, svc, index)
            rows.append([svc.label, svc.mode, f"{backend.ip}:{backend.port or svc.port}", str(backend.weight),
                         "draining" if backend.drain else "active", f"{100 * share:.1f}%",
                         str(stats[2]), str(stats[0])])
        return ["service", "mode", "backend", "weight", "state", "table", "flows", "packets"], rows


def _caps(params) -> tuple[int, int]:
    """(services, backends) the maps have room for: ids stay below these."""
    return (headroom(len(params.services), 4),
            headroom(sum(len(s.backends) for s in params.services), 16))


def _backend_name(svc: Service, b: Backend) -> str:
    """What a backend's Maglev permutation is derived from."""
    return f"{b.ip}:{b.port or svc.port}"


def _table(params, svc: Service, ids: list[int]) -> tuple[int, ...]:
    return maglev.build(tuple((bid, _backend_name(svc, b), 0 if b.drain else b.weight)
                              for bid, b in zip(ids, svc.backends)), params.table_size)


class _Writer:
    """Writes a config into the maps so that no lookup ever sees a half-written
    state: backends first, then each service's next table into the idle half of
    its ring and one map update to switch to it, then what is gone is removed.
    Services and backends keep their ids across changes (flows refer to them)."""

    def __init__(self, params, svcs, backends, vips, ring):
        self.params, self.svcs, self.backends, self.vips, self.ring = params, svcs, backends, vips, ring

    def write(self) -> None:
        params = self.params
        svc_cap, be_cap = _caps(params)
        old_svcs = {}
        for key in self.svcs.keys():
            value = self.svcs.lookup(key)
            if value:
                old_svcs[key] = SVC.unpack(value[0])
        svc_ids = _keep_ids([s.key() for s in params.services],
                            {k: v[0] for k, v in old_svcs.items() if v[0] < svc_cap}, svc_cap)
        old_backends = {}
        for bid in range(self.backends.max_entries):
            value = self.backends.lookup(U32.pack(bid))
            addr, port, flags, svc = BACKEND.unpack(value[0])
            if flags:
                old_backends[(svc, addr, port)] = bid
        wanted = [(svc_ids[s.key()], b.ip.packed, (b.port or s.port).to_bytes(2, "big"))
                  for s in params.services for b in s.backends]
        be_ids = _keep_ids(wanted, {k: v for k, v in old_backends.items() if v < be_cap}, be_cap)

        for s in params.services:
            sid = svc_ids[s.key()]
            for b in s.backends:
                ident = (sid, b.ip.packed, (b.port or s.port).to_bytes(2, "big"))
                self.backends.update(U32.pack(be_ids[ident]), BACKEND.pack(
                    ident[1], ident[2], DRAINING if b.drain else ACTIVE, sid))
        for s in params.services:
            sid = svc_ids[s.key()]
            ids = [be_ids[(sid, b.ip.packed, (b.port or s.port).to_bytes(2, "big"))] for b in s.backends]
            old = old_svcs.get(s.key())
            version = (old[1] ^ 1) & 1 if old and old[0] == sid else 0
            table = _table(self.params, s, ids)
            base = (sid * 2 + version) * params.table_size
            write_array(self.ring, base, [U32.pack(t) for t in table])
            self.svcs.update(s.key(), SVC.pack(sid, version, MODES[s.mode], 0))
        vip_flags = {s.vip.packed: ECHO if params.icmp_echo else 0 for s in params.services}
        for vip, flags in vip_flags.items():
            self.vips.update(vip, U32.pack(flags))

        for key in set(old_svcs) - set(svc_ids):
            self.svcs.delete(key)
        for vip in set(self.vips.keys()) - set(vip_flags):
            self.vips.delete(vip)
        for bid in set(old_backends.values()) - set(be_ids.values()):
            self.backends.update(U32.pack(bid), bytes(BACKEND.size))


def _keep_ids(wanted: list, old: dict, cap: int) -> dict:
    """Ids for ``wanted`` keys below ``cap``: a key keeps its old id; new keys
    take the lowest ids nobody held, then ids of keys that are going away (whose
    entries live until the end of the write)."""
    ids = {k: old[k] for k in wanted if k in old}
    taken = set(ids.values())
    held = set(old.values())
    free = iter([i for i in range(cap) if i not in held] + sorted(held - taken))
    for k in wanted:
        if k not in ids:
            ids[k] = next(free)
    return ids


def _backend_rows(maps, params):
    """(service, backend, its index in the service, [packets, bytes, flows])."""
    with maps.open("svcs") as svcs, maps.open("backends") as backends, maps.open("bstats") as bstats:
        by_ident = {}
        for bid in range(backends.max_entries):
            addr, port, flags, svc = BACKEND.unpack(backends.lookup(U32.pack(bid))[0])
            if flags:
                by_ident[(svc, addr, port)] = bid
        for s in params.services:
            value = svcs.lookup(s.key())
            if not value:
                continue
            sid = SVC.unpack(value[0])[0]
            for i, b in enumerate(s.backends):
                bid = by_ident.get((sid, b.ip.packed, (b.port or s.port).to_bytes(2, "big")))
                if bid is not None:
                    yield s, b, i, bstats.sum_u64(U32.pack(bid))


def _share(params, svc: Service, index: int) -> float:
    """The share of the service's table its backend number ``index`` holds."""
    return maglev.shares(_table(params, svc, list(range(len(svc.backends))))).get(index, 0.0)


def _next_prime(n: int) -> int:
    while not maglev.is_prime(n):
        n += 1
    return n
