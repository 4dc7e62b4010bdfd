"""DPI cost per scanned byte: ns/packet through BPF_PROG_TEST_RUN for UDP
payloads of 64 to 1,024 bytes that match no signature (so every byte is
scanned), beside the same chain's cost for an empty payload.

    sudo .venv/bin/python perf/bench_dpi.py [--repeat 100000] [--rounds 5]

The per-byte figure is the slope between the shortest and the longest
payload; the issue's goal is at most 3 ns per byte. Writes
perf/results/dpi-per-byte.md.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from vnfchain import Chain  # noqa: E402
from vnfchain.testrun import run_xdp  # noqa: E402

SIZES = (0, 64, 256, 512, 1024)
RESULTS = Path(__file__).resolve().parent / "results"


def chain_yaml(name: str) -> str:
    rng = random.Random(7)
    sigs = [f'      - {{id: {i + 1}, content: "|{rng.getrandbits(32):08x}|", action: drop}}' for i in range(60)]
    return (f"name: {name}\nfunctions:\n  dpi:\n    type: dpi\n    max_scan: 1024\n    signatures:\n"
            + "\n".join(sigs) + "\n")


def frame(size: int) -> bytes:
    payload = bytes((i * 7) % 251 for i in range(size))   # matches none of the random 4-byte contents
    return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
                 / IP(src="198.18.1.2", dst="198.18.2.2") / UDP(sport=1, dport=9) / payload)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    dep = Chain.from_yaml_text(chain_yaml(f"vcb{os.getpid()}-dpi")).deploy(attach=[])
    try:
        fd = dep.entry_fd()
        frames = {n: frame(n) for n in SIZES}
        for n, f in frames.items():
            assert run_xdp(fd, f).action == "XDP_PASS", n
        samples = {n: [] for n in SIZES}
        for _ in range(args.rounds):
            for n, f in frames.items():
                samples[n].append(run_xdp(fd, f, repeat=args.repeat).duration_ns)
        os.close(fd)
    finally:
        dep.undeploy()
    median = {n: statistics.median(v) for n, v in samples.items()}
    per_byte = (median[SIZES[-1]] - median[SIZES[1]]) / (SIZES[-1] - SIZES[1])
    data = {"when": time.strftime("%Y-%m-%d %H:%M:%S"), "kernel": os.uname().release, "repeat": args.repeat,
            "rounds": args.rounds, "ns_per_packet": median, "ns_per_byte": per_byte}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "dpi-per-byte.json").write_text(json.dumps(data, indent=2) + "\n")
    lines = ["# DPI cost per scanned byte (BPF_PROG_TEST_RUN, 60 signatures, max_scan 1024)", "",
             f"{data['when']}, kernel {data['kernel']}, {args.repeat} repetitions x {args.rounds} "
             "interleaved rounds (median). UDP payloads no signature matches, so every byte is scanned.", "",
             f"Per scanned byte: {per_byte:.2f} ns (slope from {SIZES[1]} to {SIZES[-1]} bytes; goal: at most 3).",
             "", "| payload bytes | ns/packet |", "|---:|---:|"]
    lines += [f"| {n} | {median[n]:.0f} |" for n in SIZES]
    (RESULTS / "dpi-per-byte.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
