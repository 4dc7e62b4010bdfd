"""Frame helpers for packet tests: fixed Ethernet addresses, checksums to fill
into hand-built frames, checksum checks."""
from __future__ import annotations

import struct

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


def pseudo_header(src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    """The TCP/UDP/ICMPv6 pseudo header: IPv4 when the addresses are 4 bytes, else IPv6."""
    if len(src) == 4:
        return src + dst + struct.pack("!BBH", 0, proto, length)
    return src + dst + struct.pack("!I3xB", length, proto)


def with_checksum(data: bytes, at: int, pseudo: bytes = b"", udp: bool = False) -> bytes:
    """``data`` with the Internet checksum of ``pseudo + data`` written at byte ``at``
    (a UDP checksum of 0 is sent as 0xffff: 0 would mean "none")."""
    blob = pseudo + data + (b"\0" if len(data) % 2 else b"")
    total = sum(struct.unpack(f"!{len(blob) // 2}H", blob))
    while total >> 16:
        total = (total & 0xffff) + (total >> 16)
    csum = ~total & 0xffff
    if udp and csum == 0:
        csum = 0xffff
    return data[:at] + struct.pack("!H", csum) + data[at + 2:]
