"""Live change: the wall time of a `deploy` call that changes a running chain,
for each kind of change, in the same run.

    sudo .venv/bin/python perf/bench_live_change.py [--rounds 5]

A 4-function chain (firewall -> dpi -> load balancer -> forward) is deployed
on two veths of a namespace of its own and changed again and again, warm
(each change made once before the rounds): three config changes (a firewall
rule, a dpi signature, a backend's weight), two code changes (dpi max_scan,
the load balancer's idle timeout: compiled in), four topology changes (a
counter added and removed, tail-call -> fused and back). Each round makes
every change once, in turn, so that the load of a shared machine falls on
all of them alike; the median round is kept. Writes
perf/results/live-change.md and .json.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from results_io import save, stamp  # noqa: E402  (beside this script)
from vnfchain import Chain  # noqa: E402
from vnfchain.chain.deploy import undeploy  # noqa: E402


@dataclass(frozen=True)
class Knobs:
    blocked_port: int = 9
    signature: str = "/etc/passwd"
    weight: int = 1
    max_scan: int = 256
    idle_timeout: int = 300
    tap: bool = False
    mode: str = "tailcall"


def chain(name: str, ns: str, k: Knobs) -> str:
    functions = {
        "fw": {"type": "firewall", "default": "drop", "next": "tap" if k.tap else "dpi", "rules": [
            {"action": "drop", "proto": "tcp", "dport": k.blocked_port},
            {"action": "allow", "src": "198.18.1.0/24"}, {"action": "allow", "src": "198.18.2.0/24"}]},
        "dpi": {"type": "dpi", "max_scan": k.max_scan, "next": "lb",
                "signatures": [{"id": 1, "content": k.signature, "action": "drop"}]},
        "lb": {"type": "loadbalancer", "idle_timeout": k.idle_timeout, "next": "out", "services": [
            {"vip": "198.18.0.100", "port": 80, "proto": "tcp",
             "backends": [{"ip": "198.18.2.2", "weight": k.weight}, {"ip": "198.18.2.3"}]}]},
        "out": {"type": "forward"},
    }
    if k.tap:
        functions["tap"] = {"type": "counter", "next": "dpi"}
    return yaml.safe_dump({"name": name, "mode": k.mode, "functions": functions,
                           "attach": [{"interface": "lan0", "netns": ns}, {"interface": "wan0", "netns": ns}]})


# (what a user changes, the kind of change it is, the edit): in the order made,
# each from the state the one before left
CHANGES = [
    ("a firewall rule", "config", lambda k: replace(k, blocked_port=19 - k.blocked_port)),
    ("a dpi signature", "config",
     lambda k: replace(k, signature="/etc/shadow" if k.signature == "/etc/passwd" else "/etc/passwd")),
    ("a backend's weight", "config", lambda k: replace(k, weight=3 - k.weight)),
    ("dpi max_scan", "code", lambda k: replace(k, max_scan=768 - k.max_scan)),
    ("load balancer idle_timeout", "code", lambda k: replace(k, idle_timeout=601 - k.idle_timeout)),
    ("a counter added", "topology", lambda k: replace(k, tap=True)),
    ("the counter removed", "topology", lambda k: replace(k, tap=False)),
    ("tail-call -> fused", "topology", lambda k: replace(k, mode="fused")),
    ("fused -> tail-call", "topology", lambda k: replace(k, mode="tailcall")),
]


def namespace(ns: str) -> None:
    """lan0 and wan0, veths with their peers up, for the chain to attach to."""
    subprocess.run(["ip", "netns", "add", ns], check=True)
    for dev in ("lan0", "wan0"):
        subprocess.run(["ip", "-n", ns, "link", "add", dev, "type", "veth", "peer", "name", dev + "p"], check=True)
        for end in (dev, dev + "p"):
            subprocess.run(["ip", "-n", ns, "link", "set", end, "up"], check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5, help="rounds of every change; the median is kept")
    args = ap.parse_args()

    name, ns = f"vcb{os.getpid()}-live", f"vcb{os.getpid()}l"
    samples: dict[str, list[float]] = {what: [] for what, _, _ in CHANGES}
    namespace(ns)
    try:
        knobs = Knobs()
        Chain.from_yaml_text(chain(name, ns, knobs)).deploy()
        for r in range(args.rounds + 1):       # round 0 warms up: not kept
            for what, kind, edit in CHANGES:
                knobs = edit(knobs)
                spec = Chain.from_yaml_text(chain(name, ns, knobs))
                started = time.monotonic()
                dep = spec.deploy()
                seconds = time.monotonic() - started
                if dep.last_change != kind:
                    raise SystemExit(f"{what}: a {dep.last_change} change, not {kind}")
                if r:
                    samples[what].append(seconds)
            print(f"round {r}/{args.rounds}{' (warm-up)' if not r else ''}", file=sys.stderr)
    finally:
        try:
            undeploy(name)
        finally:
            subprocess.run(["ip", "netns", "del", ns], check=False)
    report(samples, args.rounds)


def report(samples: dict[str, list[float]], rounds: int) -> None:
    medians = {what: statistics.median(v) for what, v in samples.items()}
    kinds: dict[str, list[str]] = {}
    for what, kind, _ in CHANGES:
        kinds.setdefault(kind, []).append(what)
    data = stamp(rounds=rounds, seconds=samples, medians=medians)
    lines = [
        "# Live change: wall time of a `deploy` call, by kind of change", "",
        f"{data['when']}, kernel {data['kernel']}. A 4-function chain (firewall -> dpi -> load balancer -> "
        f"forward) on two veths, changed live by `deploy` from Python (no CLI start-up); each change "
        f"made once per round, in turn, warm; median of {rounds} rounds. Config changes that only touch a "
        f"dpi or a load balancer write pinned maps; a firewall change compiles the chain once to learn its "
        f"maps' layouts (BCC); a code change compiles and loads the changed function and swaps its slot; a "
        f"topology change compiles, loads and fills a whole generation and swaps both interfaces.", "",
        "| kind | fastest change, median s | slowest change, median s |", "|---|---:|---:|",
        *[f"| {kind} | {min(medians[w] for w in whats):.3f} | {max(medians[w] for w in whats):.3f} |"
          for kind, whats in kinds.items()], "",
        "| change | kind | median s | min s | max s |", "|---|---|---:|---:|---:|",
        *[f"| {what} | {kind} | {medians[what]:.3f} | {min(samples[what]):.3f} | {max(samples[what]):.3f} |"
          for what, kind, _ in CHANGES],
    ]
    save("live-change", data, lines)


if __name__ == "__main__":
    main()
