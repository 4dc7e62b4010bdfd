"""Load balancer: Maglev disruption and spread, measured in the data plane, and
the cost per packet.

    sudo .venv/bin/python perf/bench_lb.py [--flows 20000] [--repeat 200000] [--rounds 7]

Disruption: for N backends, two chains are deployed — the service with all N
backends and with one removed — and the same random flows (distinct 5-tuples,
198.18.0.0/15 clients) are run through both with BPF_PROG_TEST_RUN; the figure
is the fraction of flows whose backend differs (ideal: 1/N, the removed
backend's own flows). Spread: the share each backend got of those flows with
equal weights (ideal 1/N) and with weights 1..N. The Python table's own
figures (all 65,537 slots) stand beside them.

Cost: ns/packet, interleaved rounds, median kept, beside a chain of one
counter function: a packet of a known flow (connection-table hit), a packet
not to a VIP. Writes perf/results/lb.md and lb.json.
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
from pathlib import Path

import yaml
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from vnfchain import Chain  # noqa: E402
from results_io import save, stamp  # noqa: E402  (beside this script)
from vnfchain.lb import maglev  # noqa: E402
from vnfchain.testrun import run_xdp  # noqa: E402

SIZES = (3, 5, 10, 20, 50)
VIP = "198.18.0.100"


def backend_ip(i: int) -> str:
    return f"198.19.{i // 200}.{10 + i % 200}"


def chain_yaml(name: str, backends: list[dict]) -> str:
    return yaml.safe_dump({"name": name, "functions": {"lb": {"type": "loadbalancer", "services": [
        {"vip": VIP, "port": 80, "backends": backends}]}}})


def flows(n: int) -> list[bytes]:
    rng = random.Random(7)
    base = bytearray(bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
                           / IP(src="198.18.1.1", dst=VIP) / TCP(sport=1, dport=80, flags="S")))
    out = []
    for _ in range(n):
        base[26:30] = bytes([198, 18, rng.randrange(256), rng.randrange(1, 255)])
        base[34:36] = rng.randrange(1024, 65536).to_bytes(2, "big")
        out.append(bytes(base))
    return out


def pick(fd: int, frames: list[bytes]) -> list[str]:
    return [str(IP(run_xdp(fd, f).data[14:]).dst) for f in frames]


def measure_maglev(args, say) -> list[dict]:
    frames = flows(args.flows)
    rows = []
    for n in SIZES:
        ips = [backend_ip(i) for i in range(n)]
        configs = {"all": [{"ip": ip} for ip in ips], "removed": [{"ip": ip} for ip in ips[1:]],
                   "weighted": [{"ip": ip, "weight": i + 1} for i, ip in enumerate(ips)]}
        chosen = {}
        for label, backends in configs.items():
            dep = Chain.from_yaml_text(chain_yaml(f"vcb{os.getpid()}-lb{label[0]}{n}", backends)).deploy(attach=[])
            try:
                fd = dep.entry_fd()
                chosen[label] = pick(fd, frames)
                os.close(fd)
            finally:
                dep.undeploy()
        moved = sum(a != b for a, b in zip(chosen["all"], chosen["removed"])) / len(frames)
        equal = [chosen["all"].count(ip) / len(frames) for ip in ips]
        weighted = [chosen["weighted"].count(ip) / len(frames) / ((i + 1) / (n * (n + 1) / 2))
                    for i, ip in enumerate(ips)]
        table = {label: maglev.build(tuple((i, f"{ip}:80", w) for i, (ip, w) in enumerate(
            (b["ip"], b.get("weight", 1)) for b in backends)), maglev.DEFAULT_SIZE)
            for label, backends in (("all", configs["all"]), ("removed", configs["removed"]))}
        renumbered = tuple(t + 1 if t != maglev.EMPTY else t for t in table["removed"])  # ids of ips[1:]
        table_moved = maglev.disruption(table["all"], renumbered)
        table_shares = maglev.shares(table["all"]).values()
        rows.append({"backends": n, "ideal": 1 / n, "moved": moved, "table_moved": table_moved,
                     "equal_min": min(equal) * n, "equal_max": max(equal) * n,
                     "table_min": min(table_shares) * n, "table_max": max(table_shares) * n,
                     "weighted_min": min(weighted), "weighted_max": max(weighted)})
        say(f"{n} backends: moved {moved:.4f} (ideal {1 / n:.4f})")
    return rows


def measure_cost(args, say) -> dict:
    lb = Chain.from_yaml_text(chain_yaml(f"vcb{os.getpid()}-lbc", [{"ip": backend_ip(i)} for i in range(10)]))
    base = Chain.from_yaml_text(f"name: vcb{os.getpid()}-cnt\nfunctions:\n  c: {{type: counter}}\n")
    deps = {"lb": lb.deploy(attach=[]), "counter": base.deploy(attach=[])}
    hit = flows(1)[0]
    other = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src="198.18.1.1", dst="198.18.9.9")
                  / TCP(sport=1, dport=80))
    try:
        fds = {k: d.entry_fd() for k, d in deps.items()}
        run_xdp(fds["lb"], hit)            # the flow is now in the connection table
        samples = {k: [] for k in ("lb hit", "lb not a VIP", "counter")}
        for _ in range(args.rounds):
            samples["lb hit"].append(run_xdp(fds["lb"], hit, repeat=args.repeat).duration_ns)
            samples["lb not a VIP"].append(run_xdp(fds["lb"], other, repeat=args.repeat).duration_ns)
            samples["counter"].append(run_xdp(fds["counter"], hit, repeat=args.repeat).duration_ns)
        for fd in fds.values():
            os.close(fd)
    finally:
        for d in deps.values():
            d.undeploy()
    say("cost measured")
    return {k: statistics.median(v) for k, v in samples.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flows", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()

    def say(text):
        print(text, file=sys.stderr)
    rows = measure_maglev(args, say)
    cost = measure_cost(args, say)
    report(rows, cost, args)


def report(rows, cost, args) -> None:
    data = stamp(flows=args.flows,
                 repeat=args.repeat, rounds=args.rounds, maglev=rows, cost_ns=cost)
    lines = [
        "# Load balancer: Maglev disruption, spread, cost",
        "",
        f"{data['when']}, kernel {data['kernel']}. Table size 65,537. Data-plane figures: {args.flows} random "
        "flows run through the deployed chain with BPF_PROG_TEST_RUN; table figures: all slots of the "
        "Python-built table.",
        "",
        "## Disruption: one backend of N removed",
        "",
        "Fraction of flows whose backend changed (ideal 1/N: only the removed backend's flows).",
        "",
        "| N | ideal 1/N | moved (data plane) | moved (table) | moved / ideal |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['backends']} | {r['ideal']:.4f} | {r['moved']:.4f} | {r['table_moved']:.4f} | "
                     f"{r['moved'] / r['ideal']:.2f} |")
    lines += [
        "",
        "## Spread",
        "",
        "Each backend's share divided by its ideal share (1.00 = exact): min and max over backends. "
        "Equal weights in the data plane and in the table; weights 1..N in the data plane.",
        "",
        "| N | equal, data plane | equal, table | weights 1..N, data plane |",
        "|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['backends']} | {r['equal_min']:.2f} – {r['equal_max']:.2f} | "
                     f"{r['table_min']:.3f} – {r['table_max']:.3f} | "
                     f"{r['weighted_min']:.2f} – {r['weighted_max']:.2f} |")
    lines += [
        "",
        "The data-plane spread includes the sampling noise of the flow count "
        f"(with {args.flows} flows and N = 50, one standard deviation is about "
        f"{((1 / 50 * 49 / 50 / args.flows) ** 0.5) * 50:.2f} of a share).",
        "",
        "## Cost per packet",
        "",
        f"{args.repeat} repetitions x {args.rounds} interleaved rounds (median); tail-call chain of one function.",
        "",
        "| packet | ns | ratio to a one-counter chain |",
        "|---|---:|---:|",
    ]
    for k, v in cost.items():
        lines.append(f"| {k} | {v:.0f} | {v / cost['counter']:.2f} |")
    save("lb", data, lines)


if __name__ == "__main__":
    main()
