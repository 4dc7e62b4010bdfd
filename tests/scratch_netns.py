"""A throwaway namespace of veth pairs for packet tests, always removed.

    with scratch_netns("vctx123", {"lan0": ["198.18.1.1/24"], "wan0": []},
                       forwarding=True) as (ns, index, ip):
        ip("neigh", "add", ...)        # `ip -n ns ...` for anything extra
        dep.run(packet, ingress_ifindex=index["lan0"], netns=ns)

Every named device gets a peer ``<name>p``; both ends are up. IPv6 is off,
so that no router solicitation reaches a chain attached there and is counted.
"""
from __future__ import annotations

import contextlib
import subprocess

from vnfchain import netlink


@contextlib.contextmanager
def scratch_netns(ns: str, devices: dict[str, list[str]], *, forwarding: bool = False, macs=None):
    def ip(*args):
        subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True)

    def sysctl(setting):
        subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw", setting], check=True)

    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        for key in ("all", "default"):
            sysctl(f"net.ipv6.conf.{key}.disable_ipv6=1")
        if forwarding:
            sysctl("net.ipv4.ip_forward=1")
        for dev, addresses in devices.items():
            mac = ["address", macs[dev]] if macs and dev in macs else []
            ip("link", "add", dev, *mac, "type", "veth", "peer", "name", dev + "p")
            for end in (dev, dev + "p"):
                ip("link", "set", end, "up")
            for address in addresses:
                ip("addr", "add", address, "dev", dev)
        yield ns, {dev: netlink.ifindex(dev, ns) for dev in devices}, ip
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
