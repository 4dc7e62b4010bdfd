"""What a test bed asks of the network: namespaces, veth links, bridges,
addresses and routes (through ``vnfchain.netlink``, which speaks netlink), and
the commands only ``ip``/``sysctl``/``ethtool`` offer.

Calls mirror the ``ip`` commands they replace::

    create_netns("vc-pvp-dut")                       # ip netns add vc-pvp-dut
    add_veth("vct123a", "vct123b")                   # ip link add vct123a type veth peer vct123b
    move_link("vct123a", "vc-pvp-dut")               # ip link set vct123a netns vc-pvp-dut
    with Namespace("vc-pvp-dut") as ns:              # ip -n vc-pvp-dut ...
        ns.rename("vct123a", "dut-lan")              #   link set vct123a name dut-lan
        ns.add_address("dut-lan", IPv4Interface(...))#   addr add ... dev dut-lan
        ns.add_route(dst, via)                       #   route add DST via VIA

Errors become ``TestbedError`` keeping the errno's text.
"""
from __future__ import annotations

import errno as errno_
import os
import socket
import subprocess
import threading
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path

from .. import netlink
from ..errors import TestbedError
from ..netlink import NETNS_DIR, NetlinkError, list_netns, netns_exists, remove_netns

__all__ = ["NETNS_DIR", "list_netns", "netns_exists", "create_netns", "remove_netns", "netns_pids",
           "add_veth", "move_link", "root_links", "root_link_exists", "delete_root_link", "Namespace",
           "exec_argv", "sysctl", "has_ipv6", "set_offloads", "socket_in"]


def _explain(exc: BaseException) -> str:
    if isinstance(exc, NetlinkError):
        return f"{os.strerror(exc.code)} (errno {exc.code})"
    if isinstance(exc, OSError) and exc.errno:
        return f"{os.strerror(exc.errno)} (errno {exc.errno})"
    return str(exc) or type(exc).__name__


# --- namespaces ----------------------------------------------------------------

def create_netns(name: str) -> None:
    """``ip netns add NAME``; an existing namespace of that name is an error."""
    if netns_exists(name):
        raise TestbedError(f"network namespace {name} already exists; if it is a left-over test bed, "
                           "run `vnfchain testbed down` for it")
    try:
        netlink.create_netns(name)
    except OSError as exc:
        raise TestbedError(f"cannot create network namespace {name}: {_explain(exc)}") from exc


def netns_pids(name: str) -> list[int]:
    """PIDs of processes whose network namespace is ``name`` (like ``ip netns pids``)."""
    try:
        target = os.stat(NETNS_DIR / name)
    except FileNotFoundError:
        return []
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
            pids.append(int(entry))
    return pids


# --- links in the root namespace --------------------------------------------------

def add_veth(name: str, peer: str) -> None:
    """``ip link add NAME type veth peer name PEER`` in the root namespace."""
    with netlink.Links() as root:
        try:
            root.add_veth(name, peer)
        except NetlinkError as exc:
            raise TestbedError(f"cannot create veth pair {name}/{peer}: {_explain(exc)}") from exc


def move_link(name: str, netns: str) -> None:
    """``ip link set NAME netns NETNS`` from the root namespace."""
    with netlink.Links() as root:
        index = root.index(name)
        if not index:
            raise TestbedError(f"link {name} vanished before it could move to {netns}")
        try:
            root.move(index, netns)
        except NetlinkError as exc:
            raise TestbedError(f"cannot move {name} into {netns}: {_explain(exc)}") from exc


def root_links(prefix: str = "") -> list[str]:
    """Names of the links in the root namespace that start with ``prefix``."""
    with netlink.Links() as root:
        names = root.names()
    return sorted(n for n in names if n.startswith(prefix))


def root_link_exists(name: str) -> bool:
    with netlink.Links() as root:
        return bool(root.index(name))


def delete_root_link(name: str) -> bool:
    """``ip link del NAME`` in the root namespace if it is there (its peer goes too)."""
    with netlink.Links() as root:
        index = root.index(name)
        if not index:
            return False
        try:
            root.delete(index)
        except NetlinkError as exc:
            if exc.code == errno_.ENODEV:
                return False
            raise TestbedError(f"cannot delete link {name}: {_explain(exc)}") from exc
        return True


# --- inside one namespace ----------------------------------------------------------

class Namespace:
    """Links by name in one existing namespace (``ip -n NAME ...``); use as a context manager."""

    def __init__(self, name: str):
        self.name = name
        self._links = netlink.Links(name)

    def __enter__(self) -> "Namespace":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._links.close()

    def _index(self, ifname: str) -> int:
        found = self._links.index(ifname)
        if not found:
            raise TestbedError(f"no interface {ifname} in namespace {self.name}")
        return found

    def _do(self, what: str, call, *args):
        try:
            return call(*args)
        except NetlinkError as exc:
            raise TestbedError(f"{what} in {self.name}: {_explain(exc)}") from exc

    def set_up(self, ifname: str) -> None:
        self._do(f"cannot bring {ifname} up", self._links.set_up, self._index(ifname))

    def rename(self, old: str, new: str) -> None:
        self._do(f"cannot rename {old} to {new}", self._links.rename, self._index(old), new)

    def set_mtu(self, ifname: str, mtu: int) -> None:
        self._do(f"cannot set MTU {mtu} on {ifname}", self._links.set_mtu, self._index(ifname), mtu)

    def add_bridge(self, name: str) -> None:
        self._do(f"cannot create bridge {name}", self._links.add_bridge, name)

    def set_master(self, ifname: str, bridge: str) -> None:
        self._do(f"cannot add {ifname} to bridge {bridge}", self._links.set_master,
                 self._index(ifname), self._index(bridge))

    def add_address(self, ifname: str, address: IPv4Interface) -> None:
        self._do(f"cannot add address {address} to {ifname}", self._links.add_address,
                 self._index(ifname), str(address.ip), address.network.prefixlen)

    def mac(self, ifname: str) -> str:
        return self._links.mac(self._index(ifname))

    def add_route(self, dst: IPv4Network, via: IPv4Address) -> None:
        self._do(f"cannot add route {dst} via {via}", self._links.add_route, str(dst), str(via))


# --- commands inside a namespace ---------------------------------------------------

def exec_argv(netns: str, argv: list[str]) -> list[str]:
    """The command line that runs ``argv`` inside ``netns`` (``ip netns exec``, which
    execs the command: its PID is the command's PID)."""
    return ["ip", "netns", "exec", netns, *argv]


def _run_in(netns: str, argv: list[str], what: str) -> None:
    proc = subprocess.run(exec_argv(netns, argv), capture_output=True, text=True)
    if proc.returncode != 0:
        raise TestbedError(f"{what} in {netns} failed: {(proc.stderr or proc.stdout).strip()}")


def sysctl(netns: str, key: str, value) -> None:
    """``sysctl -w KEY=VALUE`` inside ``netns`` (only ``net.*`` keys are per namespace)."""
    _run_in(netns, ["sysctl", "-q", "-w", f"{key}={value}"], f"sysctl {key}={value}")


def has_ipv6() -> bool:
    return Path("/proc/sys/net/ipv6").exists()


def set_offloads(netns: str, ifname: str, *, gro: bool, tx_checksum: bool) -> None:
    """``ethtool -K IFNAME gro on|off tx on|off`` inside ``netns``."""
    onoff = {True: "on", False: "off"}
    _run_in(netns, ["ethtool", "-K", ifname, "gro", onoff[gro], "tx", onoff[tx_checksum]],
            f"ethtool -K {ifname}")


def socket_in(netns: str, family: int, type_: int, proto: int = 0) -> socket.socket:
    """A socket created inside ``netns``; it stays there whichever thread uses it.

    setns(2) changes only the calling thread's namespace, so a short-lived thread
    enters the namespace, opens the socket and ends."""
    result: dict[str, object] = {}

    def enter_and_open():
        try:
            netlink.enter_netns(netns)
            result["sock"] = socket.socket(family, type_, proto)
        except BaseException as exc:  # handed to the caller's thread
            result["error"] = exc

    worker = threading.Thread(target=enter_and_open, name=f"setns-{netns}")
    worker.start()
    worker.join()
    if "error" in result:
        raise TestbedError(f"cannot open a socket in {netns}: {_explain(result['error'])}")
    return result["sock"]  # type: ignore[return-value]
