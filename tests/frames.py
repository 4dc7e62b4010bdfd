"""Frame helpers for packet tests: fixed Ethernet addresses, checksum checks."""
from __future__ import annotations

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Ether


def eth(p):
    return Ether(src="02:00:00:00:01:02", dst="02:00:00:00:01:01") / p


def checksums_valid(frame: bytes) -> bool:
    """Recompute every checksum scapy knows (every IP layer, and the transport
    layers) and compare with the frame's."""
    pkt = Ether(frame)
    rebuilt = pkt.copy()
    layer = rebuilt
    while layer:
        if isinstance(layer, (IP, TCP, ICMP)) or (isinstance(layer, UDP) and layer.chksum != 0):
            layer.chksum = None
        layer = layer.payload if layer.payload else None
    return bytes(Ether(bytes(rebuilt))) == frame
