"""Chain commands: functions, validate, render, graph, deploy, diff, rollback, ls, status, stats, events,
undeploy, trace."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import types
import typing
from pathlib import Path

import click
from pydantic import BaseModel
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import cli
from .. import functions, yamlio
from ..chain import Chain, Deployment
from ..chain import render as render_mod
from ..chain.deployment import listing
from ..chain.model import MAX_TAIL_CALLS, spec_from_dict
from ..errors import RecordError, SpecError, VnfchainError

# piped output (CI logs, demo.sh | tee) gets room for the stats table
out = Console(highlight=False, width=None if sys.stdout.isatty() else 132)
err = Console(stderr=True, highlight=False, soft_wrap=True)  # messages never wrap mid-path


def _load(path: str, mode: str | None = None) -> Chain:
    """The chain in ``path``; ``--mode`` applies before validation, so that a path too
    long for tail calls can still be rendered or deployed with ``--mode fused``."""
    if mode is None:
        return Chain.from_yaml(path)
    data, locator = yamlio.load(path)
    if isinstance(data, dict):
        data["mode"] = mode
    return Chain(spec_from_dict(data, locator), source=path)


def _warn(chain: Chain) -> None:
    for warning in chain.spec.warnings:
        err.print(f"warning: {warning}")


# -- functions ------------------------------------------------------------------------

@cli.command("functions")
@click.argument("type_name", metavar="[TYPE]", required=False)
def functions_cmd(type_name):
    """List the built-in function types, or one type's parameters."""
    if type_name is None:
        table = Table("type", "what it does", box=None)
        for name, ftype in sorted(functions.REGISTRY.items()):
            table.add_row(name, ftype.summary)
        out.print(table)
        return
    ftype = functions.get(type_name)
    if ftype is None:
        raise SpecError(f"unknown function type '{type_name}'; known types: "
                        f"{', '.join(sorted(functions.REGISTRY))}")
    out.print(f"[bold]{ftype.name}[/bold]: {ftype.summary}")
    doc = (sys.modules[type(ftype).__module__].__doc__ or "").strip()
    if "\n" in doc:  # the module docstring, less its first line, is the long help
        out.print(escape(doc.split("\n", 1)[1].strip()))
    table = Table("parameter", "type", "default", "meaning", box=None)
    for row in _param_rows(ftype.Params):
        table.add_row(*(escape(cell) for cell in row))  # "list[Rule]" is not rich markup
    out.print(table)
    out.print("every function also takes [bold]next[/bold]: a function name, or {label: function, default: function}")
    if ftype.reasons:
        out.print(f"drop reasons: {', '.join(ftype.reasons)}")


def _param_rows(model, prefix=""):
    for name, field in model.model_fields.items():
        default = "required" if field.is_required() else (
            "(below)" if isinstance(field.default, BaseModel) else repr(field.default))
        ann = field.annotation
        nested = _nested_model(ann)
        type_text = _type_text(ann)
        yield (prefix + name, type_text, default, field.description or "")
        if nested is not None:
            is_list = "list" in _type_text(ann)
            yield from _param_rows(nested, prefix=f"{prefix}{name}{'[]' if is_list else ''}.")


def _nested_model(ann):
    for arg in typing.get_args(ann) or (ann,):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
        inner = _nested_model(arg) if typing.get_args(arg) else None
        if inner is not None:
            return inner
    return None


def _type_text(ann) -> str:
    """A parameter's type the way a YAML author thinks of it: "tcp|udp", "list[Rule]"."""
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin is typing.Annotated:      # a checked type such as InterfaceName
        return _type_text(args[0])
    if origin is typing.Literal:
        return "|".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_text(a) for a in args if a is not type(None))
    if origin in (list, tuple):
        return f"list[{_type_text(args[0])}]" if args else "list"
    if origin is dict:
        return "mapping"
    return getattr(ann, "__name__", str(ann))


# -- validate / render / graph --------------------------------------------------------

@cli.command()
@click.argument("chain_file", type=click.Path(dir_okay=False))
def validate(chain_file):
    """Check a chain definition (schema and graph); needs no root."""
    chain = Chain.from_yaml(chain_file)
    spec = chain.spec
    _warn(chain)
    import networkx as nx
    longest = len(nx.dag_longest_path(chain.graph))
    out.print(f"ok: chain [bold]{spec.name}[/bold]: {len(spec.functions)} function(s), entry "
              f"'{spec.entry}', longest path {longest} function(s) "
              f"({'fused' if spec.mode == 'fused' else f'{longest} of {MAX_TAIL_CALLS} tail calls'})")


@cli.command()
@click.argument("chain_file", type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(file_okay=False), help="Write the C files (and lib/) here.")
@click.option("--mode", type=click.Choice(["tailcall", "fused"]), help="Override the chain's mode.")
def render(chain_file, output, mode):
    """Show the C that deploy compiles (one unit per chain)."""
    chain = _load(chain_file, mode)
    units = chain.render()
    if output:
        for path in render_mod.write(units, Path(output)):
            out.print(str(path))
        return
    for unit in units:
        click.echo(f"/* ===== {unit.name} (include dir: {render_mod.lib_dir()}) ===== */")
        click.echo(unit.source)


@cli.command()
@click.argument("chain_file", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Picture to write: .png, .svg, or .dot for the Graphviz source.")
def graph(chain_file, output):
    """Draw the chain as a picture (Graphviz)."""
    chain = _load(chain_file)
    dot = _dot(chain)
    fmt = Path(output).suffix.lstrip(".") or "png"
    if fmt == "dot":
        Path(output).write_text(dot)
    else:
        if not shutil.which("dot"):
            raise VnfchainError("Graphviz is not installed; `apt-get install graphviz`, or write "
                                "the .dot source with -o chain.dot")
        subprocess.run(["dot", f"-T{fmt}", "-o", output], input=dot.encode(), check=True)
    out.print(f"wrote {output}")


def _dot(chain: Chain) -> str:
    g = chain.graph
    lines = [f'digraph "{chain.name}" {{', "  rankdir=LR; node [shape=box, style=rounded];",
             '  "(in)" [shape=plaintext];', f'  "(in)" -> "{chain.spec.entry}";']
    for node, attrs in g.nodes(data=True):
        lines.append(f'  "{node}" [label="{node}\\n({attrs["type"]})"];')
    for u, v, attrs in g.edges(data=True):
        label = attrs.get("branch")
        label = ",".join(x or "default" for x in label) if isinstance(label, list) else label
        lines.append(f'  "{u}" -> "{v}"' + (f' [label="{label}"]' if label else "") + ";")
    lines.append("}")
    return "\n".join(lines) + "\n"


# -- deploy and the running chains ----------------------------------------------------

@cli.command(epilog="""\b
Examples:
  vnfchain deploy examples/pvp-forward.yaml
  vnfchain deploy chain.yaml --attach dut-lan@dut --attach dut-wan@dut --mode fused
  vnfchain deploy chain.yaml --dry-run        # the plan; changes nothing

\b
Deploy makes the kernel match the file. The chain keeps running after this
command exits (programs and maps are pinned under /sys/fs/bpf/vnfchain/NAME);
`vnfchain undeploy NAME` removes it. Deploying a name that is running changes
it live, without losing packets: config-only changes update maps, code changes
swap prog-array slots, anything else swaps in a new generation atomically. It
also repairs what drifted since (an interface recreated or detached, a pin
removed, a slot emptied, a deploy killed half-way), one line per repair, and
never replaces another's XDP program. Unchanged and healthy: "unchanged".
A failed change changes nothing.

\b
Exit codes: 0 every attach point runs the chain as the file says; 1 it does
not (the error names what is wrong) or the deploy failed; 2 the file is invalid.""")
@click.argument("chain_file", type=click.Path(dir_okay=False))
@click.option("--attach", "attach", multiple=True, metavar="IF[@NETNS]",
              help="Attach here instead of the chain's attach: list (repeatable).")
@click.option("--mode", type=click.Choice(["tailcall", "fused"]), help="Override the chain's mode.")
@click.option("--dry-run", is_flag=True,
              help="Print the plan (repairs, maps, slots, attachments) and change nothing.")
def deploy(chain_file, attach, mode, dry_run):
    """Make the kernel run a chain (deploy, change live, repair); it runs on after the command exits."""
    chain = _load(chain_file, mode)
    _warn(chain)
    points = list(attach) if attach else None
    if dry_run:
        _print_plan(chain.plan(attach=points))
        return
    started = time.monotonic()
    with err.status("deploying") as status:
        dep = chain.deploy(attach=points, progress=lambda msg: status.update(msg),
                           report=lambda line: out.print(escape(line), soft_wrap=True))
    _print_outcome(dep, started)
    from ..pitfalls import machine_pitfalls
    for pitfall in machine_pitfalls(dep.spec):
        err.print(f"warning: {pitfall}")


def _print_outcome(dep: Deployment, started: float) -> None:
    where = ", ".join(f"{a.where} ({a.mode})" for a in dep.record.attachments) or "nothing (not attached)"
    took = f"{time.monotonic() - started:.1f} s"
    if dep.last_change == "new":
        out.print(f"deployed chain [bold]{dep.name}[/bold] ({dep.record.mode}, "
                  f"{len(dep.record.functions)} functions) on {where} in {took}")
    elif dep.last_change == "unchanged":
        out.print(f"chain [bold]{dep.name}[/bold] unchanged: running on {where}")
    elif dep.last_change == "repairs":
        count = f"{len(dep.repairs)} repair" + ("s" if len(dep.repairs) != 1 else "")
        out.print(f"repaired chain [bold]{dep.name}[/bold] in {took} ({count}); running on {where}")
    else:
        out.print(f"changed chain [bold]{dep.name}[/bold] live in {took}: {_CHANGES[dep.last_change]}; "
                  f"running on {where}")


_CHANGES = {
    "new": "a new chain: compile, load, pin, attach",
    "unchanged": "the kernel already runs this definition: nothing to do",
    "repairs": "the definition is the running one; only what drifted is repaired",
    "config": "configuration only, maps updated in place, programs untouched",
    "code": "changed functions replaced in their prog-array slots",
    "topology": "new programs swapped in atomically (XDP_FLAGS_REPLACE), counters carried over",
}


def _print_plan(plan) -> None:
    out.print(f"plan for chain [bold]{plan.spec.name}[/bold]: {plan.kind} ({_CHANGES[plan.kind]})")
    for line in plan.lines():
        out.print(f"  {escape(line)}", soft_wrap=True)
    out.print("nothing was changed (dry run)")


@cli.command(epilog="""\b
Examples:
  vnfchain diff pvp-edge examples/pvp-forward.yaml

\b
Both sides are the chain as vnfchain reads it (defaults filled in, keys in
one order), so only what means something differs. The last line is the kind
of change deploying the file would make (unchanged, repairs, config, code,
topology), as `deploy --dry-run` shows it in full.

\b
Exit codes: 0 the diff was shown; 1 deploying the file would fail (after the
diff, the error says why); 2 the file is invalid or defines another chain.""")
@click.argument("name")
@click.argument("chain_file", type=click.Path(dir_okay=False))
@click.option("--attach", "attach", multiple=True, metavar="IF[@NETNS]",
              help="As deploy's --attach (repeatable).")
@click.option("--mode", type=click.Choice(["tailcall", "fused"]), help="As deploy's --mode.")
def diff(name, chain_file, attach, mode):
    """Show how a chain file differs from the running definition of chain NAME."""
    import difflib
    chain = _load(chain_file, mode)
    if attach:
        chain = chain.with_attach(list(attach))
    if chain.name != name:
        raise click.UsageError(f"{chain_file} defines chain '{chain.name}', not '{name}'")
    dep = Deployment.get(name)
    running = yamlio.dumps(Chain(dep.spec).to_dict()).splitlines(keepends=True)
    wanted = yamlio.dumps(chain.to_dict()).splitlines(keepends=True)
    lines = list(difflib.unified_diff(running, wanted, f"{name} (running since {_when(dep.record.since)})",
                                      chain_file))
    if lines:
        click.echo("".join(lines), nl=False)
    else:
        click.echo(f"no differences: {chain_file} is the running definition of chain {name}")
    plan = chain.plan()
    click.echo(f"deploying it: {plan.kind} ({_CHANGES[plan.kind]})")


@cli.command(epilog="""\b
Each deploy that changes a chain's definition keeps the one it replaced (the
last 5, with the time each was deployed; `vnfchain status NAME` lists them).
Rollback deploys the newest of them as a live change, like any deploy
(loss-free, repairs included), and takes it out of the list: rolling back
again goes one further back. A chain with no earlier definition is an error.

\b
Exit codes: as deploy's (0 every attach point runs the chain afterwards; 1 not,
or no earlier definition, or the change failed).""")
@click.argument("name")
@click.option("--dry-run", is_flag=True, help="Print the plan and change nothing.")
def rollback(name, dry_run):
    """Deploy the definition chain NAME ran before the running one."""
    from ..chain import deploy as deploy_mod
    if dry_run:
        _print_plan(deploy_mod.plan_rollback(name))
        return
    started = time.monotonic()
    with err.status("rolling back") as status:
        dep = deploy_mod.rollback(name, progress=lambda msg: status.update(msg),
                                  report=lambda line: out.print(escape(line), soft_wrap=True))
    _print_outcome(dep, started)


@cli.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def ls_cmd(as_json):
    """List the deployed chains: running, broken (a deploy that stopped half-way:
    undeploy it) or with an unreadable record."""
    summaries = [_summary(d) for d in listing()]
    if as_json:
        click.echo(json.dumps(summaries, indent=2))
        return
    if not summaries:
        out.print("no chains deployed")
        return
    table = Table("chain", "state", "mode", "functions", "attached to", "health", box=None)
    for s in summaries:
        table.add_row(s["name"], s["state"], s["mode"] or "-", " -> ".join(s["functions"]) or "-",
                      ", ".join(s["attached"]) or "-", "; ".join(s["problems"]) or "ok")
    out.print(table)


def _summary(d: Deployment | RecordError) -> dict:
    if isinstance(d, RecordError):
        return {"name": d.name, "state": "unreadable", "mode": None, "functions": [], "attached": [],
                "problems": [d.message]}
    return {"name": d.name, "state": d.condition(), "mode": d.record.mode,
            "functions": [f.name for f in d.record.functions],
            "attached": [a.where for a in d.record.attachments],
            "problems": d.health()}


@cli.command(epilog="""\b
Health lists what no longer matches the deploy, in the words deploy uses when
it repairs it: an interface recreated or detached, another program on it, a
pin removed or replaced, an emptied prog-array slot, a deploy killed half-way.
Exit codes: 0 healthy; 1 not (or no such chain).""")
@click.argument("name")
@click.pass_context
def status(ctx, name):
    """Show one deployed chain: functions, slots, program ids, attachments, health, history."""
    d = Deployment.get(name)
    r = d.record
    if d.condition() != "running":
        out.print(f"chain [bold]{d.name}[/bold]: {d.condition()}, pins {r.pin_dir}")
        for problem in d.health():
            out.print(f"  {escape(problem)}", soft_wrap=True)
        ctx.exit(1)
    out.print(f"chain [bold]{d.name}[/bold]: {r.state}, mode {r.mode}, generation "
              f"{r.generation}, {r.changes} live change(s), pins {r.pin_dir}")
    out.print(f"entry program id {r.entry_prog_id}")
    table = Table("slot", "function", "type", "program id", "next", box=None)
    spec = d.spec
    for f in r.functions:
        nxt = spec.function(f.name).next
        table.add_row(str(f.slot), f.name, f.type, str(f.prog_id or "(fused)"),
                      ", ".join(f"{label}->{t}" for label, t in nxt) or f"exit: {spec.exit}")
    out.print(table)
    for a in r.attachments:
        out.print(f"attached: {a.where} ifindex {a.ifindex} ({a.mode})")
    problems = d.health()
    if not problems:
        out.print("health: ok")
    for problem in problems:
        out.print(f"health: {escape(problem)}", soft_wrap=True)
    out.print(f"definition: deployed {_when(r.since)}")
    for revision in reversed(r.history):
        functions_ = revision.spec.get("functions", {})
        out.print(f"  earlier: deployed {_when(revision.deployed)}, {len(functions_)} function(s), "
                  f"{revision.spec.get('mode', 'tailcall')}")
    if r.history:
        out.print(f"  (`vnfchain rollback {d.name}` returns to the newest earlier one)")
    for name, (columns, rows) in d.state().items():
        state_table = Table(*columns, title=f"{name}: {len(rows)} live entries", box=None)
        for row in rows:
            state_table.add_row(*row)
        out.print(state_table)
    if problems:
        ctx.exit(1)


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "(unknown)"


@cli.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--watch", is_flag=True, help="Refresh every second, with packet rates.")
@click.option("--all-counters", is_flag=True, help="Show counters that are zero too.")
def stats(name, as_json, watch, all_counters):
    """Per-function counters: packets, verdicts, drop reasons, tail-call misses."""
    d = Deployment.get(name)
    if as_json:
        click.echo(json.dumps(d.stats(), indent=2))
        return
    if not watch:
        out.print(_stats_table(d.name, d.stats(), None, all_counters))
        return
    from rich.live import Live
    previous, then = d.stats(), time.monotonic()
    with Live(_stats_table(d.name, previous, None, all_counters), console=out) as live:
        try:
            while True:
                time.sleep(1)
                now_stats, now = d.stats(), time.monotonic()
                rates = {fn: (now_stats[fn]["rx_packets"] - previous[fn]["rx_packets"]) / (now - then)
                         for fn in now_stats}
                live.update(_stats_table(d.name, now_stats, rates, all_counters))
                previous, then = now_stats, now
        except KeyboardInterrupt:
            pass


@cli.command(epilog="""\b
Examples:
  vnfchain events edge                       # until Ctrl-C
  vnfchain events edge --json --count 1 --timeout 10

\b
One line per alert (a dpi signature or app rule with action: alert): time,
function, rule id, what matched, protocol, source -> destination. Alerts that
came while nobody read wait in the chain (about 2,000 per dpi function) and are
shown first; beyond that they are counted as alerts_lost in `vnfchain stats`.
Caveat: readers share the ring's read position: two readers split the events.""")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per line.")
@click.option("--count", type=click.IntRange(min=1), help="Stop after this many events.")
@click.option("--timeout", type=click.FloatRange(min=0), help="Stop after this many seconds.")
def events(name, as_json, count, timeout):
    """Print the alert events of a running chain as they come."""
    from ..events import EventReader, format_event
    with EventReader(Deployment.get(name)) as reader:
        try:
            for event in reader.events(timeout=timeout, count=count):
                click.echo(json.dumps(event) if as_json else format_event(event))
                sys.stdout.flush()
        except KeyboardInterrupt:
            pass
        except BrokenPipeError:     # the reader went away (`--json | head`): a quiet end
            with contextlib.suppress(OSError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except OSError as exc:
            raise VnfchainError(f"reading the events of chain '{name}' failed: {exc.strerror or exc}") from None


_MAIN = ("rx_packets", "rx_bytes", "continue", "branch", "drop", "pass", "tx", "redirect",
         "tail_call_miss")


def _stats_table(name, stats, rates, all_counters) -> Table:
    table = Table(title=f"chain {name}", box=None)
    table.add_column("function")
    shown = [c for c in _MAIN if all_counters or any(s.get(c) for s in stats.values())] or ["rx_packets"]
    for c in shown:
        table.add_column(c.replace("_", " "), justify="right")
    if rates is not None:
        table.add_column("pps", justify="right")
    table.add_column("own counters", overflow="fold")
    for fn, s in stats.items():
        extra = "\n".join(f"{k}={v}" for k, v in s.items() if k not in _MAIN and (v or all_counters))
        row = [fn] + [str(s.get(c, 0)) for c in shown]
        if rates is not None:
            row.append(f"{rates.get(fn, 0):.0f}")
        table.add_row(*row, extra)
    return table


@cli.command(epilog="""\b
Examples:
  vnfchain undeploy web-edge
  vnfchain undeploy --all
  vnfchain undeploy web-edge --ignore-missing   # exit 0 if it is not deployed

\b
Exit status: 0 when the chain is gone; 1 when it was not deployed (like
`ip link del` or `kubectl delete` of a missing object), unless --ignore-missing.""")
@click.argument("name", required=False)
@click.option("--all", "all_", is_flag=True, help="Undeploy every deployed chain.")
@click.option("--ignore-missing", is_flag=True, help="A chain that is not deployed is not an error.")
@click.pass_context
def undeploy(ctx, name, all_, ignore_missing):
    """Detach a chain and remove its pins and record (idempotent); also a broken
    chain, or one whose record is unreadable (its programs are then looked for on
    every interface)."""
    if not name and not all_:
        raise click.UsageError("name a chain, or pass --all")
    names = [d.name for d in listing()] if all_ else [name]
    from ..chain.teardown import undeploy as undeploy_chain
    from ..errors import NotDeployedError
    for n in names:
        try:
            warnings = undeploy_chain(n)
        except NotDeployedError:
            if ignore_missing:
                out.print(f"chain {n} is not deployed; nothing to do")
                continue
            err.print(f"error: chain {n} is not deployed, so there is nothing to undeploy; "
                      f"`vnfchain ls` lists the deployed chains (--ignore-missing makes this exit 0)")
            ctx.exit(1)
        for w in warnings:
            err.print(f"warning: {w}")
        out.print(f"undeployed chain [bold]{n}[/bold]")
    if all_ and not names:
        out.print("no chains deployed")


@cli.command(epilog="""\b
Examples:
  vnfchain trace pvp-edge --packet "Ether()/IP(src='198.18.1.2', dst='198.18.2.2')/TCP(dport=80)"
  vnfchain trace pvp-edge --packet "Ether()/IP(dst='198.18.2.2')/ICMP()" --interface dut-wan --pcap t.pcap

\b
Caveats: the packet runs through the chain's live programs (BPF_PROG_TEST_RUN)
and is counted like real traffic, but never leaves the machine. The path comes
from the counters, so live traffic at the same moment can blur it (you are told).""")
@click.argument("name")
@click.option("--packet", "expression", required=True, help="A scapy expression: Ether()/IP(...)/TCP(...).")
@click.option("--interface", help="Arrive on this attached interface (default: the first).")
@click.option("--pcap", type=click.Path(dir_okay=False), help="Write the packet in and out to a pcap file.")
def trace(name, expression, interface, pcap):
    """Send one packet through a running chain and show the path it takes."""
    from ..chain import trace as trace_mod
    dep = Deployment.get(name)
    packet = trace_mod.build_packet(expression)
    result = trace_mod.trace(dep, packet, interface)
    from scapy.layers.l2 import Ether
    out.print(f"in : {Ether(result.packet_in).summary()}")
    table = Table("function", "type", "verdict", box=None)
    for step in result.steps:
        table.add_row(step.function, step.type, step.verdict + (f" ({step.reason})" if step.reason else ""))
    out.print(table)
    out.print(f"verdict: [bold]{result.action}[/bold] ({result.duration_ns} ns in the test run)")
    out.print(f"out: {Ether(result.packet_out).summary()}")
    for line in trace_mod.differences(result.packet_in, result.packet_out):
        out.print(f"  changed {line}")
    if result.interference:
        err.print("warning: other packets crossed the chain during the trace; the path may include theirs")
    if pcap:
        from scapy.utils import wrpcap
        wrpcap(pcap, [Ether(result.packet_in), Ether(result.packet_out)])
        out.print(f"wrote {pcap} (packet in, packet out)")
