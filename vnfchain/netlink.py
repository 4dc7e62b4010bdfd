"""Netlink in plain words, in any network namespace: vnfchain's only pyroute2 user.

Calls mirror the ``ip`` commands they replace::

    ifindex("dut-lan", "vc-pvp-dut")              # ip -n vc-pvp-dut link show dut-lan
    xdp_attach(index, fd, "native", "vc-pvp-dut") # ip -n vc-pvp-dut link set dev IF xdpdrv ...
    create_netns("vc-pvp-dut")                    # ip netns add vc-pvp-dut
    with Links() as root:                         # ip link ...
        root.add_veth("vct123a", "vct123b")       #   add vct123a type veth peer vct123b
    with Links("vc-pvp-dut") as ns:               # ip -n vc-pvp-dut ...
        ns.rename(ns.index("vct123a"), "dut-lan") #   link set vct123a name dut-lan

The chain engine asks for an ifindex or an attach/detach here; the test bed
(testbed/netlink.py) builds namespaces, links and addresses. Errors are
pyroute2's ``NetlinkError`` (its ``code`` is the errno) or ``OSError``, for the
caller to put in its own words; only a missing namespace named by a chain is
an ``AttachError`` here.
"""
from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2 import netns as _netns
from pyroute2.netlink.exceptions import NetlinkError

from .errors import AttachError

__all__ = ["NETNS_DIR", "NetlinkError", "Links", "netns_exists", "list_netns", "create_netns",
           "remove_netns", "enter_netns", "where", "ifindex", "xdp_state", "find_xdp", "xdp_attach",
           "xdp_detach", "ipv4_addresses"]

NETNS_DIR = Path("/run/netns")
XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
XDP_FLAGS_REPLACE = 1 << 4
MODE_FLAGS = {"native": XDP_FLAGS_DRV_MODE, "generic": XDP_FLAGS_SKB_MODE}
# IFLA_XDP_ATTACHED values, as numbers or as pyroute2 names them (xdpgeneric since 0.9; skb, hw before)
ATTACHED_MODES = {1: "native", 2: "generic", 3: "offload", "xdp": "native", "xdpgeneric": "generic",
                  "xdpoffload": "offload", "skb": "generic", "hw": "offload"}


# -- namespaces -----------------------------------------------------------------------

def netns_exists(netns: str | None) -> bool:
    """None is the root namespace, always there."""
    return netns is None or (NETNS_DIR / netns).exists()


def list_netns() -> list[str]:
    return sorted(_netns.listnetns())


def create_netns(name: str) -> None:
    """``ip netns add NAME``."""
    _netns.create(name)


def remove_netns(name: str) -> bool:
    """``ip netns del NAME``; the links inside go with it. False if it was not there."""
    if not netns_exists(name):
        return False
    try:
        _netns.remove(name)
    except FileNotFoundError:
        return False
    return True


def enter_netns(name: str) -> None:
    """Move the calling thread (only) into namespace ``name`` (setns(2))."""
    _netns.setns(str(NETNS_DIR / name), flags=0, fork=False)


def where(netns: str | None) -> str:
    return f"network namespace '{netns}'" if netns else "the root network namespace"


# -- links, addresses, routes in one namespace ----------------------------------------

class Links:
    """``ip [-n NETNS] link|addr|route ...`` in one existing namespace (None: the
    root one), interfaces by index; use as a context manager."""

    def __init__(self, netns: str | None = None):
        self.netns = netns
        self._ipr = IPRoute(netns=netns, flags=0) if netns else IPRoute()  # flags=0: never create it

    def __enter__(self) -> "Links":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._ipr.close()

    def index(self, ifname: str) -> int | None:
        found = self._ipr.link_lookup(ifname=ifname)
        return found[0] if found else None

    def names(self) -> list[str]:
        return [link.get("ifname") or "" for link in self._ipr.get_links()]

    def xdp_programs(self) -> list[tuple[str, int, tuple[int, str]]]:
        """(interface, ifindex, (program id, mode)) of every link with an XDP program."""
        links = [(link.get_attr("IFLA_IFNAME"), link["index"], _xdp_of(link)) for link in self._ipr.get_links()]
        return [link for link in links if link[2]]

    def xdp(self, index: int) -> tuple[int, str] | None:
        """(program id, mode) of the XDP program on an interface, or None."""
        links = self._ipr.link("get", index=index)
        return _xdp_of(links[0]) if links else None

    def set_xdp(self, index: int, prog_fd: int, flags: int, expected_fd: int | None = None) -> None:
        attrs = [("IFLA_XDP_FD", prog_fd)]
        if expected_fd is not None:
            attrs.append(("IFLA_XDP_EXPECTED_FD", expected_fd))
        attrs.append(("IFLA_XDP_FLAGS", flags))
        self._ipr.link("set", index=index, xdp={"attrs": attrs})

    def add_veth(self, name: str, peer: str) -> None:
        self._ipr.link("add", ifname=name, kind="veth", peer={"ifname": peer})

    def move(self, index: int, netns: str) -> None:
        self._ipr.link("set", index=index, net_ns_fd=netns)

    def delete(self, index: int) -> None:
        self._ipr.link("del", index=index)

    def set_up(self, index: int) -> None:
        self._ipr.link("set", index=index, state="up")

    def rename(self, index: int, name: str) -> None:
        self._ipr.link("set", index=index, ifname=name)

    def set_mtu(self, index: int, mtu: int) -> None:
        self._ipr.link("set", index=index, mtu=mtu)

    def add_bridge(self, name: str) -> None:
        self._ipr.link("add", ifname=name, kind="bridge")

    def set_master(self, index: int, master: int) -> None:
        self._ipr.link("set", index=index, master=master)

    def mac(self, index: int) -> str:
        return self._ipr.link("get", index=index)[0].get("IFLA_ADDRESS")

    def add_address(self, index: int, address: str, prefixlen: int) -> None:
        self._ipr.addr("add", index=index, address=address, prefixlen=prefixlen)

    def ipv4_addresses(self, index: int) -> list[str]:
        return [a.get_attr("IFA_ADDRESS") for a in self._ipr.get_addr(family=2, index=index)]

    def add_route(self, dst: str, gateway: str) -> None:
        self._ipr.route("add", dst=dst, gateway=gateway)


@contextlib.contextmanager
def route(netns: str | None):
    """``Links`` of a namespace a chain names; AttachError when it is not there."""
    if not netns_exists(netns):
        raise AttachError(f"network namespace '{netns}' does not exist; create it "
                          f"(`ip netns add {netns}` or `vnfchain testbed up`) or fix 'netns:'")
    with Links(netns) as links:
        yield links


# -- what the chain engine asks -------------------------------------------------------

def ifindex(ifname: str, netns: str | None = None) -> int | None:
    with route(netns) as links:
        return links.index(ifname)


def xdp_state(index: int, netns: str | None = None) -> tuple[int, str] | None:
    """(program id, mode) of the XDP program on an interface, or None."""
    with route(netns) as links:
        return links.xdp(index)


def find_xdp(prog_ids: set[int]) -> list[dict]:
    """Every interface of the root and the named network namespaces that runs one
    of ``prog_ids``: [{interface, netns, ifindex, mode}]."""
    try:
        named = sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        named = []
    found = []
    for netns in [None, *named]:
        try:
            with route(netns) as links:
                programs = links.xdp_programs()
        except (AttachError, NetlinkError, OSError):   # a namespace that went away meanwhile
            continue
        found += [{"interface": name, "netns": netns, "ifindex": index, "mode": mode}
                  for name, index, (prog_id, mode) in programs if prog_id in prog_ids]
    return found


def _xdp_of(link) -> tuple[int, str] | None:
    xdp = link.get_attr("IFLA_XDP")
    if not xdp:
        return None
    attrs = dict(xdp["attrs"]) if isinstance(xdp, dict) else {k: v for k, v in xdp.get("attrs", [])}
    mode = attrs.get("IFLA_XDP_ATTACHED")
    if not mode:
        return None
    return attrs.get("IFLA_XDP_PROG_ID", 0), ATTACHED_MODES.get(mode, str(mode))


def xdp_attach(index: int, prog_fd: int, mode: str, netns: str | None = None,
               replace_fd: int | None = None) -> None:
    """Attach (or atomically replace ``replace_fd`` with) a program; never
    overwrites a program someone else attached."""
    flags = MODE_FLAGS[mode] | (XDP_FLAGS_UPDATE_IF_NOEXIST if replace_fd is None else XDP_FLAGS_REPLACE)
    with route(netns) as links:
        links.set_xdp(index, prog_fd, flags, expected_fd=replace_fd)


def xdp_detach(index: int, mode: str, netns: str | None = None, expected_fd: int | None = None) -> bool:
    """Remove the XDP program; with ``expected_fd`` only if it is that program.
    Returns False when there was nothing (of ours) to remove."""
    flags = MODE_FLAGS[mode] | (XDP_FLAGS_REPLACE if expected_fd is not None else 0)
    try:
        with route(netns) as links:
            links.set_xdp(index, -1, flags, expected_fd=expected_fd)
    except NetlinkError as exc:
        if exc.code in (errno.EEXIST, errno.ENODEV, errno.EINVAL, errno.EBUSY):
            return False
        raise
    except AttachError:
        return False  # the namespace is gone, and its interfaces with it
    return True


def ipv4_addresses(ifname: str, netns: str | None = None) -> list[str]:
    """The IPv4 addresses of an interface, primary first."""
    with route(netns) as links:
        index = links.index(ifname)
        return links.ipv4_addresses(index) if index else []
