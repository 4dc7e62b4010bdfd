"""Firewall conntrack: ns/packet of a packet of an established TCP flow through
BPF_PROG_TEST_RUN, this tree beside a baseline revision (by default `main`) and
beside the same firewall without conntrack; ns of a new flow's SYN while the
table new flows go into is full (a SYN flood's steady state); and the
instructions the verifier explored for the conntrack firewall in both chain
modes.

    sudo .venv/bin/python perf/bench_conntrack.py [--baseline REV] [--repeat 200000] [--rounds 7]

The baseline's templates and code are taken from git (`git archive REV`) and
deployed by a child process running that code; this process runs the chains'
pinned programs, interleaved, round after round, and keeps the median round.
Probes: a 100-byte data segment of an established flow from the client (found
by the first lookup) and one from the server (the reply way: the second
lookup). A SYN of a new flow cannot be repeated (the second run finds its
flow): each of --syns SYNs is run once through both chains, after enough
others to fill the table they go into, and the median run is kept. Writes
perf/results/conntrack.md.
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
from vnfchain import Chain, bpfsys  # noqa: E402
from vnfchain.chain.deploy import Deployment  # noqa: E402
from results_io import interleaved_medians, save, stamp  # noqa: E402  (beside this script)
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
FULL_TABLE = 70_000   # SYNs that fill the largest table a new flow goes into (65,536 before)


def chain_yaml(name: str, conntrack: bool, mode: str = "tailcall") -> str:
    return (f"name: {name}\nmode: {mode}\nfunctions:\n  fw:\n    type: firewall\n    default: drop\n"
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


def new_flow_syns(count: int, skip: int = 0) -> list[bytes]:
    """SYNs of ``count`` flows no one has seen, from the client network: the
    SYN above with the source's last byte and port changed (the firewall reads
    no checksum)."""
    syn = HANDSHAKE[0]
    src, sport = 14 + 12, 14 + 20   # offsets of the IPv4 source and the TCP source port
    out = []
    for i in range(skip, skip + count):
        host, port = 3 + i % 250, 1024 + i // 250
        out.append(syn[:src + 3] + bytes([host]) + syn[src + 4:sport] + port.to_bytes(2, "big") + syn[sport + 2:])
    return out


def baseline_tree(rev: str) -> Path:
    tree = Path(tempfile.mkdtemp(prefix="vnfchain-baseline-"))
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "vnfchain", "templates"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def run_in(tree: Path, code: str, stdin: str = "") -> None:
    # cwd: `python -c` puts the working directory first on sys.path
    subprocess.run([sys.executable, "-c", code], input=stdin, text=True, check=True, cwd=tree,
                   env={**os.environ, "PYTHONPATH": str(tree)})


def firewall_program(name: str) -> int:
    """An fd of the program that runs the firewall: its own in tail-call mode,
    the one program in fused mode."""
    dep = Deployment.get(name)
    path = dep.gen_dir / "fn_fw"
    return bpfsys.obj_get(str(path)) if path.exists() else dep.entry_fd()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", default="main", help="git revision to compare with (default: main)")
    ap.add_argument("--repeat", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--syns", type=int, default=20_000, help="new flows whose SYN is timed")
    args = ap.parse_args()
    chains = {("before", "tailcall"): True, ("after", "tailcall"): True, ("plain", "tailcall"): False,
              ("before", "fused"): True, ("after", "fused"): True}
    names = {key: f"vcb{os.getpid()}-{key[0]}{key[1][0]}" for key in chains}
    tree, fds, median, insns, syn_ns = None, {}, {}, {}, {}
    try:
        tree = baseline_tree(args.baseline)
        for key, conntrack in chains.items():
            text = chain_yaml(names[key], conntrack, key[1])
            if key[0] == "before":
                run_in(tree, "import sys; from vnfchain import Chain; "
                             "Chain.from_yaml_text(sys.stdin.read()).deploy(attach=[])", text)
            else:
                Chain.from_yaml_text(text).deploy(attach=[])
        for key in chains:
            if key[0] != "plain":
                fd = firewall_program(names[key])
                insns[key] = bpfsys.verified_insns(fd)
                os.close(fd)
        fds = {k: Deployment.get(names[(k, "tailcall")]).entry_fd() for k in ("before", "after", "plain")}
        for k, fd in fds.items():   # an established flow in every chain; every probe passes
            for frame in HANDSHAKE + list(PROBES.values()):
                assert run_xdp(fd, frame).action == "XDP_PASS", k
        median = interleaved_medians({(k, p): (fd, frame) for k, fd in fds.items() for p, frame in PROBES.items()},
                                     args.rounds, args.repeat)
        syn_ns = new_flow_costs(fds, args.syns)
    finally:
        for fd in fds.values():
            os.close(fd)
        for key in chains:
            if key[0] == "before" and tree is not None:
                run_in(tree, f"from vnfchain.chain import deploy; deploy.undeploy({names[key]!r})")
            elif key[0] != "before":
                with contextlib.suppress(Exception):
                    Deployment.get(names[key]).undeploy()
        if tree is not None:
            shutil.rmtree(tree)
    report(median, insns, syn_ns, args)


def new_flow_costs(fds: dict, count: int) -> dict[str, float]:
    """Median ns of a new flow's SYN in each conntrack chain, its table full."""
    for frame in new_flow_syns(FULL_TABLE):
        for k in ("before", "after"):
            run_xdp(fds[k], frame)
    runs: dict[str, list[int]] = {"before": [], "after": []}
    for frame in new_flow_syns(count, skip=FULL_TABLE):
        for k in runs:
            result = run_xdp(fds[k], frame)
            assert result.action == "XDP_PASS", k
            runs[k].append(result.duration_ns)
    return {k: statistics.median(v) for k, v in runs.items()}


def report(median: dict, insns: dict, syn_ns: dict, args) -> None:
    rows = [{"probe": p, **{f"{k}_ns": median[(k, p)] for k in ("plain", "before", "after")},
             "after_over_before": median[("after", p)] / median[("before", p)]} for p in PROBES]
    rows.append({"probe": "new flow's SYN, table full", "plain_ns": None, "before_ns": syn_ns["before"],
                 "after_ns": syn_ns["after"], "after_over_before": syn_ns["after"] / syn_ns["before"]})
    verifier = [{"mode": mode, "before": insns[("before", mode)], "after": insns[("after", mode)]}
                for mode in ("tailcall", "fused")]
    data = stamp(baseline=args.baseline, repeat=args.repeat, rounds=args.rounds, syns=args.syns, rows=rows,
                 verified_insns=verifier)
    lines = [
        "# Firewall conntrack: cost per packet (BPF_PROG_TEST_RUN) and verifier instructions",
        "",
        f"{data['when']}, kernel {data['kernel']}, {args.repeat} repetitions x {args.rounds} interleaved "
        f"rounds (median), tail-call chain of one firewall. `before`: conntrack at `{args.baseline}`; "
        "`after`: this tree; `plain`: the same firewall without conntrack. A probe from the server is the "
        f"flow's reply way (the second lookup). A new flow's SYN: the median of {args.syns} SYNs of flows "
        f"never seen, each run once, after {FULL_TABLE:,} others filled the table new flows go into.",
        "",
        "| probe | plain ns | before ns | after ns | after / before |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        plain = "" if r["plain_ns"] is None else f"{r['plain_ns']:.0f}"
        lines.append(f"| {r['probe']} | {plain} | {r['before_ns']:.0f} | {r['after_ns']:.0f} | "
                     f"{r['after_over_before']:.2f} |")
    lines += ["", "Instructions the verifier explored for the firewall's program (its own in tail-call mode, "
                  "the chain's one program in fused mode; the budget is 1,000,000):", "",
              "| mode | before | after | after / before |", "|---|---:|---:|---:|"]
    for v in verifier:
        lines.append(f"| {v['mode']} | {v['before']:,} | {v['after']:,} | {v['after'] / v['before']:.2f} |")
    save("conntrack", data, lines)


if __name__ == "__main__":
    started = time.monotonic()
    main()
    print(f"({time.monotonic() - started:.0f} s)", file=sys.stderr)
