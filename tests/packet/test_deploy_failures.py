"""A failed deploy says why and leaves nothing behind; a running chain is never
disturbed by someone else's failure."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vnfchain import Chain, CompileError, DeployError, VerifierError
from vnfchain.chain import deploy as deploy_mod
from vnfchain.chain.compile import compile_unit
from vnfchain.chain.render import Unit
from vnfchain import netlink
from tests.chain_fixtures import chain_name
from tests.scratch_netns import scratch_netns

pytestmark = pytest.mark.root


def leftovers(name):
    return [p for p in (deploy_mod.pin_root() / name, deploy_mod.record_path(name)) if p.exists()]


@pytest.fixture
def bpf(deployed):  # the session fixture skips without root/BCC
    return deployed


def test_compile_error_shows_the_compilers_lines(bpf):
    unit = Unit("broken.bpf.c", "int vc_entry(struct xdp_md *ctx) { return nosuch; }\n", (("vc_entry", ""),))
    with pytest.raises(CompileError) as info:
        compile_unit(unit, label="function 'x'")
    assert "function 'x' does not compile" in info.value.message
    assert "broken.bpf.c:1" in info.value.detail and "nosuch" in info.value.detail


def test_verifier_rejection_shows_the_verifiers_lines(bpf):
    source = ("#include <uapi/linux/bpf.h>\n"
              "int vc_entry(struct xdp_md *ctx) { return *(char *)(long)ctx->data; }\n")
    with pytest.raises(VerifierError) as info:
        compile_unit(Unit("bad.bpf.c", source, (("vc_entry", ""),)), label="function 'y'")
    assert "verifier rejected function 'y'" in info.value.message
    assert "invalid access to packet" in info.value.detail


def test_missing_interface_fails_before_anything_is_made(bpf):
    name = chain_name("noif")
    chain = Chain.from_yaml_text(f"name: {name}\nfunctions:\n  c: {{type: counter}}\n")
    with pytest.raises(DeployError) as info:
        chain.deploy(attach=["vctnosuch0"])
    assert "interface 'vctnosuch0' does not exist" in info.value.message
    assert leftovers(name) == []


def test_failure_half_way_rolls_back(bpf):
    name = chain_name("half")
    chain = Chain.from_yaml_text(f"name: {name}\nfunctions:\n  out: {{type: forward, interface: vctnosuch1}}\n")
    with pytest.raises(DeployError) as info:
        chain.deploy(attach=[])
    assert "interface 'vctnosuch1' does not exist" in info.value.message
    assert leftovers(name) == []


def test_compile_failure_rolls_back_and_leaves_running_chain_alone(bpf, monkeypatch):
    running = bpf("name: x\nfunctions:\n  c: {type: counter}\n", "tailcall")
    assert running.run(b"\x00" * 14).action == "XDP_PASS"

    name = chain_name("cerr")
    monkeypatch.setattr(deploy_mod, "render", lambda spec, pin_dir, **kw: [
        Unit("chain.bpf.c", "int vc_entry(struct xdp_md *ctx) { return oops; }", (("vc_entry", ""),))])
    with pytest.raises(CompileError):
        Chain.from_yaml_text(f"name: {name}\nfunctions:\n  c: {{type: counter}}\n").deploy(attach=[])
    assert leftovers(name) == []
    assert running.run(b"\x00" * 14).action == "XDP_PASS"
    assert running.health() == []


def test_undeploy_after_a_crash_half_way(bpf):
    """A deploy that died after pinning (record says 'deploying') is undone."""
    name = chain_name("crash")
    chain = Chain.from_yaml_text(f"name: {name}\nfunctions:\n  c: {{type: counter}}\n")
    dep = chain.deploy(attach=[])
    try:
        deploy_mod._write_record(dict(dep.record, state="deploying"))
        assert "deploy did not finish" in " ".join(deploy_mod.Deployment.get(name).health())
    finally:
        deploy_mod.undeploy(name)
    assert leftovers(name) == []
    with pytest.raises(deploy_mod.NotDeployedError):
        deploy_mod.undeploy(name)


TWO = "name: x\nfunctions:\n  a: {type: counter, next: b}\n  b: {type: counter}\n"


def _break_b(unit: Unit, bad: str) -> Unit:
    i = unit.source.index("int b_body")
    source = unit.source[:i] + unit.source[i:].replace("tally->packets++;", bad, 1)
    return Unit(unit.name, source, unit.programs)


@pytest.mark.parametrize("mode", ["tailcall", "fused"])
def test_errors_name_the_function_at_fault(bpf, mode, tmp_path):
    (unit,) = Chain.from_yaml_text(TWO).render(mode=mode, pin_dir=str(deploy_mod.pin_root() / chain_name("blame")))
    (deploy_mod.pin_root() / chain_name("blame")).mkdir(parents=True, exist_ok=True)
    try:
        with pytest.raises(CompileError) as info:
            compile_unit(_break_b(unit, "tally->packets += no_such_name;"), label="chain 'x'")
        assert info.value.message.startswith("function 'b' of chain 'x' does not compile")
        assert "(function b (counter)):" in info.value.detail and "no_such_name" in info.value.detail

        with pytest.raises(VerifierError) as info:
            compile_unit(_break_b(unit, "tally->packets += *(char *)(long)ctx->data;"), label="chain 'x'")
        assert "rejected function 'b' of chain 'x'" in info.value.message
        assert "invalid access to packet" in info.value.detail
    finally:
        import shutil
        shutil.rmtree(deploy_mod.pin_root() / chain_name("blame"), ignore_errors=True)


DIE_AFTER_ATTACH = """
import os, sys
from vnfchain import Chain
from vnfchain.chain import deploy
attach = deploy._attach
def attach_then_die(*args, **kwargs):
    attach(*args, **kwargs)
    os._exit(3)          # killed between attaching and recording the change
deploy._attach = attach_then_die
Chain.from_yaml_text(sys.argv[1]).deploy()
"""


def test_undeploy_after_a_crash_while_a_live_change_attached_an_interface(bpf):
    ns = f"vctd{os.getpid()}"
    name = chain_name("crashatt")
    text = "name: {name}\nattach: [{points}]\nfunctions:\n  c: {{type: counter}}\n"
    with scratch_netns(ns, {"a0": [], "b0": []}) as (_, index, _ip):
        Chain.from_yaml_text(text.format(name=name, points=f"{{interface: a0, netns: {ns}}}")).deploy()
        try:
            both = text.format(name=name, points=f"{{interface: a0, netns: {ns}}}, {{interface: b0, netns: {ns}}}")
            child = subprocess.run([sys.executable, "-c", DIE_AFTER_ATTACH, both], capture_output=True,
                                   cwd=Path(__file__).resolve().parents[2])
            assert child.returncode == 3, child.stderr.decode()
            assert netlink.xdp_state(index["b0"], ns)            # attached, but not recorded as such
        finally:
            deploy_mod.undeploy(name)
        assert netlink.xdp_state(index["b0"], ns) is None and netlink.xdp_state(index["a0"], ns) is None
    assert leftovers(name) == []
