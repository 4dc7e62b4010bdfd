"""Chain overhead: ns/packet through BPF_PROG_TEST_RUN for chains of 1..32
counter functions, tail-call against fused, beside an empty XDP program.

    sudo .venv/bin/python perf/bench_chain.py [--repeat 200000] [--rounds 7]

Every configuration is measured in every round, interleaved, and the median
round is kept: the machines are shared and noisy, so the figures that count are
the ratios within one run (per-hop cost, fused vs tail-call), not the absolute
nanoseconds. Writes perf/results/chain-length.md and .json.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from vnfchain import Chain  # noqa: E402
from results_io import save, stamp  # noqa: E402  (beside this script)
from vnfchain.testrun import run_xdp  # noqa: E402

LENGTHS = (1, 2, 4, 8, 16, 32)
PACKET = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src="198.18.1.2", dst="198.18.2.2") / UDP(sport=1024, dport=9) / (b"x" * 18))


def chain_yaml(name: str, length: int, mode: str) -> str:
    lines = [f"name: {name}", f"mode: {mode}", "functions:"]
    for i in range(length):
        nxt = f", next: c{i + 1}" if i + 1 < length else ""
        lines.append(f"  c{i}: {{type: counter{nxt}}}")
    return "\n".join(lines) + "\n"


def empty_program():
    from bcc import BPF
    bpf = BPF(text=b"int empty(struct xdp_md *ctx) { return XDP_PASS; }")
    return bpf, bpf.load_func(b"empty", BPF.XDP).fd


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=200_000, help="test-run repetitions per measurement")
    ap.add_argument("--rounds", type=int, default=7, help="interleaved rounds; the median is kept")
    args = ap.parse_args()

    bpf, empty_fd = empty_program()
    deployments = {}
    try:
        for mode in ("tailcall", "fused"):
            for n in LENGTHS:
                name = f"vcb{os.getpid()}-{mode[0]}{n}"
                deployments[(mode, n)] = Chain.from_yaml_text(chain_yaml(name, n, mode)).deploy(attach=[])
        fds = {key: dep.entry_fd() for key, dep in deployments.items()}
        samples: dict = {key: [] for key in fds}
        samples["empty"] = []
        for _ in range(args.rounds):
            samples["empty"].append(run_xdp(empty_fd, PACKET, repeat=args.repeat).duration_ns)
            for key, fd in fds.items():
                samples[key].append(run_xdp(fd, PACKET, repeat=args.repeat).duration_ns)
        for fd in fds.values():
            os.close(fd)
    finally:
        for dep in deployments.values():
            dep.undeploy()
    report(samples, args)


def report(samples: dict, args) -> None:
    median = {key: statistics.median(v) for key, v in samples.items()}
    base = median["empty"]
    rows = []
    for n in LENGTHS:
        tail, fused = median[("tailcall", n)], median[("fused", n)]
        rows.append({"functions": n, "tailcall_ns": tail, "fused_ns": fused,
                     "tailcall_over_empty": tail / base, "fused_over_empty": fused / base,
                     "tailcall_over_fused": tail / fused})
    slope = {mode: (median[(mode, LENGTHS[-1])] - median[(mode, LENGTHS[0])]) / (LENGTHS[-1] - LENGTHS[0])
             for mode in ("tailcall", "fused")}
    data = stamp(
                 repeat=args.repeat, rounds=args.rounds, empty_ns=base,
                 ns_per_function=slope, rows=rows)
    lines = [
        "# Chain overhead by length (BPF_PROG_TEST_RUN)",
        "",
        f"{data['when']}, kernel {data['kernel']}, {args.repeat} repetitions x {args.rounds} "
        f"interleaved rounds (median). Chains of `counter` functions; every function counts "
        f"the packet in its own per-CPU map and in the chain's per-function counters.",
        "",
        f"Empty XDP program (the test-run floor): {base:.0f} ns/packet.",
        f"Each added function costs {slope['tailcall']:.1f} ns in tail-call mode and "
        f"{slope['fused']:.1f} ns fused (slope from 1 to {LENGTHS[-1]} functions).",
        "",
        "| functions | tail-call ns | fused ns | tail-call / empty | fused / empty | tail-call / fused |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['functions']} | {r['tailcall_ns']:.0f} | {r['fused_ns']:.0f} | "
                     f"{r['tailcall_over_empty']:.2f} | {r['fused_over_empty']:.2f} | "
                     f"{r['tailcall_over_fused']:.2f} |")
    save("chain-length", data, lines)


if __name__ == "__main__":
    main()
