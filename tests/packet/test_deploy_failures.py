"""A failed deploy says why and leaves nothing behind; a running chain is never
disturbed by someone else's failure."""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vnfchain import Chain, CompileError, DeployError, NotDeployedError, VerifierError, netlink, statedir
from vnfchain.chain import build, deploy as deploy_mod
from vnfchain.chain.compile import compile_unit
from vnfchain.chain.record import Record, record_path
from vnfchain.chain.render import Unit
from tests.chain_fixtures import chain_name, cli_run
from tests.scratch_netns import scratch_netns

pytestmark = pytest.mark.root


def leftovers(name):
    return [p for p in (deploy_mod.pin_root() / name, record_path(name)) if p.exists()]


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
    monkeypatch.setattr(build, "render", lambda spec, pin_dir, **kw: [
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
        dep.record.replace(state="deploying").save()
        assert "deploy stopped after loading its programs" in " ".join(deploy_mod.Deployment.get(name).health())
    finally:
        deploy_mod.undeploy(name)
    assert leftovers(name) == []
    with pytest.raises(NotDeployedError):
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
from vnfchain.chain import attach
real_attach = attach.attach
def attach_then_die(*args, **kwargs):
    real_attach(*args, **kwargs)
    os._exit(3)          # killed between attaching and recording the change
attach.attach = attach_then_die
Chain.from_yaml_text(sys.argv[1]).deploy()
"""


@pytest.mark.parametrize("xdp_mode", ["auto", "generic"])
def test_undeploy_after_a_crash_while_a_live_change_attached_an_interface(bpf, xdp_mode):
    """The interface is found by its program, its mode read from the kernel."""
    ns = f"vctd{os.getpid()}"
    name = chain_name("crashatt")
    text = f"name: {{name}}\nxdp_mode: {xdp_mode}\nattach: [{{points}}]\nfunctions:\n  c: {{{{type: counter}}}}\n"
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


def test_an_interface_a_killed_change_attached_is_detached_by_deploying_the_file_without_it(bpf, tmp_path):
    ns = f"vctd{os.getpid()}"
    name = chain_name("convpend")
    text = f"name: {{name}}\nattach: [{{points}}]\nfunctions:\n  c: {{{{type: counter}}}}\n"
    one = text.format(name=name, points=f"{{interface: a0, netns: {ns}}}")
    (tmp_path / "chain.yaml").write_text(one)
    with scratch_netns(ns, {"a0": [], "b0": []}) as (_, index, _ip):
        Chain.from_yaml_text(one).deploy()
        try:
            both = text.format(name=name, points=f"{{interface: a0, netns: {ns}}}, {{interface: b0, netns: {ns}}}")
            child = subprocess.run([sys.executable, "-c", DIE_AFTER_ATTACH, both], capture_output=True,
                                   cwd=Path(__file__).resolve().parents[2])
            assert child.returncode == 3, child.stderr.decode()
            again = cli_run("deploy", tmp_path / "chain.yaml")
            assert again.exit_code == 0, again.output
            assert f"detached the chain from b0@{ns} (was being attached when vnfchain stopped)\n" in again.output
            assert netlink.xdp_state(index["b0"], ns) is None
            dep = deploy_mod.Deployment.get(name)
            assert [a.interface for a in dep.record.attachments] == ["a0"] and dep.health() == []
        finally:
            deploy_mod.undeploy(name)
    assert leftovers(name) == []


# -- deploys killed half-way, and records that cannot be read: seen, and removed --------

KILL_AT = """
import os, sys
from vnfchain import Chain, bpfsys, netlink
from vnfchain.chain import build
from vnfchain.chain.record import Record

def die_after(owner, name, nth):
    real, calls = getattr(owner, name), []
    def wrapper(*args, **kwargs):
        result = real(*args, **kwargs)
        calls.append(1)
        if len(calls) == nth:
            os._exit(3)
        return result
    setattr(owner, name, wrapper)

owner, name, nth = {
    "record": (Record, "save", 1),             # the record and nothing else
    "compiled": (build, "compile_unit", 1),    # loaded (maps pinned by BCC), no program pinned
    "pinned": (bpfsys, "obj_pin", 1),          # one program pinned of three
    "built": (Record, "save", 2),              # all pinned and recorded, nothing attached
    "attached": (netlink, "xdp_attach", 1),    # a0 attached, not yet recorded as such
}[sys.argv[2]]
die_after(owner, name, nth)
Chain.from_yaml_text(sys.argv[1]).deploy()
"""

# (kill point, what `status` must say is wrong)
KILLS = [
    ("record", "deploy stopped before it recorded its programs"),
    ("compiled", "deploy stopped before it recorded its programs"),
    ("pinned", "deploy stopped before it recorded its programs"),
    ("built", "deploy stopped after loading its programs"),
    ("attached", "was being attached when vnfchain stopped"),
]


@pytest.fixture
def own_state(bpf, monkeypatch):
    """A pin root and run dir of this test's own, so that `undeploy --all` touches
    only what the test made (never the session's chains); both removed after."""
    import shutil
    suffix = f"-k{os.getpid()}"
    pins, run = Path(f"{deploy_mod.pin_root()}{suffix}"), Path(f"{statedir.run_dir()}{suffix}")
    monkeypatch.setenv("VNFCHAIN_BPFFS", str(pins))
    monkeypatch.setenv("VNFCHAIN_RUN", str(run))
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            cli_run("undeploy", "--all")
        shutil.rmtree(pins, ignore_errors=True)
        shutil.rmtree(run, ignore_errors=True)


def nothing_left(name, ns, index) -> list:
    left = [str(p) for p in (deploy_mod.pin_root() / name, record_path(name)) if p.exists()]
    return left + [dev for dev in index if netlink.xdp_state(index[dev], ns)]


@pytest.mark.parametrize("point,problem", KILLS, ids=[k[0] for k in KILLS])
def test_a_deploy_killed_half_way_is_listed_as_broken_and_undeployed(own_state, point, problem):
    ns, name = f"vctk{os.getpid()}", chain_name(f"kill{point}")
    text = (f"name: {name}\nattach: [{{interface: a0, netns: {ns}}}, {{interface: b0, netns: {ns}}}]\n"
            "functions:\n  a: {type: counter, next: b}\n  b: {type: counter}\n")
    with scratch_netns(ns, {"a0": [], "b0": []}) as (_, index, _ip):
        child = subprocess.run([sys.executable, "-c", KILL_AT, text, point], capture_output=True,
                               cwd=Path(__file__).resolve().parents[2])
        assert child.returncode == 3, child.stderr.decode()
        if point == "attached":
            assert netlink.xdp_state(index["a0"], ns)      # running, but not recorded as attached

        listed = cli_run("ls", "--json")
        assert listed.exit_code == 0, listed.output
        (row,) = [r for r in json.loads(listed.output) if r["name"] == name]
        assert row["state"] == "broken", row
        assert any(f"`vnfchain undeploy {name}`" in p for p in row["problems"]), row

        status = cli_run("status", name)
        assert status.exit_code == 1, status.output
        assert f"chain {name}: broken" in status.output and problem in status.output, status.output

        undeployed = cli_run("undeploy", "--all")
        assert undeployed.exit_code == 0 and f"undeployed chain {name}" in undeployed.output, undeployed.output
        assert nothing_left(name, ns, index) == []
        assert "no chains deployed" in cli_run("ls").output


# (kill point, what deploying the same file again says it did: {ns} is the namespace)
CONVERGED = {
    "record": ["removed what was left and deployed anew: deploy stopped before it recorded its programs"],
    "compiled": ["removed what was left and deployed anew: deploy stopped before it recorded its programs"],
    "pinned": ["removed what was left and deployed anew: deploy stopped before it recorded its programs"],
    "built": ["resumed: deploy stopped after loading its programs", "attached to a0@{ns} (not attached yet)",
              "attached to b0@{ns} (not attached yet)"],
    "attached": ["resumed: deploy stopped after loading its programs",
                 "updated the record of a0@{ns} (was being attached when vnfchain stopped)",
                 "attached to b0@{ns} (not attached yet)"],
}


@pytest.mark.parametrize("point", list(CONVERGED))
def test_a_deploy_killed_half_way_is_finished_by_deploying_again(own_state, point, tmp_path):
    ns, name = f"vctk{os.getpid()}", chain_name(f"conv{point}")
    text = (f"name: {name}\nattach: [{{interface: a0, netns: {ns}}}, {{interface: b0, netns: {ns}}}]\n"
            "functions:\n  a: {type: counter, next: b}\n  b: {type: counter}\n")
    (tmp_path / "chain.yaml").write_text(text)
    with scratch_netns(ns, {"a0": [], "b0": []}) as (_, index, _ip):
        child = subprocess.run([sys.executable, "-c", KILL_AT, text, point], capture_output=True,
                               cwd=Path(__file__).resolve().parents[2])
        assert child.returncode == 3, child.stderr.decode()
        assert cli_run("status", name).exit_code == 1

        again = cli_run("deploy", tmp_path / "chain.yaml")
        assert again.exit_code == 0, again.output
        for line in CONVERGED[point]:
            assert line.format(ns=ns) in again.output, again.output
        dep = deploy_mod.Deployment.get(name)
        assert dep.health() == [] and cli_run("status", name).exit_code == 0
        assert [netlink.xdp_state(index[dev], ns)[0] for dev in ("a0", "b0")] == [dep.record.entry_prog_id] * 2
        assert dep.run(b"\x00" * 14, ingress_ifindex=index["a0"], netns=ns).action == "XDP_PASS"
        assert dep.stats()["a"]["rx_packets"] == 1
        assert cli_run("undeploy", name).exit_code == 0
        assert nothing_left(name, ns, index) == []


DIE_AFTER_SWITCH = """
import os, sys
from vnfchain import Chain, netlink
real_attach = netlink.xdp_attach
def switch_then_die(*args, **kwargs):
    real_attach(*args, **kwargs)
    os._exit(3)          # a topology change killed after switching its first interface
netlink.xdp_attach = switch_then_die
Chain.from_yaml_text(sys.argv[1]).deploy()
"""


def test_a_topology_change_killed_half_way_is_finished_by_deploying_again(own_state, tmp_path):
    """a0 runs the new generation, b0 the old one, the record names the old one:
    deploying the new file again puts a0 back, removes the half-built
    generation and makes the change whole."""
    ns, name = f"vctg{os.getpid()}", chain_name("convtopo")
    text = (f"name: {name}\nattach: [{{interface: a0, netns: {ns}}}, {{interface: b0, netns: {ns}}}]\n"
            "functions:\n  a: {type: counter}\n")
    grown = text.replace("a: {type: counter}", "a: {type: counter, next: b}\n  b: {type: counter}")
    (tmp_path / "chain.yaml").write_text(grown)
    with scratch_netns(ns, {"a0": [], "b0": []}) as (_, index, _ip):
        first = Chain.from_yaml_text(text).deploy()
        child = subprocess.run([sys.executable, "-c", DIE_AFTER_SWITCH, grown], capture_output=True,
                               cwd=Path(__file__).resolve().parents[2])
        assert child.returncode == 3, child.stderr.decode()
        stale = netlink.xdp_state(index["a0"], ns)[0]
        assert stale != first.record.entry_prog_id
        problem = f"a0@{ns} (runs generation 2's entry program, id {stale})"
        status = cli_run("status", name)
        assert status.exit_code == 1 and f"{problem}: runs a stale generation of the chain" in status.output

        again = cli_run("deploy", tmp_path / "chain.yaml")
        assert again.exit_code == 0, again.output
        assert f"switched {problem} to the running programs\n" in again.output
        assert f"removed {first.pin_dir / 'g2'} (a generation left by a change that stopped half-way)\n" \
            in again.output
        assert f"changed chain {name} live in " in again.output
        dep = deploy_mod.Deployment.get(name)
        assert dep.record.generation == 2 and dep.health() == []
        assert [netlink.xdp_state(index[dev], ns)[0] for dev in ("a0", "b0")] == [dep.record.entry_prog_id] * 2
        assert dep.run(b"\x00" * 14, ingress_ifindex=index["b0"], netns=ns).action == "XDP_PASS"
        assert dep.stats()["b"]["rx_packets"] == 1
        assert cli_run("undeploy", name).exit_code == 0
        assert nothing_left(name, ns, index) == []


def test_a_chain_whose_pins_were_removed_is_broken(own_state):
    name = chain_name("nopin")
    dep = Chain.from_yaml_text(f"name: {name}\nfunctions:\n  a: {{type: counter, next: b}}\n"
                               f"  b: {{type: counter}}\n").deploy(attach=[])
    (dep.gen_dir / "fn_b").unlink()
    assert deploy_mod.Deployment.get(name).condition() == "broken"
    status = cli_run("status", name)
    assert status.exit_code == 1
    assert f"{dep.gen_dir / 'fn_b'} (pin missing)" in status.output, status.output
    assert cli_run("undeploy", name).exit_code == 0
    assert not dep.pin_dir.exists() and not record_path(name).exists()


def _truncate(path):
    path.write_bytes(path.read_bytes()[:100])


def _foreign(path):
    os.chown(path, 65534, 65534)


def _link(path):
    path.unlink()
    path.symlink_to("/etc/hostname")


def _reshape(key, value=None):
    """A record that is JSON with every key, but one of them of another shape
    (an older or newer vnfchain's, or edited by hand); value None: without key."""
    def damage(path):
        record = json.loads(path.read_text())
        if value is None:
            del record[key]
        else:
            record[key] = value
        path.write_text(json.dumps(record))
    return damage


DAMAGE = [(_truncate, "not JSON"), (_foreign, "belongs to uid 65534"), (_link, "is a symbolic link"),
          (lambda p: p.write_text("[]"), "not a deployment record"),
          (_reshape("attachments", "a0"), "not a deployment record (attachments is not a list)"),
          (_reshape("attachments", [{"interface": "a0"}]), "not a deployment record (attachments[0] has no netns)"),
          (_reshape("pin_dir", 5), "not a deployment record (pin_dir is not a string)"),
          (_reshape("functions", [7]), "not a deployment record (functions[0] is not a mapping)"),
          (_reshape("generation"), "not a deployment record (no generation)")]
DAMAGE_IDS = ["truncated", "foreign", "symlink", "not-a-record", "attachments-a-string", "attachment-half",
              "pin-dir-a-number", "function-a-number", "running-without-generation"]


@pytest.mark.parametrize("damage,reason", DAMAGE, ids=DAMAGE_IDS)
def test_an_unreadable_record_is_listed_and_undeploy_removes_what_it_can(own_state, damage, reason):
    ns, name = f"vctu{os.getpid()}", chain_name("unread")
    hostname = Path("/etc/hostname").read_bytes()
    with scratch_netns(ns, {"a0": []}) as (_, index, _ip):
        Chain.from_yaml_text(f"name: {name}\nfunctions: {{c: {{type: counter}}}}\n").deploy(attach=[f"a0@{ns}"])
        damage(record_path(name))

        assert f"{name}  unreadable" in cli_run("ls").output
        listed = cli_run("ls", "--json")
        assert listed.exit_code == 0
        (row,) = [r for r in json.loads(listed.output) if r["name"] == name]
        assert row["state"] == "unreadable" and str(record_path(name)) in row["problems"][0]
        assert reason in row["problems"][0], row
        status = cli_run("status", name)
        assert status.exit_code == 1 and status.output.startswith(f"error: the record of chain '{name}'")
        assert f"`vnfchain undeploy {name}` removes what it can" in status.output

        undeployed = cli_run("undeploy", "--all")
        assert undeployed.exit_code == 0, undeployed.output
        assert f"undeployed chain {name}" in undeployed.output and "was unreadable" in undeployed.output
        assert nothing_left(name, ns, index) == []        # a0 found without the record, and detached
    assert Path("/etc/hostname").read_bytes() == hostname


def test_a_deploy_at_work_is_deploying_not_broken(own_state):
    """While some vnfchain holds the lock, an unfinished record is its work in progress."""
    import threading
    from vnfchain.chain.record import locked
    name = chain_name("busy")
    Record(name=name, state="deploying", pin_dir=deploy_mod.pin_root() / name, pid=os.getpid()).save()
    holding, release = threading.Event(), threading.Event()

    def deploying():
        with locked(name):
            holding.set()
            release.wait(10)
    worker = threading.Thread(target=deploying)
    worker.start()
    try:
        assert holding.wait(10)
        assert deploy_mod.Deployment.get(name).condition() == "deploying"
    finally:
        release.set()
        worker.join(10)
    assert deploy_mod.Deployment.get(name).condition() == "broken"
    assert cli_run("undeploy", name).exit_code == 0 and not record_path(name).exists()


def test_pins_without_a_record_are_listed_and_removed(own_state):
    name = chain_name("orphan")
    (deploy_mod.pin_root() / name / "g1").mkdir(parents=True)
    (row,) = json.loads(cli_run("ls", "--json").output)
    assert (row["name"], row["state"]) == (name, "broken")
    assert row["problems"][0] == f"no record, only pins under {deploy_mod.pin_root() / name}"
    assert cli_run("undeploy", "--all").exit_code == 0
    assert not (deploy_mod.pin_root() / name).exists()


def test_pins_whose_record_was_removed_are_replaced_by_deploying_again(own_state, tmp_path):
    """The chain runs on a0 but its record is gone: deploy takes its programs off,
    removes its pins and deploys the file anew."""
    ns, name = f"vctr{os.getpid()}", chain_name("norec")
    text = f"name: {name}\nattach: [{{interface: a0, netns: {ns}}}]\nfunctions: {{c: {{type: counter}}}}\n"
    (tmp_path / "chain.yaml").write_text(text)
    with scratch_netns(ns, {"a0": []}) as (_, index, _ip):
        old = Chain.from_yaml_text(text).deploy()
        record_path(name).unlink()
        again = cli_run("deploy", tmp_path / "chain.yaml")
        assert again.exit_code == 0, again.output
        assert f"removed what was left and deployed anew: no record, only pins under {old.pin_dir}\n" \
            in again.output
        dep = deploy_mod.Deployment.get(name)
        assert dep.health() == [] and netlink.xdp_state(index["a0"], ns)[0] == dep.record.entry_prog_id
        assert dep.record.entry_prog_id != old.record.entry_prog_id
        assert cli_run("undeploy", name).exit_code == 0
        assert nothing_left(name, ns, index) == []


def test_stats_and_trace_of_a_chain_missing_pins_say_so(own_state):
    name = chain_name("nostate")
    dep = Chain.from_yaml_text(f"name: {name}\nfunctions: {{c: {{type: counter}}}}\n").deploy(attach=[])
    (dep.gen_dir / "state").unlink()
    for command in (["stats", name], ["trace", name, "--packet", "Ether()/IP()/TCP()"]):
        result = cli_run(*command)
        assert result.exit_code == 1
        assert result.output.startswith(f"error: chain '{name}' is broken: 1 of its pins are gone "
                                        f"({dep.gen_dir / 'state'}, ...)"), result.output
