"""Interfaces and XDP attachments, through pyroute2 (netlink), in any netns.

The only module that speaks netlink for the chain engine: everything else asks
for an ifindex or an attach/detach in plain words.
"""
from __future__ import annotations

import contextlib
import errno
import os

from pyroute2 import IPRoute, NetNS
from pyroute2.netlink.exceptions import NetlinkError

from .errors import AttachError

XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
XDP_FLAGS_REPLACE = 1 << 4
MODE_FLAGS = {"native": XDP_FLAGS_DRV_MODE, "generic": XDP_FLAGS_SKB_MODE}
# IFLA_XDP_ATTACHED values, as numbers or as pyroute2 names them
ATTACHED_MODES = {1: "native", 2: "generic", 3: "offload", "xdp": "native", "skb": "generic", "hw": "offload"}


def netns_exists(netns: str | None) -> bool:
    return netns is None or os.path.exists(f"/run/netns/{netns}")


@contextlib.contextmanager
def route(netns: str | None):
    """IPRoute in the root namespace, NetNS(netns) elsewhere."""
    if not netns_exists(netns):
        raise AttachError(f"network namespace '{netns}' does not exist; create it "
                          f"(`ip netns add {netns}` or `vnfchain testbed up`) or fix 'netns:'")
    handle = NetNS(netns, flags=0) if netns else IPRoute()  # flags=0: never create it
    try:
        yield handle
    finally:
        handle.close()


def where(netns: str | None) -> str:
    return f"network namespace '{netns}'" if netns else "the root network namespace"


def ifindex(ifname: str, netns: str | None = None) -> int | None:
    with route(netns) as ipr:
        found = ipr.link_lookup(ifname=ifname)
    return found[0] if found else None


def xdp_state(index: int, netns: str | None = None) -> tuple[int, str] | None:
    """(program id, mode) of the XDP program on an interface, or None."""
    with route(netns) as ipr:
        links = ipr.link("get", index=index)
    return _xdp_of(links[0]) if links else None


def find_xdp(prog_ids: set[int]) -> list[dict]:
    """Every interface of the root and the named network namespaces that runs one
    of ``prog_ids``: [{interface, netns, ifindex, mode}]."""
    try:
        named = sorted(os.listdir("/run/netns"))
    except FileNotFoundError:
        named = []
    found = []
    for netns in [None, *named]:
        try:
            with route(netns) as ipr:
                links = ipr.get_links()
        except (AttachError, NetlinkError, OSError):   # a namespace that went away meanwhile
            continue
        for link in links:
            state = _xdp_of(link)
            if state and state[0] in prog_ids:
                found.append({"interface": link.get_attr("IFLA_IFNAME"), "netns": netns,
                              "ifindex": link["index"], "mode": state[1]})
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
    flags = MODE_FLAGS[mode]
    attrs = [("IFLA_XDP_FD", prog_fd)]
    if replace_fd is None:
        flags |= XDP_FLAGS_UPDATE_IF_NOEXIST
    else:
        flags |= XDP_FLAGS_REPLACE
        attrs.append(("IFLA_XDP_EXPECTED_FD", replace_fd))
    attrs.append(("IFLA_XDP_FLAGS", flags))
    with route(netns) as ipr:
        ipr.link("set", index=index, xdp={"attrs": attrs})


def xdp_detach(index: int, mode: str, netns: str | None = None, expected_fd: int | None = None) -> bool:
    """Remove the XDP program; with ``expected_fd`` only if it is that program.
    Returns False when there was nothing (of ours) to remove."""
    flags = MODE_FLAGS[mode]
    attrs = [("IFLA_XDP_FD", -1)]
    if expected_fd is not None:
        flags |= XDP_FLAGS_REPLACE
        attrs.append(("IFLA_XDP_EXPECTED_FD", expected_fd))
    attrs.append(("IFLA_XDP_FLAGS", flags))
    try:
        with route(netns) as ipr:
            ipr.link("set", index=index, xdp={"attrs": attrs})
    except NetlinkError as exc:
        if exc.code in (errno.EEXIST, errno.ENODEV, errno.EINVAL, errno.EBUSY):
            return False
        raise
    except AttachError:
        return False  # the namespace is gone, and its interfaces with it
    return True


def ipv4_addresses(ifname: str, netns: str | None = None) -> list[str]:
    """The IPv4 addresses of an interface, primary first."""
    index = ifindex(ifname, netns)
    if not index:
        return []
    with route(netns) as ipr:
        return [a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(family=2, index=index)]
