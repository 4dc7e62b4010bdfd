"""NAT and load balancer flow state: ns/packet of each path through the flow
tables, beside the same paths in another checkout (--before), in the same rounds.

    sudo .venv/bin/python perf/bench_state.py [--before /path/to/checkout] [--calls 3000] [--rounds 5]

Every packet is a fresh frame (BPF_PROG_TEST_RUN with repeat 1; the figure is
the kernel's own duration of that one run): NAT and LB rewrite the packet, so
repeating one buffer would measure another path from the second run on. The
kernel reports such a run in steps of about 10 ns, so a round takes the mean of
the middle 80% of --calls runs of each path; the median round is kept,
beside a one-counter chain measured the same way in the same rounds. Each
version's chains are deployed by a subprocess running that checkout's code
(the NAT attached in a gateway namespace of its own, whose FIB it asks), then
their pinned programs are run from here, interleaved. Writes
perf/results/state.md and .json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from results_io import save, stamp  # noqa: E402  (beside this script)
from vnfchain import bpfsys  # noqa: E402
from vnfchain.testrun import call_in_netns, run_xdp  # noqa: E402

LAN_HOST, REMOTE, NAT, CLIENT, VIP = "198.18.1.11", "198.18.100.2", "198.18.100.1", "198.18.1.11", "198.18.0.100"
BACKENDS = ("198.18.2.11", "198.18.2.12", "198.18.2.13")

# deploys the chains given as JSON {key: yaml} on stdin with the vnfchain on
# PYTHONPATH; prints {key: pinned entry program}
DEPLOY = """
import json, sys
import vnfchain
from vnfchain import Chain
print(vnfchain.__file__, file=sys.stderr)
chains = json.load(sys.stdin)
print(json.dumps({k: str(Chain.from_yaml_text(t).deploy().gen_dir / "entry") for k, t in chains.items()}))
"""
UNDEPLOY = "import sys\nfrom vnfchain.chain.deploy import undeploy\nfor n in sys.argv[1:]: undeploy(n)"


def eth(p) -> bytes:
    return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / p)


def tcp(src, dst, sport, dport, flags, seq=1, ack=0) -> bytes:
    return eth(IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack))


def chains(version: str, ns: str) -> dict[str, str]:
    base = f"vcb{os.getpid()}-{version}"
    backends = ", ".join(f"{{ip: {b}}}" for b in BACKENDS)
    return {
        "nat": f"name: {base}nat\nattach: [{{interface: lan0, netns: {ns}}}, {{interface: wan0, netns: {ns}}}]\n"
               "functions:\n  nat: {type: nat, outside: wan0, snat: [{src: 198.18.1.0/24}], "
               "dnat: [{proto: tcp, port: 8080, to: 198.18.1.12}]}\n",
        "lb": f"name: {base}lb\nfunctions:\n  lb: {{type: loadbalancer, services: "
              f"[{{vip: {VIP}, port: 80, backends: [{backends}]}}]}}\n",
        "counter": f"name: {base}cnt\nfunctions:\n  c: {{type: counter}}\n",
    }


def gateway(ns: str) -> dict[str, int]:
    """A namespace with lan0 (198.18.1.1/24) and wan0 (198.18.100.1/24): {ifname: ifindex}."""
    def ip(*args):
        subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True)
    subprocess.run(["ip", "netns", "add", ns], check=True)
    subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1"], check=True)
    for dev, addr in (("lan0", "198.18.1.1/24"), ("wan0", "198.18.100.1/24")):
        ip("link", "add", dev, "type", "veth", "peer", "name", dev + "p")
        ip("link", "set", dev, "up")
        ip("link", "set", dev + "p", "up")
        ip("addr", "add", addr, "dev", dev)
    out = subprocess.run(["ip", "-n", ns, "-j", "link"], check=True, capture_output=True, text=True).stdout
    return {link["ifname"]: link["ifindex"] for link in json.loads(out)}


class Version:
    """One checkout's chains: program fds, and a runner in its gateway namespace."""

    def __init__(self, label: str, repo: Path):
        self.label, self.repo, self.ns = label, repo, f"vcb{os.getpid()}{label[0]}"
        self.index = gateway(self.ns)
        self.specs = chains(label[0], self.ns)
        env = dict(os.environ, PYTHONPATH=str(repo), PYTHONDONTWRITEBYTECODE="1")
        # cwd: `python -c` puts the working directory first on sys.path
        out = subprocess.run([sys.executable, "-c", DEPLOY], input=json.dumps(self.specs), env=env, cwd=repo,
                             check=True, capture_output=True, text=True).stdout
        self.fds = {key: bpfsys.obj_get(path) for key, path in json.loads(out).items()}

    def run(self, key: str, frames: list[bytes], side: str | None = None) -> list:
        index = self.index[side] if side else None
        return call_in_netns(self.ns, lambda: [run_xdp(self.fds[key], f, ingress_ifindex=index) for f in frames])

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        names = [spec.split("\n", 1)[0].split(": ", 1)[1] for spec in self.specs.values()]
        subprocess.run([sys.executable, "-c", UNDEPLOY, *names], cwd=self.repo, check=False,
                       env=dict(os.environ, PYTHONPATH=str(self.repo), PYTHONDONTWRITEBYTECODE="1"))
        subprocess.run(["ip", "netns", "del", self.ns], check=False)


def prepare(v: Version) -> dict[str, tuple[str, str | None, bytes]]:
    """Confirmed and unconfirmed flows in v's tables; {path: (chain, side, frame)}
    for the paths whose frame stays the same from call to call."""
    syn = v.run("nat", [tcp(LAN_HOST, REMOTE, 40000, 80, "S")], "lan0")[0]
    port = IP(syn.data[14:])[TCP].sport
    v.run("nat", [tcp(REMOTE, NAT, 80, port, "SA", seq=7000, ack=2)], "wan0")
    v.run("nat", [tcp(LAN_HOST, REMOTE, 40000, 80, "A", seq=2, ack=7001)], "lan0")
    v.run("nat", [tcp(LAN_HOST, REMOTE, 40001, 80, "S")], "lan0")
    syn = v.run("lb", [tcp(CLIENT, VIP, 50000, 80, "S")])[0]
    backend = IP(syn.data[14:]).dst
    v.run("lb", [tcp(backend, CLIENT, 80, 50000, "SA", seq=7000, ack=2)])
    v.run("lb", [tcp(CLIENT, VIP, 50000, 80, "A", seq=2, ack=7001)])
    v.run("lb", [tcp(CLIENT, VIP, 50001, 80, "S")])
    return {
        "nat: confirmed flow, out": ("nat", "lan0", tcp(LAN_HOST, REMOTE, 40000, 80, "A", seq=2, ack=7001)),
        "nat: confirmed flow, in": ("nat", "wan0", tcp(REMOTE, NAT, 80, port, "A", seq=7001, ack=2)),
        "nat: unconfirmed flow (SYN again)": ("nat", "lan0", tcp(LAN_HOST, REMOTE, 40001, 80, "S")),
        "nat: nothing to translate, in": ("nat", "wan0", tcp(REMOTE, NAT, 5555, 22, "S")),
        "nat: nothing to translate, out": ("nat", "lan0", tcp(LAN_HOST, "198.18.1.1", 5555, 22, "S")),
        "lb: confirmed flow": ("lb", None, tcp(CLIENT, VIP, 50000, 80, "A", seq=2, ack=7001)),
        "lb: reply of a confirmed flow": ("lb", None, tcp(backend, CLIENT, 80, 50000, "A", seq=7001, ack=2)),
        "lb: unconfirmed flow (SYN again)": ("lb", None, tcp(CLIENT, VIP, 50001, 80, "S")),
        "lb: not to a VIP": ("lb", None, tcp(CLIENT, "198.18.9.9", 50000, 80, "S")),
        "counter": ("counter", None, tcp(CLIENT, VIP, 50000, 80, "A")),
    }


# as many unconfirmed flows as the default table holds (65,536 / 4), from
# addresses the measured new flows never use
PREFILL = [(f"198.18.1.{250 + i // 50000}", 1024 + i % 50000) for i in range(16384)]


def central_mean(runs) -> float:
    """Mean of the middle 80% of the runs' durations: finer than the clock's
    steps, deaf to interrupts."""
    values = sorted(r.duration_ns for r in runs)
    cut = len(values) // 10
    return statistics.fmean(values[cut:len(values) - cut])


def new_flows(count: int, round_: int) -> list[tuple[str, int]]:
    """Distinct (client address, port) pairs for new flows, different each round."""
    return [(f"198.18.1.{20 + (round_ * count + i) // 60000 % 200}", 1024 + (round_ * count + i) % 60000)
            for i in range(count)]      # 198.18.1.20-219


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", type=Path, help="another checkout to measure beside this one")
    ap.add_argument("--calls", type=int, default=3000, help="fresh-frame runs per path and round")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds; the median is kept")
    args = ap.parse_args()

    versions = []
    try:
        versions.append(Version("after", REPO))
        if args.before:
            versions.append(Version("before", args.before.resolve()))
        paths = {v.label: prepare(v) for v in versions}
        # new flows are measured in the steady state of a flood: the unconfirmed
        # table (default size) full, so that each new flow evicts one
        for v in versions:
            v.run("nat", [tcp(a, REMOTE, p, 80, "S") for a, p in PREFILL], "lan0")
            v.run("lb", [tcp(a, VIP, p, 80, "S") for a, p in PREFILL])
        samples: dict = {}
        for r in range(args.rounds):
            flows = new_flows(args.calls, r)
            for v in versions:
                for path, (key, side, frame) in paths[v.label].items():
                    runs = v.run(key, [frame] * args.calls, side)
                    samples.setdefault((v.label, path), []).append(central_mean(runs))
                for key, side, make, path in (
                        ("nat", "lan0", lambda a, p: tcp(a, REMOTE, p, 80, "S"), "nat: new flow (SYN)"),
                        ("lb", None, lambda a, p: tcp(a, VIP, p, 80, "S"), "lb: new flow (SYN)")):
                    runs = v.run(key, [make(a, p) for a, p in flows], side)
                    samples.setdefault((v.label, path), []).append(central_mean(runs))
            print(f"round {r + 1}/{args.rounds}", file=sys.stderr)
    finally:
        for v in versions:
            v.close()
    report({k: statistics.median(v) for k, v in samples.items()}, [v.label for v in versions], args)


def _commit(repo: Path) -> str:
    out = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() or "?"


def report(ns: dict, labels: list[str], args) -> None:
    data = stamp(calls=args.calls, rounds=args.rounds, before=str(args.before or ""),
                 ns_per_packet={f"{label} {path}": value for (label, path), value in ns.items()})
    paths = list(dict.fromkeys(path for _, path in ns))
    head = "| path | " + " | ".join(f"{label} ns | {label} / counter" for label in labels) + \
        (" | after / before |" if len(labels) == 2 else "")
    lines = [
        "# NAT and load balancer: cost of each path through the flow tables",
        "",
        f"{data['when']}, kernel {data['kernel']}. BPF_PROG_TEST_RUN, a fresh frame per run (repeat 1, the "
        f"kernel's duration of that run): mean of the middle 80% of {args.calls} runs per round, median of "
        f"{args.rounds} interleaved rounds; tail-call chains of one function, default table sizes. New flows: "
        f"{args.calls} distinct SYNs per round, after {len(PREFILL)} others (a full unconfirmed table: each new "
        "flow evicts one)."
        + (f" before: {args.before} at {_commit(args.before)}, after: this checkout at {_commit(REPO)}."
           if args.before else ""),
        "",
        head,
        "|---|" + "---:|" * (2 * len(labels) + (len(labels) == 2)),
    ]
    for path in paths:
        cells = []
        for label in labels:
            cells += [f"{ns[(label, path)]:.0f}", f"{ns[(label, path)] / ns[(label, 'counter')]:.2f}"]
        if len(labels) == 2:
            cells.append(f"{ns[('after', path)] / ns[('before', path)]:.2f}")
        lines.append(f"| {path} | " + " | ".join(cells) + " |")
    save("state", data, lines)


if __name__ == "__main__":
    main()
