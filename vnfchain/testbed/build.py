"""Bring a topology up step by step, and take a recorded bed down.

Naming scheme (checked in ``model``):

    network namespace of a host      vc-<bed>-<host>          e.g. vc-pvp-dut
    interface inside a namespace     as the topology says     e.g. dut-lan
    veth end while being built       vct<pid><n><a|b>         in the root namespace,
                                                              moved and renamed at once
    record and service logs          /run/vnfchain/testbeds/<bed>.json, <bed>/

Every object is written to the record before it is created, so ``teardown``
(used both by ``down`` and by a failed ``up``) removes exactly those objects.
"""
from __future__ import annotations

import itertools
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Callable

from .. import statedir
from ..errors import TestbedError
from . import netlink, services
from .model import TEMP_IF_PREFIX, End, Link, Topology
from .record import Record, check_bed_name, log_dir, recorded_names

Step = Callable[[str], None]
_temp_counter = itertools.count()


def _temp_names() -> tuple[str, str]:
    n = next(_temp_counter) % 0x10000
    base = f"{TEMP_IF_PREFIX}{os.getpid():06x}{n:04x}"
    return base + "a", base + "b"


def step_count(topo: Topology) -> int:
    """How many times ``build`` calls ``step`` (for a progress bar)."""
    return 2 * len(topo.hosts) + len(topo.links) + 1


@dataclass
class Builder:
    """Builds ``topo`` into the namespaces listed in ``record``; ``step`` names what it
    is about to do (the name appears in the error if that step fails)."""

    topo: Topology
    record: Record
    on_step: Step = lambda text: None
    popens: dict[int, subprocess.Popen] = field(default_factory=dict)
    current: str = "starting"

    def step(self, text: str) -> None:
        self.current = text
        self.on_step(text)

    def ns(self, host: str) -> str:
        return self.topo.netns(host)

    def build(self) -> None:
        for host in self.topo.hosts:
            self.step(f"creating namespace {self.ns(host)}")
            self._namespace(host)
        for link in self.topo.links:
            self.step(f"linking {link.a.host}:{link.a.interface} -- {link.b.host}:{link.b.interface}")
            self._link(link)
        for host, spec in self.topo.hosts.items():
            self.step(f"configuring {host} (sysctls, routes)")
            for key, value in spec.sysctls.items():
                netlink.sysctl(self.ns(host), key, value)
            with netlink.Namespace(self.ns(host)) as ns:
                for route in spec.routes:
                    ns.add_route(route.dst, route.via)
        self.step("starting services")
        self._services()
        self.record.state = "up"
        self.record.save()

    def _namespace(self, host: str) -> None:
        name = self.ns(host)
        self.record.namespaces.append(name)
        self.record.save()
        netlink.create_netns(name)
        if netlink.has_ipv6():  # the bed is IPv4 only: no router solicitations or DAD on the wire
            netlink.sysctl(name, "net.ipv6.conf.default.disable_ipv6", 1)
            netlink.sysctl(name, "net.ipv6.conf.all.disable_ipv6", 1)
        with netlink.Namespace(name) as ns:
            ns.set_up("lo")
            for br_name, bridge in self.topo.hosts[host].bridges.items():
                ns.add_bridge(br_name)
                if bridge.mtu:
                    ns.set_mtu(br_name, bridge.mtu)
                for address in bridge.addresses:
                    ns.add_address(br_name, address)
                ns.set_up(br_name)

    def _link(self, link: Link) -> None:
        temp = _temp_names()
        self.record.temp_links.extend(temp)
        self.record.save()
        netlink.add_veth(*temp)
        for end, temp_name in zip(link.ends(), temp):
            netlink.move_link(temp_name, self.ns(end.host))
        for end, temp_name in zip(link.ends(), temp):
            self._configure_end(end, temp_name, link)

    def _configure_end(self, end: End, temp_name: str, link: Link) -> None:
        with netlink.Namespace(self.ns(end.host)) as ns:
            ns.rename(temp_name, end.interface)
            mtu = end.mtu or link.mtu
            if mtu:
                ns.set_mtu(end.interface, mtu)
            if end.bridge:
                ns.set_master(end.interface, end.bridge)
            for address in end.addresses:
                ns.add_address(end.interface, address)
            ns.set_up(end.interface)
        netlink.set_offloads(self.ns(end.host), end.interface, gro=link.gro,
                             tx_checksum=link.tx_checksum)

    def _services(self) -> None:
        logs = statedir.private_dir(log_dir(self.record.name))
        started = []
        for host, spec in self.topo.hosts.items():
            for service in spec.services:
                info, popen = services.start(self.ns(host), host, service, logs)
                self.popens[info.pid] = popen
                self.record.processes.append(info.to_record())
                self.record.save()
                started.append((info, service, popen))
        services.wait_ready(started)


@dataclass
class Removed:
    """What ``teardown`` removed (for the CLI's report)."""

    namespaces: list[str] = field(default_factory=list)
    processes: list[int] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.namespaces or self.processes or self.links)


def teardown(record: Record, popens: dict[int, subprocess.Popen] | None = None) -> Removed:
    """Remove what ``record`` lists: processes (by PID and start time), temporary
    root links, namespaces (their veths go with them), logs, then the record."""
    popens = popens or {}
    removed = Removed()
    for proc in record.processes:
        if services.stop(proc["pid"], proc["start_time"], popen=popens.get(proc["pid"])):
            removed.processes.append(proc["pid"])
    for name in record.temp_links:
        if name.startswith(TEMP_IF_PREFIX) and netlink.delete_root_link(name):
            removed.links.append(name)
    for name in record.namespaces:
        strangers = netlink.netns_pids(name)
        if strangers:
            removed.warnings.append(f"processes {', '.join(map(str, strangers))} still run in {name}; "
                                    "they were not started by the bed and were left alone")
        if netlink.remove_netns(name):
            removed.namespaces.append(name)
    shutil.rmtree(log_dir(record.name), ignore_errors=True)
    record.forget()
    return removed


def orphan_namespaces(name: str) -> list[str]:
    """Namespaces named like bed ``name``'s (vc-<name>-*) that no other bed's record
    claims: what is left if a record was lost."""
    claimed: set[str] = set()
    for other in recorded_names():
        if other == name:
            continue
        rec = Record.read(other)
        if rec:
            claimed.update(rec.namespaces)
    prefix = f"vc-{name}-"
    return [ns for ns in netlink.list_netns() if ns.startswith(prefix) and ns not in claimed]


def down(name: str) -> Removed:
    """Take bed ``name`` down from its record; idempotent. Without a record (lost by
    hand), removes the namespaces vc-<name>-* that no other bed claims."""
    check_bed_name(name)   # it becomes paths that are removed
    try:
        record = Record.read(name)
    except TestbedError:
        record = Record(name=name, topology={})
    if record is None:
        record = Record(name=name, topology={})
    if not record.namespaces:
        record.namespaces = orphan_namespaces(name)
    return teardown(record)
