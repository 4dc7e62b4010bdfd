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


def internet_checksum(data: bytes) -> int:
    """RFC 1071: 0 when data holds a valid checksum."""
    if len(data) % 2:
        data += b"\0"
    total = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def spoofed_syns(count: int, dst: str, dport: int, seed: int = 1) -> list[bytes]:
    """``count`` TCP SYN frames to dst:dport from random sources in
    198.19.0.0/16 (benchmarking range, routed nowhere) and random ports, each
    a distinct flow with valid checksums: a spoofed SYN flood."""
    import ipaddress
    import random
    import struct

    rng = random.Random(seed)
    daddr = ipaddress.IPv4Address(dst).packed
    frames, seen = [], set()
    while len(frames) < count:
        saddr = bytes([198, 19, rng.randrange(256), rng.randrange(1, 255)])
        sport = rng.randrange(1024, 65536)
        if (saddr, sport) in seen:
            continue
        seen.add((saddr, sport))
        tcp = struct.pack("!HHIIBBHHH", sport, dport, rng.getrandbits(32), 0, 5 << 4, 0x02, 64240, 0, 0)
        pseudo = saddr + daddr + struct.pack("!BBH", 0, 6, len(tcp))
        tcp = tcp[:16] + internet_checksum(pseudo + tcp).to_bytes(2, "big") + tcp[18:]
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0, 64, 6, 0, saddr, daddr)
        ip = ip[:10] + internet_checksum(ip).to_bytes(2, "big") + ip[12:]
        frames.append(bytes.fromhex("020000000101" "020000000102" "0800") + ip + tcp)
    return frames
