"""Firewall conntrack: ns/packet of a packet of an established TCP flow through
BPF_PROG_TEST_RUN, this tree beside a baseline revision (before the TCP window
tracking, by default `main`), and beside the same firewall without conntrack.

    sudo .venv/bin/python perf/bench_conntrack.py [--baseline REV] [--repeat 200000] [--rounds 7]

The baseline's templates and code are taken from git (`git archive REV`) and
deployed by a child process running that code; this process runs both chains'
pinned entry programs, interleaved, round after round, and keeps the median
round. Probes: a 100-byte data segment of an established flow from the client
(found by the first lookup) and one from the server (the reply way: the
second lookup). Writes perf/results/conntrack.md.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from vnfchain import Chain  # noqa: E402
from vnfchain.chain.deploy import Deployment  # noqa: E402
from results_io import save, stamp  # noqa: E402  (beside this script)
from vnfchain.testrun import run_xdp  # noqa: E402

RULES = """
    rules:
      - {action: allow, ct: [established, related]}
      - {action: allow, proto: tcp, src: 198.18.1.0/24, ct: new}
"""
PLAIN_RULES = """
    rules:
      - {action: allow, proto: tcp}
"""
C, S, CPORT, ISN_C, ISN_S = "198.18.1.2", "198.18.2.2", 40000, 1000, 500000


def chain_yaml(name: str, conntrack: bool) -> str:
    return (f"name: {name}\nfunctions:\n  fw:\n    type: firewall\n    default: drop\n"
            f"    conntrack: {str(conntrack).lower()}\n" + (RULES if conntrack else PLAIN_RULES))


def segment(client: bool, flags: str, seq: int, ack: int, payload: bytes = b"") -> bytes:
    ip = IP(src=C, dst=S) if client else IP(src=S, dst=C)
    sport, dport = (CPORT, 80) if client else (80, CPORT)
    options = [("MSS", 1460), ("SAckOK", b""), ("NOP", None), ("WScale", 7)] if "S" in flags else []
    return bytes(Ether() / ip / TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack, window=502,
                                    options=options) / payload)


HANDSHAKE = [segment(True, "S", ISN_C, 0), segment(False, "SA", ISN_S, ISN_C + 1),
             segment(True, "A", ISN_C + 1, ISN_S + 1)]
PROBES = {"client data": segment(True, "PA", ISN_C + 1, ISN_S + 1, b"x" * 100),
          "server data": segment(False, "PA", ISN_S + 1, ISN_C + 101, b"y" * 100)}


def baseline_deploy(rev: str, name: str, text: str) -> Path:
    """Deploy ``text`` with the code of ``rev`` (a child process); returns its tree."""
    tree = Path(tempfile.mkdtemp(prefix="vnfchain-baseline-"))
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "vnfchain", "templates"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    run_in(tree, "import sys; from vnfchain import Chain; Chain.from_yaml_text(sys.stdin.read()).deploy(attach=[])",
           text)
    return tree


def run_in(tree: Path, code: str, stdin: str = "") -> None:
    subprocess.run([sys.executable, "-c", code], input=stdin, text=True, check=True,
                   env={**os.environ, "PYTHONPATH": str(tree)})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", default="main", help="git revision to compare with (default: main)")
    ap.add_argument("--repeat", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    names = {k: f"vcb{os.getpid()}-{k}" for k in ("before", "after", "plain")}
    tree, fds, samples = None, {}, {}
    try:
        tree = baseline_deploy(args.baseline, names["before"], chain_yaml(names["before"], True))
        Chain.from_yaml_text(chain_yaml(names["after"], True)).deploy(attach=[])
        Chain.from_yaml_text(chain_yaml(names["plain"], False)).deploy(attach=[])
        fds = {k: Deployment.get(name).entry_fd() for k, name in names.items()}
        for k, fd in fds.items():   # an established flow in every chain; every probe passes
            for frame in HANDSHAKE + list(PROBES.values()):
                assert run_xdp(fd, frame).action == "XDP_PASS", k
        samples = {(k, p): [] for k in fds for p in PROBES}
        for _ in range(args.rounds):
            for k, fd in fds.items():
                for p, frame in PROBES.items():
                    samples[(k, p)].append(run_xdp(fd, frame, repeat=args.repeat).duration_ns)
    finally:
        for fd in fds.values():
            os.close(fd)
        if tree is not None:
            run_in(tree, f"from vnfchain.chain import deploy; deploy.undeploy({names['before']!r})")
            shutil.rmtree(tree)
        for k in ("after", "plain"):
            with contextlib.suppress(Exception):
                Deployment.get(names[k]).undeploy()
    report({key: statistics.median(v) for key, v in samples.items()}, args)


def report(median: dict, args) -> None:
    rows = [{"probe": p, **{f"{k}_ns": median[(k, p)] for k in ("plain", "before", "after")},
             "after_over_before": median[("after", p)] / median[("before", p)]} for p in PROBES]
    data = stamp(baseline=args.baseline, repeat=args.repeat, rounds=args.rounds, rows=rows)
    lines = [
        "# Firewall conntrack: cost per packet of an established TCP flow (BPF_PROG_TEST_RUN)",
        "",
        f"{data['when']}, kernel {data['kernel']}, {args.repeat} repetitions x {args.rounds} interleaved "
        f"rounds (median), tail-call chain of one firewall. `before`: conntrack at `{args.baseline}` (no "
        "TCP windows); `after`: this tree (windows, flag table, RST exactness); `plain`: the same firewall "
        "without conntrack. A probe from the server is the flow's reply way (the second lookup).",
        "",
        "| probe | plain ns | before ns | after ns | after / before |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['probe']} | {r['plain_ns']:.0f} | {r['before_ns']:.0f} | {r['after_ns']:.0f} | "
                     f"{r['after_over_before']:.2f} |")
    save("conntrack", data, lines)


if __name__ == "__main__":
    started = time.monotonic()
    main()
    print(f"({time.monotonic() - started:.0f} s)", file=sys.stderr)
