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

Live changes to backends, weights and drains are map updates (no compile):
a new Maglev table is written into the idle half of the service's table and
switched in with one map update. ``drain: true`` takes a backend out of the
table (no new flows) while its flows continue; removing a backend moves its
flows, others stay.

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
import struct
from typing import Literal

from pydantic import Field, field_validator, model_validator

from ..lb import maglev
from .base import FunctionType, MapSpec, Params, headroom, write_array

PROTOS = {"tcp": 6, "udp": 17}
MODES = {"nat": 0, "dsr": 1, "ipip": 2}
ACTIVE, DRAINING = 1, 2
ECHO = 1

# addresses are 16 bytes, IPv4 in the first 4 (as in struct vc_meta), family 4 or 6 beside them
VIP = struct.Struct("<16sB3x")           # struct vip: addr, family
SVC_KEY = struct.Struct("<16s2sBB")      # struct svc_key: vip, port (network order), proto, family
SVC = struct.Struct("<IBBH")             # struct svc: id, version, mode
BACKEND = struct.Struct("<16s2sBxI")     # struct backend: addr, port, flags, svc
CFG = struct.Struct("<4sI16s")           # struct cfg: encap_src, has_nat, encap_src6
U32 = struct.Struct("<I")
COUNTS = ("new_flows", "table_hits", "moved_flows", "replies", "echo_replies")


Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class Backend(Params):
    ip: Address = Field(description="backend address (the service's family)")
    port: int | None = Field(None, ge=1, le=65535,
                             description="nat mode: port at the backend (default: the service port)")
    weight: int = Field(1, ge=1, le=1000, description="share of new flows, relative to the other backends")
    drain: bool = Field(False, description="take no new flows; existing ones continue")


class Service(Params):
    vip: Address = Field(description="virtual IP clients connect to (IPv4 or IPv6)")
    port: int = Field(ge=1, le=65535, description="service port on the VIP")
    proto: Literal["tcp", "udp"] = Field("tcp", description="tcp or udp")
    mode: Literal["nat", "dsr", "ipip"] = Field("nat", description="nat, dsr (L2 MAC rewrite) or ipip")
    name: str | None = Field(None, max_length=40, description="shown in stats (default VIP:port/proto)")
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

    def key(self) -> bytes:
        return SVC_KEY.pack(_addr16(self.vip), self.port.to_bytes(2, "big"), PROTOS[self.proto], self.vip.version)


class LbParams(Params):
    services: list[Service] = Field(min_length=1, description="[{vip, port, proto, mode, name, backends}]")
    table_size: int = Field(maglev.DEFAULT_SIZE, ge=7, le=1_000_003,
                            description="Maglev table slots per service; a prime (default 65537)")
    max_flows: int = Field(65536, ge=16, le=4_194_304,
                           description="connection-table size (LRU: the least recent flow makes room)")
    idle_timeout: int = Field(300, ge=1, description="seconds a flow keeps its backend while idle")
    encap_src: ipaddress.IPv4Address | None = Field(None, description="outer source address of IPv4 ipip services")
    encap_src6: ipaddress.IPv6Address | None = Field(
        None, description="outer source address of IPv6 ipip services (IPv6 in IPv6)")
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
                                             int(any(s.mode == "nat" for s in params.services)),
                                             (params.encap_src6 or ipaddress.IPv6Address(0)).packed))

    def read_counters(self, maps, params):
        out = {}
        with maps.open("counts") as counts:
            for i, name in enumerate(COUNTS):
                out[name] = sum(counts.sum_u64(U32.pack(i)))
        for svc, backend, _, stats in _backend_rows(maps, params):
            if stats[0]:
                where = f"{svc.label} {_endpoint(backend.ip, backend.port or svc.port)}"
                out[f"{where} flows"] = stats[2]
                out[f"{where} packets"] = stats[0]
        return out

    def state_rows(self, maps, params):
        rows = []
        for svc, backend, index, stats in _backend_rows(maps, params):
            share = _share(params, svc, index)
            rows.append([svc.label, svc.mode, _endpoint(backend.ip, backend.port or svc.port), str(backend.weight),
                         "draining" if backend.drain else "active", f"{100 * share:.1f}%",
                         str(stats[2]), str(stats[0])])
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
        wanted = [(svc_ids[s.key()], _addr16(b.ip), (b.port or s.port).to_bytes(2, "big"))
                  for s in params.services for b in s.backends]
        be_ids = _keep_ids(wanted, {k: v for k, v in old_backends.items() if v < be_cap}, be_cap)

        for s in params.services:
            sid = svc_ids[s.key()]
            for b in s.backends:
                ident = (sid, _addr16(b.ip), (b.port or s.port).to_bytes(2, "big"))
                self.backends.update(U32.pack(be_ids[ident]), BACKEND.pack(
                    ident[1], ident[2], DRAINING if b.drain else ACTIVE, sid))
        for s in params.services:
            sid = svc_ids[s.key()]
            ids = [be_ids[(sid, _addr16(b.ip), (b.port or s.port).to_bytes(2, "big"))] for b in s.backends]
            old = old_svcs.get(s.key())
            version = (old[1] ^ 1) & 1 if old and old[0] == sid else 0
            table = _table(self.params, s, ids)
            base = (sid * 2 + version) * params.table_size
            write_array(self.ring, base, [U32.pack(t) for t in table])
            self.svcs.update(s.key(), SVC.pack(sid, version, MODES[s.mode], 0))
        vip_flags = {VIP.pack(_addr16(s.vip), s.vip.version): ECHO if params.icmp_echo else 0
                     for s in params.services}
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
                bid = by_ident.get((sid, _addr16(b.ip), (b.port or s.port).to_bytes(2, "big")))
                if bid is not None:
                    yield s, b, i, bstats.sum_u64(U32.pack(bid))


def _share(params, svc: Service, index: int) -> float:
    """The share of the service's table its backend number ``index`` holds."""
    return maglev.shares(_table(params, svc, list(range(len(svc.backends))))).get(index, 0.0)


def _next_prime(n: int) -> int:
    while not maglev.is_prime(n):
        n += 1
    return n
