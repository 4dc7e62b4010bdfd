"""The ``vnfchain`` command line: a thin layer over the library.

Each sub-module registers its commands on ``cli``; errors from the library
(``VnfchainError``) become one clear message and the error's exit code
(0 ok, 1 runtime failure, 2 usage/validation error).
"""
from __future__ import annotations

import sys

import click

from .. import __version__
from ..errors import VnfchainError


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except VnfchainError as exc:
            verbose = (ctx.obj or {}).get("verbose", False)
            for line in exc.message.splitlines():    # SpecErrors: every mistake, one a line
                click.secho(f"error: {line}", fg="red", err=True)
            if exc.detail:
                detail = exc.detail if verbose else _tail(exc.detail)
                click.echo(detail, err=True)
            ctx.exit(exc.exit_code)


def _tail(text: str, lines: int = 25) -> str:
    rows = text.rstrip().splitlines()
    if len(rows) <= lines:
        return "\n".join(rows)
    return "\n".join(["  ... (run with -v for all of it)"] + rows[-lines:])


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vnfchain")
@click.option("-v", "--verbose", is_flag=True, help="Show detail: compiler and verifier output, tracebacks.")
@click.pass_context
def cli(ctx, verbose):
    """Run NFV service chains inside the Linux kernel at the XDP hook."""
    ctx.obj = {"verbose": verbose}


def main():
    from . import commands  # noqa: F401  (registers the commands)
    for optional in ("testbed", "doctor"):
        try:
            __import__(f"{__name__}.{optional}")
        except ImportError as exc:  # a sub-command whose module is missing
            if f"{__name__}.{optional}" not in str(exc):
                raise
    cli(prog_name="vnfchain")


if __name__ == "__main__":
    sys.exit(main())
