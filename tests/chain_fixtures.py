"""Chain fixtures (a pytest plugin, loaded from tests/conftest.py).

    def test_x(deployed):
        dep = deployed(CHAIN_YAML, "fused")     # compiled once per session, never attached
        result = dep.run(packet)                # BPF_PROG_TEST_RUN through the whole chain
        assert cli_run("status", dep.name).exit_code == 0   # the CLI, in this process

Chains are named ``vct<pid>-<n>`` and undeployed at the end of the session, so
cleanup touches only this run's pins and records.
"""
from __future__ import annotations

import contextlib
import os

import pytest

from vnfchain import Chain

MODES = ("tailcall", "fused")


def _need_bpf():
    if os.geteuid() != 0:
        pytest.skip("needs root (BPF)")
    try:
        import bcc  # noqa: F401
    except ImportError:
        pytest.skip("needs BCC (python3-bpfcc)")


def chain_name(tag: str) -> str:
    return f"vct{os.getpid()}-{tag}"[:23]


@pytest.fixture(scope="session")
def deployed():
    """Factory: ``deployed(yaml_text, mode)`` -> Deployment (not attached), cached."""
    _need_bpf()
    cache: dict = {}

    def make(text: str, mode: str = "tailcall", tag: str | None = None, attach=()):
        """attach: where to attach (IF@NETNS); interfaces named in the chain are
        looked up in the first one's namespace."""
        key = (text, mode, tuple(attach))
        if key not in cache:
            chain = Chain.from_yaml_text(text).with_mode(mode)
            name = chain_name(tag or f"{len(cache)}{mode[0]}")
            chain = Chain(chain.spec.with_changes(name=name))
            cache[key] = chain.deploy(attach=list(attach))
        return cache[key]

    yield make
    for dep in cache.values():
        dep.undeploy()


def cli_run(*args):
    """The CLI as a user runs it: an error is a message and an exit code, never a traceback."""
    from click.testing import CliRunner
    import vnfchain.cli.commands  # noqa: F401  (registers the commands)
    from vnfchain.cli import cli
    result = CliRunner().invoke(cli, [str(a) for a in args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def delta(before: dict, after: dict) -> dict:
    """Counters that changed between two stats() snapshots: {function: {counter: n}}."""
    out = {}
    for fn, counters in after.items():
        changed = {k: v - before[fn].get(k, 0) for k, v in counters.items() if v != before[fn].get(k, 0)}
        if changed:
            out[fn] = changed
    return out


@contextlib.contextmanager
def not_compiling():
    """Fails the test if a deploy inside compiles anything (a config change must
    be map updates only)."""
    from vnfchain.chain import build
    with pytest.MonkeyPatch.context() as m:
        m.setattr(build, "compile_unit", lambda *a, **k: pytest.fail("a config change compiled"))
        yield
