"""What makes a correct chain lose packets on the machine it runs on, found
before the packets are lost: each pitfall names the interface and the fix.

- A veth drops frames that XDP redirects or transmits into it unless its peer
  can take them: the peer needs NAPI (GRO on, or an XDP program of its own);
  XDP_TX back out of a veth needs an XDP program on the peer, GRO is not enough.
- A veth whose peer sends with TX checksum offload on hands over TCP/UDP with
  the checksum left for hardware it does not have; XDP forwards such frames as
  they are, and the next host drops them.
- Source NAT to the host's own address followed by ``exit: pass``: the kernel
  drops a packet that arrives with one of its own addresses as the source (a
  martian); the chain must forward what the NAT rewrote.

``chain_pitfalls(spec)`` needs nothing but the spec (``vnfchain validate``);
``machine_pitfalls(spec)`` reads the interfaces (root, iproute2 and ethtool):
``vnfchain deploy`` and ``vnfchain doctor --chain`` print both.
"""
from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass

import networkx as nx

REDIRECTING = {"forward", "nat", "loadbalancer"}   # function types that send frames out themselves


@dataclass(frozen=True)
class Pitfall:
    where: str          # an interface (IF@NETNS) or a function
    problem: str
    fix: str

    def __str__(self) -> str:
        return f"{self.where}: {self.problem}; fix: {self.fix}"


def chain_pitfalls(spec) -> list[Pitfall]:
    out = []
    if spec.exit == "pass":
        g = nx.DiGraph()
        g.add_nodes_from(f.name for f in spec.functions)
        g.add_edges_from((f.name, t) for f in spec.functions for _, t in f.next)
        kinds = {f.name: f.type for f in spec.functions}
        for f in spec.functions:
            if f.type == "nat" and f.params.snat and _reaches_exit_unforwarded(g, f.name, kinds):
                out.append(Pitfall(
                    f"function '{f.name}'",
                    "source-NATed packets reach the chain's end and exit: pass hands them to the kernel, "
                    "which drops a packet carrying one of its own addresses as source (a martian)",
                    f"send what '{f.name}' rewrites to a forward function (next: out; out: {{type: forward}})"))
    return out


def _reaches_exit_unforwarded(g: nx.DiGraph, start: str, kinds: dict[str, str]) -> bool:
    """Is there a path from start to a function without successors that meets no forward?"""
    stack, seen = [start], set()
    while stack:
        node = stack.pop()
        if node in seen or (node != start and kinds[node] == "forward"):
            continue
        seen.add(node)
        successors = list(g.successors(node))
        if not successors:
            return True
        stack += successors
    return False


def _may_send(spec) -> tuple[bool, bool]:
    """(redirects frames to other interfaces, transmits frames back out of their own)."""
    types = {f.type for f in spec.functions}
    tx = spec.exit == "tx" or any(f.type == "counter" and f.params.verdict == "tx" for f in spec.functions)
    return bool(types & REDIRECTING), tx


def machine_pitfalls(spec, attach=None) -> list[Pitfall]:
    """The veth pitfalls of the interfaces the chain runs on (``attach`` overrides
    the spec's); interfaces that cannot be read are left to deploy to report."""
    redirects, transmits = _may_send(spec)
    if not (redirects or transmits):
        return []
    out = []
    for point in (attach if attach is not None else spec.attach):
        peer = _veth_peer(point.interface, point.netns)
        if peer is None:
            continue
        where = str(point)
        peer_name = f"{peer.name}@{peer.netns}" if peer.netns else peer.name
        ns = f"ip netns exec {peer.netns} " if peer.netns else ""
        if redirects and not peer.xdp and not peer.gro:
            out.append(Pitfall(where, f"frames the chain redirects out of {point.interface} are dropped: its "
                                      f"veth peer {peer_name} has neither GRO on nor an XDP program",
                               f"{ns}ethtool -K {peer.name} gro on"))
        if transmits and not peer.xdp:
            out.append(Pitfall(where, f"frames the chain transmits back out of {point.interface} (XDP_TX) are "
                                      f"dropped: its veth peer {peer_name} runs no XDP program (GRO is not "
                                      f"enough for XDP_TX)",
                               f"attach an XDP program to {peer_name}, or send with a forward function"))
        if redirects and peer.tx_checksum:
            out.append(Pitfall(where, f"TCP/UDP sent from {peer_name} leaves its checksum to offload it does not "
                                      f"have; forwarded by XDP, the next host drops it",
                               f"{ns}ethtool -K {peer.name} tx off"))
    return out


@dataclass(frozen=True)
class _Peer:
    name: str
    netns: str | None
    gro: bool
    tx_checksum: bool
    xdp: bool


def _ip_json(netns: str | None, *args: str):
    cmd = ["ip", "-j", *(["-n", netns] if netns else []), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not proc.stdout.strip():
        return None
    return json.loads(proc.stdout)


def _veth_peer(interface: str, netns: str | None) -> _Peer | None:
    links = _ip_json(netns, "-d", "link", "show", "dev", interface)
    if not links or links[0].get("linkinfo", {}).get("info_kind") != "veth":
        return None
    link = links[0]
    peer_ns = netns
    if "link_index" not in link:        # the peer is in the same namespace, named
        peers = _ip_json(netns, "-d", "link", "show", "dev", link["link"]) if "link" in link else None
        link = {"link_index": peers[0]["ifindex"]} if peers else {}
        if not link:
            return None
    if "link_netnsid" in link:
        ids = _ip_json(netns, "netns", "list-id") or []
        peer_ns = next((i.get("name") for i in ids if i.get("nsid") == link["link_netnsid"]), None)
        if peer_ns is None:
            return None    # a namespace without a name (a container's): not ours to read
    peers = _ip_json(peer_ns, "-d", "link", "show") or []
    peer = next((p for p in peers if p.get("ifindex") == link["link_index"]), None)
    if peer is None:
        return None
    features = _offloads(peer["ifname"], peer_ns)
    return _Peer(peer["ifname"], peer_ns, gro=features.get("generic-receive-offload", True),
                 tx_checksum=features.get("tx-checksumming", False), xdp="xdp" in peer)


def _offloads(interface: str, netns: str | None) -> dict[str, bool]:
    cmd = (["ip", "netns", "exec", netns] if netns else []) + ["ethtool", "-k", interface]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    out = {}
    for line in proc.stdout.splitlines():
        key, _, value = line.partition(":")
        if value.strip().startswith(("on", "off")):
            out[key.strip()] = value.strip().startswith("on")
    return out
