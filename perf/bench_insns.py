"""Instructions per function: what the kernel holds (xlated) and what the
verifier explored to load it, for one chain of each function type and for
examples/*.yaml, in both chain modes, this tree beside a baseline revision
(by default `main`).

    sudo .venv/bin/python perf/bench_insns.py [--baseline REV]

The baseline's code and templates are taken from git (`git archive REV`) and
deploy their chains in a child process; this process reads every pinned
program of both (a function's own program in tail-call mode, the chain's one
program in fused mode). Nothing is timed: the counts are exact, so one run
says it. The NAT needs its outside interface: a namespace `vcbi<pid>` with a
veth `wan0` (198.18.100.1/24) and one to attach each NAT deployment to is made
for the run and removed after it.
Writes perf/results/insns.md.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from vnfchain import Chain, bpfsys  # noqa: E402
from vnfchain.chain.deploy import Deployment  # noqa: E402
from bench_conntrack import baseline_tree, run_in  # noqa: E402  (beside this script)
from results_io import save, stamp  # noqa: E402

MODES = ("tailcall", "fused")
ATTACH = ("lan0", "lan1", "lan2", "lan3")   # a NAT deployment each (2 modes x before/after)

# one function of each type (two of the firewall and of dpi), as the README configures them
FUNCTIONS = {
    "counter": "{type: counter}",
    "classify": "{type: classify, rules: [{proto: tcp, dport: 8080, label: web}, {proto: tcp, label: web}], "
                "next: {web: tail, default: tail}}",
    "forward": "{type: forward}",
    "firewall": "{type: firewall, default: drop, rules: [{action: allow, proto: icmp, icmp_type: echo-request}, "
                "{action: allow, proto: tcp, dst: 198.18.10.0/24, dport: [80, '8000-8080'], flags: 'syn,!ack'}, "
                "{action: drop, src: [198.18.9.0/24, 198.18.8.0/24]}]}",
    "firewall_ct": "{type: firewall, default: drop, conntrack: true, rules: [{action: allow, ct: [established, "
                   "related]}, {action: allow, proto: tcp, src: 198.18.1.0/24, ct: new}]}",
    "nat": "{type: nat, outside: wan0, snat: [{src: 198.18.1.0/24, to: masquerade}], "
           "dnat: [{proto: tcp, port: 8080, to: 198.18.1.12}]}",
    "loadbalancer": "{type: loadbalancer, services: [{vip: 198.18.0.100, port: 80, "
                    "backends: [{ip: 198.18.2.11}, {ip: 198.18.2.12, weight: 2}]}, {vip: 198.18.0.100, port: 7, "
                    "mode: dsr, backends: [{ip: 198.18.2.11}]}]}",
    "dpi": "{type: dpi, signatures: [{id: 1, content: /etc/passwd, action: drop}, {id: 2, content: "
           "['GET ', '|0d 0a|X-Evil:'], nocase: true, depth: 512, action: alert}]}",
    "dpi_apps": "{type: dpi, signatures: [{id: 1, content: /etc/passwd, action: drop}], apps: ["
                "{app: http, host: '*.bad.example', action: drop}, {app: tls, sni: banned.example, action: drop}, "
                "{app: dns, qname: '*.evil.example', action: alert, id: 7}]}",
}


def chains() -> dict[str, str]:
    """name -> chain text without its name and mode lines; the NAT's says
    where it is attached with {attach}."""
    out = {}
    for kind, body in FUNCTIONS.items():
        tail = "  tail: {type: counter}\n" if kind == "classify" else ""
        out[kind] = ("{attach}" if kind == "nat" else "") + f"functions:\n  {kind}: {body}\n" + tail
    for path in sorted((REPO / "examples").glob("*.yaml")):
        spec = Chain.from_yaml(path).spec.with_changes(attach=())
        text = Chain(spec).to_yaml()
        out[path.stem] = "\n".join(line for line in text.splitlines()
                                   if not line.startswith(("name:", "mode:"))) + "\n"
    return out


def programs(name: str) -> dict[str, tuple[int, int]]:
    """function (or "(fused)") -> (xlated instructions, verified instructions)."""
    dep = Deployment.get(name)
    pins = {f.name: dep.gen_dir / f"fn_{f.name}" for f in dep.record.functions}
    pins = {fn: p for fn, p in pins.items() if p.exists()} or {"(fused)": dep.gen_dir / "entry"}
    out = {}
    for fn, pin in pins.items():
        fd = bpfsys.obj_get(str(pin))
        try:
            out[fn] = (bpfsys.xlated_insns(fd), bpfsys.verified_insns(fd))
        finally:
            os.close(fd)
    return out


@contextlib.contextmanager
def outside_netns(ns: str):
    def ip(*args):
        subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True)
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        for dev in ("wan0",) + ATTACH:
            ip("link", "add", dev, "type", "veth", "peer", "name", dev + "p")
            ip("link", "set", dev, "up")
            ip("link", "set", dev + "p", "up")
        ip("addr", "add", "198.18.100.1/24", "dev", "wan0")
        yield
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", default="main", help="git revision to compare with (default: main)")
    args = ap.parse_args()
    ns = f"vcbi{os.getpid()}"
    counts: dict = {}
    tree, made = None, []
    with outside_netns(ns):
        try:
            tree = baseline_tree(args.baseline)
            free = iter(ATTACH)
            for i, (chain, text) in enumerate(chains().items()):
                for mode in MODES:
                    for side in ("before", "after"):
                        name = f"vcbi{os.getpid() % 100000}-{i}{mode[0]}{side[0]}"
                        attach = f"attach: [{{interface: {next(free)}, netns: {ns}}}]\n" if "{attach}" in text else ""
                        full = f"name: {name}\nmode: {mode}\n" + text.replace("{attach}", attach)
                        if side == "before":
                            run_in(tree, "import sys; from vnfchain import Chain; "
                                         "Chain.from_yaml_text(sys.stdin.read()).deploy()", full)
                        else:
                            Chain.from_yaml_text(full).deploy()
                        made.append((side, name))
                        counts[(chain, mode, side)] = programs(name)
        finally:
            for side, name in made:
                if side == "before":
                    run_in(tree, f"from vnfchain.chain import deploy; deploy.undeploy({name!r})")
                else:
                    with contextlib.suppress(Exception):
                        Deployment.get(name).undeploy()
            if tree is not None:
                shutil.rmtree(tree)
    report(counts, args)


def report(counts: dict, args) -> None:
    rows = []
    for (chain, mode, side), progs in counts.items():
        if side != "after":
            continue
        before = counts[(chain, mode, "before")]
        for fn, (xlated, verified) in progs.items():
            was = before.get(fn, (0, 0))
            rows.append({"chain": chain, "mode": mode, "program": fn, "xlated_before": was[0], "xlated_after": xlated,
                         "verified_before": was[1], "verified_after": verified})
    data = stamp(baseline=args.baseline, rows=rows)
    lines = [
        "# Instructions per function: xlated and explored by the verifier",
        "",
        f"{data['when']}, kernel {data['kernel']}. `before`: `{args.baseline}`; `after`: this tree. A chain of "
        "one function of each type (classify with a counter behind it), and examples/*.yaml; tail-call mode "
        "lists each function's own program, fused mode the chain's one program.",
        "",
        "| chain | mode | program | xlated before | xlated after | verified before | verified after |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['chain']} | {r['mode']} | {r['program']} | {r['xlated_before']:,} | "
                     f"{r['xlated_after']:,} | {r['verified_before']:,} | {r['verified_after']:,} |")
    save("insns", data, lines)


if __name__ == "__main__":
    main()
