"""Deploy converges, end to end on the pvp bed (client -- dut -- server): whatever
happened to a running chain since its deploy (its interfaces detached or
recreated with the bed, its pins removed, a prog-array slot emptied),
`vnfchain status` shows it and exits 1, deploying the same file again repairs
it and says so line by line, and real pings cross the chain and are counted
again. Someone else's program on an interface is never taken over."""
from __future__ import annotations

import contextlib
import itertools
import os
import subprocess

import pytest

from vnfchain import Deployment, NotDeployedError, bpfsys, netlink
from vnfchain.chain import deploy as deploy_mod
from vnfchain.chain.record import record_path
from tests.chain_fixtures import MODES, chain_name, cli_run
from tests.netns.test_chain_e2e import CHAIN   # counter -> classify -> counter -> forward, on dut-lan and dut-wan
from tests.testbed_fixtures import TOPOLOGIES

pytestmark = pytest.mark.root


_numbers = itertools.count()


@pytest.fixture(params=MODES)
def chain_file(request, pvp_bed, tmp_path):
    """A chain file for the bed's dut, deployed; undeployed after the test."""
    name = chain_name(f"cv{request.param[0]}{next(_numbers)}")
    path = tmp_path / "chain.yaml"
    path.write_text(CHAIN.format(name=name, mode=request.param, ns=pvp_bed.netns("dut")))
    deployed = cli_run("deploy", path)
    assert deployed.exit_code == 0, deployed.output
    try:
        yield path, name
    finally:
        with contextlib.suppress(NotDeployedError):
            deploy_mod.undeploy(name)


def counted_pings(bed, name, count=3) -> int:
    """Pings client -> server that got through; returns the ICMP packets the chain
    counted for them (a request in on dut-lan, a reply in on dut-wan: 2 each)."""
    bed.ping("client", bed.addr("server"), count=1)   # neighbours settled either way
    before = Deployment.get(name).stats()["ingress"].get("icmp_packets", 0)
    result = bed.ping("client", bed.addr("server"), count=count)
    assert result.ok and result.received == count, result
    return Deployment.get(name).stats()["ingress"].get("icmp_packets", 0) - before


def runs_chain(bed, name, ifname) -> bool:
    state = netlink.xdp_state(netlink.ifindex(ifname, bed.netns("dut")), bed.netns("dut"))
    return bool(state) and state[0] == Deployment.get(name).record.entry_prog_id


def ip(bed, *args):
    subprocess.run(["ip", "-n", bed.netns("dut"), *args], check=True, capture_output=True)


def test_an_unchanged_file_on_a_healthy_chain_is_unchanged(pvp_bed, chain_file):
    path, name = chain_file
    again = cli_run("deploy", path)
    assert again.exit_code == 0, again.output
    assert f"chain {name} unchanged: running on dut-lan@" in again.output
    assert Deployment.get(name).record.changes == 0          # not counted as a live change
    status = cli_run("status", name)
    assert status.exit_code == 0 and "health: ok" in status.output, status.output
    assert counted_pings(pvp_bed, name) == 6


def test_a_detached_interface_is_shown_then_attached_again(pvp_bed, chain_file):
    path, name = chain_file
    where = f"dut-lan@{pvp_bed.netns('dut')}"
    ip(pvp_bed, "link", "set", "dev", "dut-lan", "xdp", "off")     # someone detached it
    assert counted_pings(pvp_bed, name) == 3                        # the replies alone, on dut-wan

    status = cli_run("status", name)
    assert status.exit_code == 1
    assert f"health: {where} (its XDP program was detached): does not run the chain" in status.output, \
        status.output

    repaired = cli_run("deploy", path)
    assert repaired.exit_code == 0, repaired.output
    assert f"re-attached to {where} (its XDP program was detached)\n" in repaired.output
    assert f"repaired chain {name} in " in repaired.output
    assert runs_chain(pvp_bed, name, "dut-lan")
    assert counted_pings(pvp_bed, name) == 6
    assert cli_run("status", name).exit_code == 0


def test_a_recreated_bed_is_attached_again(testbed, tmp_path):
    """The bed's namespaces and veths go and come back (a container restart):
    new ifindexes, no XDP program. While they are gone, deploy cannot help and
    says why; once they are back it re-attaches and names the new ifindexes."""
    tb = testbed(TOPOLOGIES / "pvp.yaml", "cvbed")
    ns, name = tb.netns("dut"), chain_name("cvbed")
    path = tmp_path / "chain.yaml"
    path.write_text(CHAIN.format(name=name, mode="tailcall", ns=ns))
    try:
        assert cli_run("deploy", path).exit_code == 0
        old = {a.interface: a.ifindex for a in Deployment.get(name).record.attachments}
        tb.down()

        status = cli_run("status", name)
        assert status.exit_code == 1
        assert f"dut-lan@{ns} (network namespace '{ns}' is gone): does not run the chain" in status.output
        failed = cli_run("deploy", path)
        assert failed.exit_code == 1
        assert f"network namespace '{ns}' does not exist" in failed.output, failed.output

        tb = testbed(TOPOLOGIES / "pvp.yaml", "cvbed")
        new = {ifname: netlink.ifindex(ifname, ns) for ifname in old}
        lines = {ifname: f"dut-lan@{ns} (recreated: ifindex {old[ifname]} -> {new[ifname]})"
                 .replace("dut-lan", ifname) for ifname in old}
        if new == old:
            pytest.skip("the recreated interfaces got their old ifindexes back")
        assert lines["dut-wan"] + ": does not run the chain" in cli_run("status", name).output

        repaired = cli_run("deploy", path)
        assert repaired.exit_code == 0, repaired.output
        for line in lines.values():
            assert f"re-attached to {line}\n" in repaired.output, repaired.output
        record = Deployment.get(name).record
        assert {a.interface: a.ifindex for a in record.attachments} == new
        assert runs_chain(tb, name, "dut-lan") and runs_chain(tb, name, "dut-wan")
        assert counted_pings(tb, name) == 6
    finally:
        with contextlib.suppress(NotDeployedError):
            deploy_mod.undeploy(name)


def test_removed_pins_are_pinned_again_and_state_kept(pvp_bed, chain_file):
    path, name = chain_file
    assert counted_pings(pvp_bed, name) == 6
    dep = Deployment.get(name)
    counted = dep.stats()
    web_map = dep.record.maps["web_by_proto"]
    removed = [dep.gen_dir / "entry", dep.gen_dir / "state", web_map]
    for pin in removed:
        os.unlink(pin)

    status = cli_run("status", name)
    assert status.exit_code == 1
    for pin in removed:
        assert f"{pin} (pin missing): the chain's programs still use it" in status.output, status.output

    repaired = cli_run("deploy", path)
    assert repaired.exit_code == 0, repaired.output
    for pin in removed:
        assert f"re-pinned {pin} (pin missing)\n" in repaired.output, repaired.output
    after = Deployment.get(name)
    assert after.record.generation == dep.record.generation       # the same programs, kept
    assert after.stats()["ingress"]["icmp_packets"] == counted["ingress"]["icmp_packets"]   # the same counters
    assert counted_pings(pvp_bed, name) == 6
    assert cli_run("status", name).exit_code == 0


@pytest.mark.parametrize("chain_file", ["tailcall"], indirect=True)
def test_an_emptied_slot_and_a_removed_prog_array_pin_are_refilled(pvp_bed, chain_file):
    """Without its slot, `out` is a failed tail call (on_miss: drop): pings die.
    Without its pin, the kernel empties the whole prog array."""
    path, name = chain_file
    dep = Deployment.get(name)
    slot = {f.name: f.slot for f in dep.record.functions}["out"]
    with bpfsys.PinnedMap(str(dep.gen_dir / "progs")) as progs:
        progs.delete(slot.to_bytes(4, "little"))
    assert not pvp_bed.ping("client", pvp_bed.addr("server"), count=2).ok
    assert Deployment.get(name).stats()["steer"]["tail_call_miss"] > 0
    problem = f"prog-array slot {slot} of function 'out' (empty)"
    status = cli_run("status", name)
    assert status.exit_code == 1 and f"{problem}: packets bound for it get on_miss (drop)" in status.output
    repaired = cli_run("deploy", path)
    assert repaired.exit_code == 0 and f"refilled {problem}\n" in repaired.output, repaired.output
    assert counted_pings(pvp_bed, name) == 6

    os.unlink(dep.gen_dir / "progs")
    assert not pvp_bed.ping("client", pvp_bed.addr("server"), count=2).ok
    repaired = cli_run("deploy", path)
    assert repaired.exit_code == 0, repaired.output
    assert f"re-pinned {dep.gen_dir / 'progs'} (pin missing)\n" in repaired.output
    assert repaired.output.count("refilled prog-array slot") == len(dep.record.functions)
    assert counted_pings(pvp_bed, name) == 6


def test_a_gone_entry_program_is_rebuilt_as_a_new_generation(pvp_bed, chain_file):
    """Its pin removed and both interfaces detached, nothing holds the entry
    program: the kernel frees it. Deploy builds a new generation, counters carried."""
    path, name = chain_file
    assert counted_pings(pvp_bed, name) == 6
    dep = Deployment.get(name)
    counted = dep.stats()["ingress"]["icmp_packets"]
    os.unlink(dep.gen_dir / "entry")
    for ifname in ("dut-lan", "dut-wan"):
        ip(pvp_bed, "link", "set", "dev", ifname, "xdp", "off")
    gone = f"{dep.gen_dir / 'entry'} (pin missing; the program is gone)"
    assert f"{gone}: the chain cannot run as recorded" in cli_run("status", name).output

    repaired = cli_run("deploy", path)
    assert repaired.exit_code == 0, repaired.output
    assert f"built a new generation for {gone}\n" in repaired.output
    after = Deployment.get(name)
    assert after.record.generation == dep.record.generation + 1 and not dep.gen_dir.exists()
    assert after.stats()["ingress"]["icmp_packets"] == counted
    assert counted_pings(pvp_bed, name) == 6
    assert cli_run("status", name).exit_code == 0


def test_someone_elses_program_is_never_taken_over(pvp_bed, chain_file):
    """Our program on dut-lan replaced by another (as `ip link set dev dut-lan
    xdp obj ...` after ours went): status and deploy name it, deploy touches
    nothing; once its owner detaches it, deploy attaches the chain again."""
    from vnfchain.chain.compile import bcc
    path, name = chain_file
    ns = pvp_bed.netns("dut")
    index = netlink.ifindex("dut-lan", ns)
    other = bcc().BPF(text=b"int other(struct xdp_md *ctx) { return XDP_PASS; }")
    try:
        prog = other.load_func(b"other", bcc().BPF.XDP)
        other_id = bpfsys.prog_id(prog.fd)
        dep = Deployment.get(name)
        ours = dep.entry_fd()
        try:
            netlink.xdp_attach(index, prog.fd, dep.record.attachments[0].mode, ns, replace_fd=ours)
        finally:
            os.close(ours)
        problem = f"dut-lan@{ns} (runs another program, id {other_id})"

        status = cli_run("status", name)
        assert status.exit_code == 1
        assert f"{problem}: does not run the chain; deploy never replaces it: detach it first: " \
               f"`ip -n {ns} link set dev dut-lan xdp off`" in status.output, status.output
        refused = cli_run("deploy", path)
        assert refused.exit_code == 1
        assert f"interface dut-lan@{ns} already has an XDP program (program id {other_id}) attached" \
            in refused.output, refused.output
        assert netlink.xdp_state(index, ns)[0] == other_id                  # untouched
        assert Deployment.get(name).record == dep.record
        assert runs_chain(pvp_bed, name, "dut-wan")

        ip(pvp_bed, "link", "set", "dev", "dut-lan", "xdp", "off")          # its owner takes it off
        repaired = cli_run("deploy", path)
        assert repaired.exit_code == 0, repaired.output
        assert f"re-attached to dut-lan@{ns} (its XDP program was detached)" in repaired.output
        assert counted_pings(pvp_bed, name) == 6
    finally:
        with contextlib.suppress(Exception):
            netlink.xdp_detach(index, "native", ns, expected_fd=prog.fd)
        other.cleanup()


def snapshot(bed, name) -> dict:
    """Everything a deploy could change, as bytes: the record, every pin (which
    object it holds; a map's contents), each dut interface's XDP program."""
    pins = {}
    root = Deployment.get(name).pin_dir
    for pin in sorted(p for p in root.rglob("*") if p.is_file()):
        fd = bpfsys.obj_get(str(pin))
        try:
            if pin.name == "entry" or pin.name.startswith("fn_"):
                pins[str(pin)] = bpfsys.prog_id(fd)
                continue
            info = bpfsys.map_info(fd)
        finally:
            os.close(fd)
        with bpfsys.PinnedMap(str(pin)) as m:    # a prog array's values are program ids
            contents = b"".join(k + b"".join(m.lookup(k) or []) for k in m.keys()) if info["type"] != 27 else b""
        pins[str(pin)] = (info["id"], contents)
    hooks = {ifname: netlink.xdp_state(netlink.ifindex(ifname, bed.netns("dut")), bed.netns("dut"))
             for ifname in ("dut-lan", "dut-wan")}
    return {"record": record_path(name).read_bytes(), "pins": pins, "hooks": hooks}


def test_dry_run_prints_the_plan_and_changes_nothing(pvp_bed, chain_file):
    path, name = chain_file
    ip(pvp_bed, "link", "set", "dev", "dut-wan", "xdp", "off")
    path.write_text(path.read_text().replace("{proto: tcp, label: web}", "{proto: tcp, dport: 80, label: web}"))
    before = snapshot(pvp_bed, name)

    dry = cli_run("deploy", path, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert snapshot(pvp_bed, name) == before
    where = f"dut-wan@{pvp_bed.netns('dut')}"
    assert f"plan for chain {name}: config (" in dry.output, dry.output
    assert f"  repair: re-attach to {where} (its XDP program was detached)\n" in dry.output
    assert "  maps: write the config of function 'steer'\n" in dry.output
    assert dry.output.endswith("nothing was changed (dry run)\n")

    done = cli_run("deploy", path)
    assert done.exit_code == 0, done.output
    assert f"re-attached to {where} (its XDP program was detached)\n" in done.output
    assert f"changed chain {name} live in " in done.output and "configuration only" in done.output
    assert counted_pings(pvp_bed, name) == 6
