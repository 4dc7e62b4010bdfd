"""Frame helpers for packet tests: fixed Ethernet addresses, checksum checks."""
from __future__ import annotations

from scapy.layers.inet import UDP
from scapy.layers.l2 import Ether


def eth(p):
    return Ether(src="02:00:00:00:01:02", dst="02:00:00:00:01:01") / p


def checksums_valid(frame: bytes) -> bool:
    """Recompute every checksum scapy knows (each IPv4 header, TCP, UDP, ICMP,
    ICMPv6, inner packets too) and compare with the frame's."""
    rebuilt = Ether(frame)
    layer = rebuilt
    while layer:
        for field in ("chksum", "cksum"):
            if field in layer.fields and not (isinstance(layer, UDP) and layer.chksum == 0):
                setattr(layer, field, None)
        layer = layer.payload if layer.payload else None
    return bytes(Ether(bytes(rebuilt))) == frame
