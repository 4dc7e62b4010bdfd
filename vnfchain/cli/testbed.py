"""``vnfchain testbed``: bring test beds up and down, list them, run commands in them."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn
from rich.table import Table

from . import cli
from ..testbed import Testbed, load_topology
from ..testbed import build as _build
from ..testbed.record import Record

_EPILOG = """\b
Examples:
  vnfchain testbed up topologies/pvp.yaml
  vnfchain testbed exec pvp client -- curl -s http://198.18.2.2/
  vnfchain testbed ls
  vnfchain testbed down pvp

\b
Naming: host H of bed B lives in network namespace vc-B-H; interfaces keep the
names the topology gives them. Only addresses in 198.18.0.0/15 are accepted.
"""


@cli.group(epilog=_EPILOG)
def testbed():
    """Test beds: hosts in network namespaces joined by veth links and bridges."""


@testbed.command(epilog=_EPILOG)
@click.argument("topology", type=click.Path(dir_okay=False))
@click.option("--name", help="Run the bed under this name instead of the file's (max 8 chars).")
@click.option("--check", "run_checks", is_flag=True, help="Run the topology's checks once it is up.")
def up(topology, name, run_checks):
    """Build the bed described in TOPOLOGY (YAML); all or nothing."""
    topo = load_topology(topology, name=name)
    console = Console(stderr=True)
    try:
        with _progress(console, _build.step_count(topo)) as step:
            start = time.monotonic()
            tb = Testbed.up(topology, name=name, progress=step)
    except KeyboardInterrupt:
        click.secho(f"interrupted: removed what test bed '{topo.name}' had made", fg="yellow", err=True)
        sys.exit(130)
    click.echo(f"test bed {tb.name} is up ({time.monotonic() - start:.1f} s):")
    for host in topo.hosts:
        services = ", ".join(p["service"] for p in tb.processes if p["host"] == host)
        addrs = " ".join(tb.addrs(host)) or "-"
        click.echo(f"  {host:<10} {tb.netns(host):<22} {addrs}" + (f"   [{services}]" if services else ""))
    if run_checks:
        for line in tb.check():
            click.echo(f"  ok  {line}")
    click.echo(f"run commands with `vnfchain testbed exec {tb.name} HOST -- CMD`; "
               f"remove it with `vnfchain testbed down {tb.name}`")


def _progress(console: Console, total: int):
    """A context manager yielding a step callback: a progress bar on a terminal,
    silent otherwise."""
    class _Quiet:
        def __enter__(self):
            return lambda text: None

        def __exit__(self, *exc):
            return False

    if not console.is_terminal:
        return _Quiet()

    class _Bar:
        def __enter__(self):
            self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                     MofNCompleteColumn(), console=console, transient=True)
            self.progress.__enter__()
            self.task = self.progress.add_task("starting", total=total)
            self.first = True

            def step(text):
                if not self.first:
                    self.progress.advance(self.task)
                self.first = False
                self.progress.update(self.task, description=text)
            return step

        def __exit__(self, *exc):
            return self.progress.__exit__(*exc)

    return _Bar()


@testbed.command()
@click.argument("names", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Take down every recorded bed.")
def down(names, all_):
    """Remove the beds NAMES: their processes, namespaces and links. Safe to repeat."""
    if all_:
        names = tuple(Testbed.names()) + tuple(n for n in names if n not in Testbed.names())
    elif not names:
        raise click.UsageError("name a test bed (see `vnfchain testbed ls`), or pass --all")
    for name in names:
        removed = _build.down(name)
        for warning in removed.warnings:
            click.secho(f"warning: {warning}", fg="yellow", err=True)
        if removed:
            click.echo(f"test bed {name} is down: removed {len(removed.namespaces)} namespaces, "
                       f"{len(removed.processes)} processes" +
                       (f", {len(removed.links)} links" if removed.links else ""))
        else:
            click.echo(f"test bed {name}: nothing to remove")


@testbed.command(name="ls")
def ls():
    """List the beds that are up (or being built)."""
    names = Testbed.names()
    if not names:
        click.echo("no test beds are up")
        return
    table = Table("name", "state", "hosts", "services", "topology", box=None)
    for name in names:
        record = Record.read(name)
        hosts = ", ".join(ns.removeprefix(f"vc-{name}-") for ns in record.namespaces)
        table.add_row(name, record.state, hosts, str(len(record.processes)), record.source or "-")
    Console().print(table)


@testbed.command(name="exec", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("name")
@click.argument("host")
@click.argument("cmd", nargs=-1, type=click.UNPROCESSED, required=True)
@click.pass_context
def exec_(ctx, name, host, cmd):
    """Run CMD inside HOST's namespace of bed NAME; exits with CMD's status.

    \b
    vnfchain testbed exec pvp client -- ping -c 1 198.18.2.2
    """
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise click.UsageError("give the command to run after HOST (and `--`)")
    tb = Testbed.attach(name)
    netns = tb.netns(host)
    if "/" not in cmd[0] and shutil.which(cmd[0]) is None:
        click.secho(f"error: {cmd[0]}: command not found (not on PATH: {os.environ.get('PATH', '')})",
                    fg="red", err=True)
        ctx.exit(127)        # as a shell says it
    try:
        proc = subprocess.run(["ip", "netns", "exec", netns, *cmd])
    except KeyboardInterrupt:
        ctx.exit(130)
    ctx.exit(proc.returncode)
