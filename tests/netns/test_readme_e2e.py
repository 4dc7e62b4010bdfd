"""The README's Python example, run as written on a pvp test bed (only the bed's
namespace and the chain's name are this run's own)."""
from __future__ import annotations

import contextlib
import io

import pytest

from tests.chain_fixtures import chain_name
from tests.readme_blocks import blocks

pytestmark = [pytest.mark.root, pytest.mark.netns]


def test_the_python_example_runs_as_written(pvp_bed):
    (code,) = blocks("python")
    name = chain_name("readme")
    code = code.replace("vc-pvp-dut", pvp_bed.netns("dut")).replace('name="pvp-edge"', f'name="{name}"')
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            exec(compile(code, "README.md", "exec"), {})
    finally:
        from vnfchain.chain import deploy as deploy_mod
        with contextlib.suppress(Exception):
            deploy_mod.undeploy(name)
    action, size, counted = printed.getvalue().split()
    assert action.startswith("XDP_") and int(size) == 54
    assert counted == "1"
