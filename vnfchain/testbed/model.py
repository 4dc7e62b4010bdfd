"""The topology of a test bed: typed, frozen, validated once at load time.

A topology file names hosts (one network namespace each), the veth links
between them (optionally ports of a bridge living in a host), per-host routes,
sysctls and services, and optional smoke checks::

    name: pvp                          # [a-z][a-z0-9-]{0,7}
    hosts:
      client:
        routes: [{dst: 198.18.0.0/15, via: 198.18.1.1}]
      dut:
        sysctls: {net.ipv4.ip_forward: 1}
      server:
        routes: [{dst: 198.18.0.0/15, via: 198.18.2.1}]
        services: [{type: http, port: 80}]
    links:
      - a: {host: client, interface: eth0, addresses: [198.18.1.2/24]}
        b: {host: dut, interface: dut-lan, addresses: [198.18.1.1/24]}
    checks:
      - {from: client, ping: 198.18.2.2}

Rules checked here, each reported with file:line and key (the test-network rule: RFC 2544 benchmarking addresses only):
every address, route destination and next hop lies in 198.18.0.0/15 (no
default route, no IPv6); interface and bridge names are ones the kernel takes
(``vnfchain.names``) made of letters, digits, '_', '.' and '-', are unique per
host and do not start with ``vct`` (reserved for the temporary names used while
building); addresses are unique in the bed; links and checks
name hosts and bridges that exist; a route's next hop is on one of the host's
own subnets; sysctls are ``net.*`` (the only per-namespace ones).
"""
from __future__ import annotations

import ipaddress
import re
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import SpecError, TestbedSpecError
from ..names import interface_error
from ..yamlio import Locator, load, pydantic_to_spec_error

#: the only addresses a test bed may use: RFC 2544's benchmarking range
BENCH_NET = IPv4Network("198.18.0.0/15")
#: prefix of the temporary root-namespace names of veth ends while a bed is built
TEMP_IF_PREFIX = "vct"
#: network namespace of a host: ``vc-<bed>-<host>``
NETNS_FORMAT = "vc-{bed}-{host}"

BED_NAME = re.compile(r"[a-z][a-z0-9-]{0,7}")
HOST_NAME = re.compile(r"[a-z][a-z0-9-]{0,14}")
IFNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
SYSCTL = re.compile(r"net\.[A-Za-z0-9_.-]+")

SERVICE_PROTO = {"http": "tcp", "tcp-echo": "tcp", "udp-echo": "udp", "tls": "tcp", "dns": "udp"}


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class End(_Model):
    """One end of a veth link, inside ``host``'s namespace."""

    host: str
    interface: str
    addresses: tuple[IPv4Interface, ...] = ()
    mtu: int | None = Field(None, ge=68, le=65535)
    bridge: str | None = None  # make this end a port of a bridge of the same host


class Link(_Model):
    """A veth pair. ``gro`` turns on GRO on both ends, which gives a veth the NAPI
    context it needs to accept frames its peer's XDP program redirects or TX's.
    ``tx_checksum`` is veth's checksum "offload", off by default: with it on, the
    sender leaves TCP/UDP checksums unfilled for hardware that veth does not
    have, and a frame that an XDP program redirects leaves with a bad checksum."""

    a: End
    b: End
    mtu: int | None = Field(None, ge=68, le=65535)  # both ends, unless an end says otherwise
    gro: bool = True
    tx_checksum: bool = False

    def ends(self) -> tuple[End, End]:
        return (self.a, self.b)


class Bridge(_Model):
    addresses: tuple[IPv4Interface, ...] = ()
    mtu: int | None = Field(None, ge=68, le=65535)


class Route(_Model):
    dst: IPv4Network
    via: IPv4Address


class Service(_Model):
    """A process started in the host's namespace, ready once ``port`` listens.

    ``http`` answers ``GET /`` with the host's name (``GET /whoami`` with the
    client's ``ip:port`` as the server saw it); ``tcp-echo`` and ``udp-echo``
    send back what they receive; ``tls`` completes a handshake for any server
    name and sends the host's name; ``dns`` answers every A query with
    198.18.0.53; ``command`` runs ``argv`` as given."""

    type: Literal["http", "tcp-echo", "udp-echo", "tls", "dns", "command"]
    port: int | None = Field(None, ge=1, le=65535)
    argv: tuple[str, ...] | None = None
    proto: Literal["tcp", "udp"] | None = None  # for `command`: how to check readiness
    ready_timeout: float = Field(5.0, gt=0, le=120)

    @model_validator(mode="after")
    def _shape(self):
        if self.type == "command":
            if not self.argv:
                raise ValueError("a `command` service needs `argv`, the command to run")
        else:
            if self.port is None:
                raise ValueError(f"a `{self.type}` service needs `port`")
            if self.argv is not None or self.proto is not None:
                raise ValueError(f"`argv` and `proto` are only for `command` services, not `{self.type}`")
        return self

    @property
    def protocol(self) -> str:
        return SERVICE_PROTO.get(self.type) or self.proto or "tcp"

    @property
    def label(self) -> str:
        return f"{self.type}:{self.port}" if self.port else self.type


class Host(_Model):
    sysctls: dict[str, int | str] = {}
    routes: tuple[Route, ...] = ()
    services: tuple[Service, ...] = ()
    bridges: dict[str, Bridge] = {}

    @field_validator("bridges", mode="before")
    @classmethod
    def _empty_bridges(cls, value):
        if isinstance(value, dict):
            return {k: ({} if v is None else v) for k, v in value.items()}
        return value


class Check(_Model):
    """A smoke check run by ``Testbed.check()``: exactly one of the probes."""

    from_: str = Field(alias="from")
    ping: IPv4Address | None = None
    http: str | None = None
    expect: str | None = None  # substring the HTTP body must contain
    tcp_echo: str | None = Field(None, alias="tcp-echo")  # "ADDR:PORT"
    udp_echo: str | None = Field(None, alias="udp-echo")

    @model_validator(mode="after")
    def _one_probe(self):
        probes = [p for p in ("ping", "http", "tcp_echo", "udp_echo") if getattr(self, p) is not None]
        if len(probes) != 1:
            raise ValueError("a check needs exactly one of `ping`, `http`, `tcp-echo`, `udp-echo`")
        if self.expect is not None and self.http is None:
            raise ValueError("`expect` only goes with `http`")
        return self

    def target(self) -> tuple[str, IPv4Address, int | None]:
        """(probe kind, address, port) of this check."""
        if self.ping is not None:
            return "ping", self.ping, None
        if self.http is not None:
            url = urlsplit(self.http)
            return "http", IPv4Address(url.hostname or ""), url.port or 80
        kind, spec = ("tcp-echo", self.tcp_echo) if self.tcp_echo else ("udp-echo", self.udp_echo)
        addr, _, port = spec.rpartition(":")
        return kind, IPv4Address(addr), int(port)


class Topology(_Model):
    name: str
    description: str = ""
    hosts: dict[str, Host]
    links: tuple[Link, ...] = ()
    checks: tuple[Check, ...] = ()

    @field_validator("hosts", mode="before")
    @classmethod
    def _empty_hosts(cls, value):
        if isinstance(value, dict):
            return {k: ({} if v is None else v) for k, v in value.items()}
        return value

    def netns(self, host: str, bed: str | None = None) -> str:
        return NETNS_FORMAT.format(bed=bed or self.name, host=host)

    def interfaces(self, host: str) -> list[tuple[str, tuple[IPv4Interface, ...]]]:
        """(name, addresses) of every interface of ``host``: bridges, then link ends."""
        out = [(name, br.addresses) for name, br in self.hosts[host].bridges.items()]
        out += [(end.interface, end.addresses) for link in self.links for end in link.ends() if end.host == host]
        return out

    def addresses(self, host: str) -> list[IPv4Interface]:
        """Addresses of ``host``, link ends first (in file order), then bridges."""
        ends = [a for link in self.links for end in link.ends() if end.host == host for a in end.addresses]
        bridges = [a for br in self.hosts[host].bridges.values() for a in br.addresses]
        return ends + bridges

    def with_name(self, name: str) -> "Topology":
        if not BED_NAME.fullmatch(name):
            raise TestbedSpecError(f"test bed name '{name}' must match [a-z][a-z0-9-]{{0,7}}", key="name")
        return self.model_copy(update={"name": name})

    def to_data(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_defaults=True)


# --- loading -----------------------------------------------------------------

def load_topology(source: str | Path | dict, *, name: str | None = None) -> Topology:
    """Topology from a YAML file (or already-parsed data), fully validated.

    ``name`` overrides the bed name in the file (e.g. to run a shipped
    topology under a test's own prefix). Raises ``TestbedSpecError`` naming
    file:line and key."""
    if isinstance(source, dict):
        data, locator = source, Locator(None, {})
    else:
        try:
            data, locator = load(source)
        except TestbedSpecError:
            raise
        except SpecError as exc:
            raise TestbedSpecError(exc.reason, file=exc.file, line=exc.line, key=exc.key) from None
    if not isinstance(data, dict):
        raise locator.error("a topology must be a mapping with `name`, `hosts` and `links`", cls=TestbedSpecError)
    try:
        topo = Topology.model_validate(data)
    except ValidationError as exc:
        err = pydantic_to_spec_error(exc, locator, model=Topology)
        raise TestbedSpecError(err.reason, file=err.file, line=err.line, key=err.key) from None
    _check(topo, locator)
    if name is not None:
        topo = topo.with_name(name)
    return topo


def _check(topo: Topology, loc: Locator) -> None:
    def fail(message: str, *path):
        raise loc.error(message, tuple(path), cls=TestbedSpecError)

    if not BED_NAME.fullmatch(topo.name):
        fail(f"name '{topo.name}' must match [a-z][a-z0-9-]{{0,7}}: it becomes part of "
             "namespace names (vc-<name>-<host>)", "name")
    if not topo.hosts:
        fail("a topology needs at least one host", "hosts")

    ifnames: dict[str, set[str]] = {h: {"lo"} for h in topo.hosts}
    seen_addr: dict[IPv4Address, str] = {}

    def check_ifname(host: str, ifname: str, *path):
        kernel_says = interface_error(ifname)
        if kernel_says:
            fail(f"{kernel_says}: rename it", *path)
        if not IFNAME.fullmatch(ifname):
            fail(f"interface name '{ifname}' may only use letters, digits, '_', '.', '-', and must "
                 f"start with a letter or digit", *path)
        if ifname.startswith(TEMP_IF_PREFIX):
            fail(f"interface name '{ifname}' starts with '{TEMP_IF_PREFIX}', which is reserved for "
                 "vnfchain's temporary names; rename it", *path)
        if ifname in ifnames[host]:
            fail(f"host '{host}' already has an interface named '{ifname}'", *path)
        ifnames[host].add(ifname)

    def check_addrs(addrs, owner: str, *path):
        for i, addr in enumerate(addrs):
            if addr.ip not in BENCH_NET:
                fail(f"address {addr} is outside {BENCH_NET}; test beds use only RFC 2544's "
                     "benchmarking range, so test traffic never reaches a real network", *path, i)
            if not addr.network.subnet_of(BENCH_NET):
                fail(f"address {addr}: subnet {addr.network} reaches outside {BENCH_NET}; "
                     "use a longer prefix (at least /15)", *path, i)
            if addr.ip == addr.network.network_address and addr.network.prefixlen < 31:
                fail(f"address {addr} is the network address of its subnet; pick a host address", *path, i)
            if addr.ip in seen_addr:
                fail(f"address {addr.ip} is used twice (also on {seen_addr[addr.ip]})", *path, i)
            seen_addr[addr.ip] = owner

    for host, spec in topo.hosts.items():
        if not HOST_NAME.fullmatch(host):
            fail(f"host name '{host}' must match [a-z][a-z0-9-]{{0,14}}", "hosts", host)
        for br_name, br in spec.bridges.items():
            check_ifname(host, br_name, "hosts", host, "bridges", br_name)
            check_addrs(br.addresses, f"{host}:{br_name}", "hosts", host, "bridges", br_name, "addresses")

    for i, link in enumerate(topo.links):
        for side, end in (("a", link.a), ("b", link.b)):
            path = ("links", i, side)
            if end.host not in topo.hosts:
                fail(f"link end names host '{end.host}', which is not under `hosts` "
                     f"(known: {', '.join(topo.hosts)})", *path, "host")
            check_ifname(end.host, end.interface, *path, "interface")
            if end.bridge is not None:
                if end.bridge not in topo.hosts[end.host].bridges:
                    fail(f"host '{end.host}' has no bridge '{end.bridge}'; declare it under "
                         f"hosts.{end.host}.bridges", *path, "bridge")
                if end.addresses:
                    fail(f"'{end.interface}' is a port of bridge '{end.bridge}' and cannot have "
                         "addresses; put them on the bridge", *path, "addresses")
            check_addrs(end.addresses, f"{end.host}:{end.interface}", *path, "addresses")
        if link.a.host == link.b.host:
            fail(f"link joins host '{link.a.host}' to itself; a veth pair needs two hosts", "links", i)

    for host, spec in topo.hosts.items():
        subnets = [a.network for a in topo.addresses(host)]
        for key in spec.sysctls:
            if not SYSCTL.fullmatch(key):
                fail(f"sysctl '{key}' is not a per-namespace `net.*` sysctl; a test bed only "
                     "changes its own namespaces", "hosts", host, "sysctls", key)
        for r, route in enumerate(spec.routes):
            path = ("hosts", host, "routes", r)
            if route.dst.prefixlen == 0:
                fail("a default route is not allowed: test beds never route to the outside; "
                     f"route {BENCH_NET} or a part of it instead", *path, "dst")
            if not route.dst.subnet_of(BENCH_NET):
                fail(f"route destination {route.dst} is outside {BENCH_NET} (RFC 2544 benchmarking range: test traffic never reaches a real network)",
                     *path, "dst")
            if route.via not in BENCH_NET:
                fail(f"next hop {route.via} is outside {BENCH_NET} (RFC 2544 benchmarking range: test traffic never reaches a real network)", *path, "via")
            if not any(route.via in net for net in subnets):
                fail(f"next hop {route.via} is not on any subnet of host '{host}' "
                     f"({', '.join(map(str, subnets)) or 'it has no addresses'})", *path, "via")
        used_ports: set[tuple[str, int]] = set()
        for s, svc in enumerate(spec.services):
            if svc.port is None:
                continue
            key = (svc.protocol, svc.port)
            if key in used_ports:
                fail(f"host '{host}' already has a {svc.protocol} service on port {svc.port}",
                     "hosts", host, "services", s, "port")
            used_ports.add(key)

    for c, check in enumerate(topo.checks):
        if check.from_ not in topo.hosts:
            fail(f"check runs from host '{check.from_}', which is not under `hosts`", "checks", c, "from")
        try:
            _, addr, _ = check.target()
        except (ValueError, ipaddress.AddressValueError):
            fail("check target must be an IPv4 address (http: http://ADDR[:PORT]/..., "
                 "tcp-echo/udp-echo: ADDR:PORT)", "checks", c)
        if addr not in BENCH_NET:
            fail(f"check target {addr} is outside {BENCH_NET} (RFC 2544 benchmarking range: test traffic never reaches a real network)", "checks", c)
