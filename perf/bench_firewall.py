"""Firewall scaling: ns/packet through BPF_PROG_TEST_RUN for 10, 100, 1,000 and
10,000 rules, for a packet the last rule matches and one no rule matches.

    sudo .venv/bin/python perf/bench_firewall.py [--repeat 200000] [--rounds 7]

The rules are random 5-tuple ACL entries (source/destination prefixes inside
198.18.0.0/15, protocol, destination port or range), the kind an edge ACL
holds; none of them matches the probe packets except the last one, which is
written to match the "last" packet. Every configuration is measured in every
round, interleaved; the median round is kept and the figures that count are
the ratios to the 10-rule firewall. Writes perf/results/firewall-scaling.md.
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from vnfchain import Chain  # noqa: E402
from results_io import save, stamp  # noqa: E402  (beside this script)
from vnfchain.testrun import run_xdp  # noqa: E402

SIZES = (10, 100, 1000, 10000)
LAST = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src="198.19.200.1", dst="198.19.201.1") / TCP(sport=4242, dport=4242, flags="S"))
MISS = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src="198.19.250.1", dst="198.19.251.1") / TCP(sport=4343, dport=4343, flags="S"))


def random_rule(rng: random.Random) -> str:
    src = f"198.18.{rng.randrange(256)}.{rng.randrange(0, 256, 16)}/{rng.choice([24, 28, 32])}"
    dst = f"198.19.{rng.randrange(128)}.{rng.randrange(256)}/{rng.choice([24, 30, 32])}"
    proto = rng.choice(["tcp", "udp"])
    lo = rng.randrange(1, 60000)
    port = rng.choice([str(lo), f'"{lo}-{lo + rng.randrange(1, 200)}"'])
    action = rng.choice(["allow", "drop"])
    return f"      - {{action: {action}, src: {src}, dst: {dst}, proto: {proto}, dport: {port}}}"


def chain_yaml(name: str, n: int) -> str:
    rng = random.Random(n)
    rules = [random_rule(rng) for _ in range(n - 1)]
    rules.append("      - {action: allow, src: 198.19.200.0/24, dst: 198.19.201.0/24, proto: tcp, dport: 4242}")
    return (f"name: {name}\nfunctions:\n  fw:\n    type: firewall\n    default: drop\n    rules:\n"
            + "\n".join(rules) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    deployments = {}
    try:
        for n in SIZES:
            name = f"vcb{os.getpid()}-fw{n}"
            started = time.monotonic()
            deployments[n] = Chain.from_yaml_text(chain_yaml(name, n)).deploy(attach=[])
            print(f"{n} rules deployed in {time.monotonic() - started:.1f} s", file=sys.stderr)
        fds = {n: dep.entry_fd() for n, dep in deployments.items()}
        for n, fd in fds.items():   # the probes decide as designed
            assert run_xdp(fd, LAST).action == "XDP_PASS", n
            assert run_xdp(fd, MISS).action == "XDP_DROP", n
        samples = {(n, probe): [] for n in SIZES for probe in ("last", "miss")}
        for _ in range(args.rounds):
            for n, fd in fds.items():
                samples[(n, "last")].append(run_xdp(fd, LAST, repeat=args.repeat).duration_ns)
                samples[(n, "miss")].append(run_xdp(fd, MISS, repeat=args.repeat).duration_ns)
        for fd in fds.values():
            os.close(fd)
    finally:
        for dep in deployments.values():
            dep.undeploy()
    report({k: statistics.median(v) for k, v in samples.items()}, args)


def report(median: dict, args) -> None:
    base = {probe: median[(SIZES[0], probe)] for probe in ("last", "miss")}
    rows = [{"rules": n, **{f"{p}_ns": median[(n, p)] for p in ("last", "miss")},
             **{f"{p}_ratio": median[(n, p)] / base[p] for p in ("last", "miss")}} for n in SIZES]
    data = stamp(
                 repeat=args.repeat, rounds=args.rounds, rows=rows)
    lines = [
        "# Firewall scaling (BPF_PROG_TEST_RUN, tail-call chain of one firewall)",
        "",
        f"{data['when']}, kernel {data['kernel']}, {args.repeat} repetitions x {args.rounds} "
        "interleaved rounds (median). Random 5-tuple ACLs; `last`: a packet only the last rule "
        "matches; `miss`: a packet no rule matches (the default drops it). Ratios are to 10 rules; "
        "the issue's target is at most 2x at 10,000 rules.",
        "",
        "| rules | last ns | miss ns | last / 10 rules | miss / 10 rules |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['rules']} | {r['last_ns']:.0f} | {r['miss_ns']:.0f} | "
                     f"{r['last_ratio']:.2f} | {r['miss_ratio']:.2f} |")
    save("firewall-scaling", data, lines)


if __name__ == "__main__":
    main()
