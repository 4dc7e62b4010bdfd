"""``vnfchain doctor``: can this machine run chains? A table of checks, each failure with its fix."""
from __future__ import annotations

import json

import click
from rich.console import Console
from rich.table import Table

from . import cli
from .. import doctor as doctor_lib


@cli.command(epilog="""\b
Examples:
  vnfchain doctor            # table of checks; exit 1 if any failed
  vnfchain doctor --json     # the same, for scripts
  vnfchain doctor --chain examples/pvp-forward.yaml   # and this chain's interfaces

\b
Caveats: needs root for most checks. The XDP attach check briefly creates
network namespace vcdoc-<pid> with a veth pair, and always removes it.""")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.option("--chain", "chain_file", type=click.Path(dir_okay=False),
              help="Also check this chain against the interfaces it would run on.")
@click.pass_context
def doctor(ctx, as_json, chain_file):
    """Check kernel, BPF, JIT, bpffs, BCC, headers, privileges and XDP."""
    err = Console(stderr=True)
    with err.status("running checks (compiles and attaches a tiny XDP program)…"):
        checks = doctor_lib.run_checks()
        if chain_file:
            checks += doctor_lib.chain_checks(chain_file)
    all_ok = all(check.ok for check in checks)
    if as_json:
        click.echo(json.dumps({"ok": all_ok, "checks": [c.to_dict() for c in checks]}, indent=2))
    else:
        _print_table(checks)
    ctx.exit(0 if all_ok else 1)


def _print_table(checks: list[doctor_lib.Check]) -> None:
    table = Table(show_header=True, header_style="bold")
    table.add_column("check", no_wrap=True)
    table.add_column("status", justify="center")
    table.add_column("detail / fix", overflow="fold")
    for check in checks:
        if check.ok:
            table.add_row(check.name, "[green]✓[/]", check.detail)
        else:
            table.add_row(check.name, "[red]✗[/]", f"{check.detail}\n[bold]fix:[/] {check.fix}")
    console = Console()
    console.print(table)
    failed = sum(not check.ok for check in checks)
    if failed:
        console.print(f"[red]{failed} of {len(checks)} checks failed[/]: apply the fixes above, "
                      "then run `vnfchain doctor` again.")
    else:
        console.print(f"[green]all {len(checks)} checks passed[/]: this machine can run vnfchain.")
