"""DPI cost per scanned byte: ns/packet through BPF_PROG_TEST_RUN for UDP
payloads of 64 to 1,024 bytes that match no signature (so every byte is
scanned), beside the same chain's cost for an empty payload; for 60 random
4-byte binary signatures and for 10,000 text signatures (vnfchain.dpi.synthetic),
each with a binary payload and a text payload (which walks the deep states of
the 10,000-signature automaton), all measured interleaved in one run.

    sudo .venv/bin/python perf/bench_dpi.py [--repeat 100000] [--rounds 5]

The per-byte figure is the slope between the shortest and the longest
payload; the issue's goal is at most 3 ns per byte. Writes
perf/results/dpi-per-byte.md (and .json).
"""
from __future__ import annotations

import argparse
import os
import random
import sys
from pathlib import Path

from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from vnfchain import Chain  # noqa: E402
from results_io import interleaved_medians, save, stamp  # noqa: E402  (beside this script)
from vnfchain.dpi import synthetic  # noqa: E402
from vnfchain.functions import dpi  # noqa: E402
from vnfchain.testrun import run_xdp  # noqa: E402

SIZES = (0, 64, 256, 512, 1024)
MAX_SCAN = 1024


def binary_signatures() -> list[dict]:
    rng = random.Random(7)
    return [{"id": i + 1, "content": f"|{rng.getrandbits(32):08x}|", "action": "drop"} for i in range(60)]


SETS = {"60 binary": binary_signatures(), "10,000 text": synthetic.signatures(10_000)}


def payload(kind: str, size: int) -> bytes:
    if kind == "binary":
        return bytes((i * 7) % 251 for i in range(size))   # matches none of the binary contents
    rng = random.Random(size)
    return bytes(rng.choice(synthetic.ALPHABET.encode()) for _ in range(size))


def frame(data: bytes) -> bytes:
    return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
                 / IP(src="198.18.1.2", dst="198.18.2.2") / UDP(sport=1, dport=9) / data)


def table_size(chain: Chain) -> str:
    automaton, _ = dpi._compiled(chain.spec.function("dpi").params)
    return (f"{automaton.states} states x {automaton.classes} byte classes = "
            f"{automaton.states * automaton.classes * 4 / 2**20:.1f} MiB table (map value of "
            f"{dpi._table_size(automaton) * 4 / 2**20:.2f} MiB)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    deps, sizes_of, columns = {}, {}, []
    try:
        for n, (label, sigs) in enumerate(SETS.items()):
            # the chain has no next: a packet no signature matches ends in XDP_PASS
            text = synthetic.chain_yaml(f"vcb{os.getpid()}-dpi{n}", sigs, MAX_SCAN).replace(
                "    next: out\n  out: {type: counter, verdict: tx}\n", "")
            chain = Chain.from_yaml_text(text)
            sizes_of[label] = table_size(chain)
            deps[label] = chain.deploy(attach=[])
            columns += [(label, kind) for kind in ("binary", "text")]
        fds = {label: dep.entry_fd() for label, dep in deps.items()}
        frames = {(label, kind, n): frame(payload(kind, n)) for label, kind in columns for n in SIZES}
        for (label, kind, n), f in frames.items():
            assert run_xdp(fds[label], f).action == "XDP_PASS", (label, kind, n, "a signature matched")
        median = interleaved_medians({key: (fds[key[0]], f) for key, f in frames.items()}, args.rounds, args.repeat)
        for fd in fds.values():
            os.close(fd)
    finally:
        for dep in deps.values():
            dep.undeploy()
    per_byte = {col: (median[(*col, SIZES[-1])] - median[(*col, SIZES[1])]) / (SIZES[-1] - SIZES[1])
                for col in columns}
    data = stamp(repeat=args.repeat,
                 rounds=args.rounds, max_scan=MAX_SCAN, tables=sizes_of,
                 ns_per_packet={f"{label} / {kind} / {n}": v for (label, kind, n), v in median.items()},
                 ns_per_byte={f"{label} / {kind}": v for (label, kind), v in per_byte.items()})
    head = " | ".join(f"{label} sigs, {kind} payload" for label, kind in columns)
    lines = [f"# DPI cost per scanned byte (BPF_PROG_TEST_RUN, max_scan {MAX_SCAN})", "",
             f"{data['when']}, kernel {data['kernel']}, {args.repeat} repetitions x {args.rounds} "
             "interleaved rounds (median), all columns in one run. UDP payloads no signature matches, "
             "so every byte is scanned. The machine is shared: expect a few percent of noise between runs.", "",
             *[f"- {label} signatures: {size}" for label, size in sizes_of.items()], "",
             "Per scanned byte (slope from 64 to 1024 bytes; goal: at most 3 ns): "
             + ", ".join(f"{label}/{kind} **{v:.2f} ns**" for (label, kind), v in per_byte.items()) + ".", "",
             f"| payload bytes | {head} |", "|---:|" + "---:|" * len(columns)]
    lines += [f"| {n} | " + " | ".join(f"{median[(*col, n)]:.0f}" for col in columns) + " |" for n in SIZES]
    save("dpi-per-byte", data, lines)


if __name__ == "__main__":
    main()
