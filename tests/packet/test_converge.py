"""Deploy is declarative, seen through BPF_PROG_TEST_RUN and the CLI: an
interface a function's config names that was recreated is written into its
maps again, a pin that holds another map is put back, the chain attached again
in another mode is recorded as it runs, `rollback` returns the
rules that ran before (again and again), `diff` shows the YAML that differs,
`deploy --dry-run` of a new chain makes nothing, and the exit codes are 0, 1
and 2 as documented."""
from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import time

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from vnfchain import Deployment, NotDeployedError, bpfsys, netlink
from vnfchain.chain import deploy as deploy_mod
from vnfchain.chain.record import HISTORY, record_path
from vnfchain.testbed.netlink import set_offloads, socket_in
from tests.chain_fixtures import MODES, chain_name, cli_run
from tests.scratch_netns import scratch_netns

pytestmark = pytest.mark.root

FIREWALL = """
name: {name}
mode: {mode}
functions:
  fw:
    type: firewall
    default: drop
    rules: [{{action: allow, proto: tcp, dport: {port}}}]
"""


def tcp(port):
    return Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src="198.18.1.2", dst="198.18.2.2") \
        / TCP(dport=port)


@pytest.fixture
def chain_file(deployed, tmp_path):   # deployed: skips without root/BCC
    """write(port=..., mode=...) -> the chain file, rewritten; the chain is undeployed after the test."""
    name = chain_name("conv")
    path = tmp_path / "chain.yaml"

    def write(template=FIREWALL, **values):
        path.write_text(template.format(name=name, **values))
        return path
    write.name = name
    yield write
    with contextlib.suppress(NotDeployedError):
        deploy_mod.undeploy(name)


def verdicts(name, ports=(22, 80, 443)) -> dict[int, str]:
    dep = Deployment.get(name)
    return {port: dep.run(tcp(port)).action for port in ports}


@pytest.mark.parametrize("mode", MODES)
def test_rollback_returns_the_previous_rules_again_and_again(chain_file, mode):
    for port in (80, 443, 22):
        deployed = cli_run("deploy", chain_file(port=port, mode=mode))
        assert deployed.exit_code == 0, deployed.output
    name = chain_file.name
    assert verdicts(name) == {22: "XDP_PASS", 80: "XDP_DROP", 443: "XDP_DROP"}
    status = cli_run("status", name)
    assert status.output.count("  earlier: deployed ") == 2, status.output
    assert f"`vnfchain rollback {name}` returns to the newest earlier one" in status.output

    back = cli_run("rollback", name)
    assert back.exit_code == 0, back.output
    assert f"changed chain {name} live in " in back.output and "configuration only" in back.output
    assert verdicts(name) == {22: "XDP_DROP", 80: "XDP_DROP", 443: "XDP_PASS"}
    assert cli_run("rollback", name).exit_code == 0
    assert verdicts(name) == {22: "XDP_DROP", 80: "XDP_PASS", 443: "XDP_DROP"}
    assert Deployment.get(name).record.changes == 4            # two deploys, two rollbacks: live changes

    none_left = cli_run("rollback", name)
    assert none_left.exit_code == 1
    assert none_left.output.startswith(f"error: chain '{name}' has no earlier definition to roll back to")
    assert verdicts(name) == {22: "XDP_DROP", 80: "XDP_PASS", 443: "XDP_DROP"}


def test_the_record_keeps_the_last_five_definitions(chain_file):
    ports = [1000 + i for i in range(HISTORY + 2)]
    for port in ports:
        assert cli_run("deploy", chain_file(port=port, mode="tailcall")).exit_code == 0
    record = Deployment.get(chain_file.name).record
    assert [r.spec["functions"]["fw"]["rules"][0]["dport"] for r in record.history] == \
        [[port] for port in ports[-HISTORY - 1:-1]]
    assert [r.deployed for r in record.history] == sorted(r.deployed for r in record.history)
    assert record.since >= record.history[-1].deployed
    dry = cli_run("rollback", chain_file.name, "--dry-run")
    assert dry.exit_code == 0 and "plan for chain" in dry.output and ": config (" in dry.output, dry.output
    assert Deployment.get(chain_file.name).record == record


def test_diff_shows_the_yaml_that_differs_and_the_kind_of_change(chain_file):
    name = chain_file.name
    assert cli_run("deploy", chain_file(port=80, mode="tailcall")).exit_code == 0
    same = cli_run("diff", name, chain_file(port=80, mode="tailcall"))
    assert same.exit_code == 0, same.output
    assert same.output == f"no differences: {chain_file(port=80, mode='tailcall')} is the running definition of " \
                          f"chain {name}\ndeploying it: unchanged (the kernel already runs this definition: " \
                          f"nothing to do)\n"

    changed = cli_run("diff", name, chain_file(port=443, mode="fused"))
    assert changed.exit_code == 0, changed.output
    lines = changed.output.splitlines()
    assert lines[0].startswith(f"--- {name} (running since ") and lines[1] == f"+++ {chain_file(port=443, mode='fused')}"
    assert "-mode: tailcall" in lines and "+mode: fused" in lines
    assert [ln for ln in lines if "dport" in ln and ln[0] in "+-"] == ["-      dport: [80]", "+      dport: [443]"]
    assert lines[-1].startswith("deploying it: topology (")

    wrong = cli_run("diff", "vctno-such", chain_file(port=443, mode="fused"))
    assert wrong.exit_code == 2 and f"defines chain '{name}', not 'vctno-such'" in wrong.output


def test_exit_codes_and_a_dry_run_of_a_new_chain(chain_file, tmp_path):
    name = chain_file.name
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"name: {name}\nfunctions: {{fw: {{type: firewall, default: maybe}}}}\n")
    assert cli_run("deploy", bad).exit_code == 2
    assert cli_run("status", name).exit_code == 1                 # not deployed

    dry = cli_run("deploy", chain_file(port=80, mode="tailcall"), "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert f"plan for chain {name}: new (" in dry.output and "programs: build generation 1" in dry.output
    assert not record_path(name).exists() and not (deploy_mod.pin_root() / name).exists()

    assert cli_run("deploy", chain_file(port=80, mode="tailcall")).exit_code == 0
    assert cli_run("status", name).exit_code == 0
    again = cli_run("deploy", chain_file(port=80, mode="tailcall"))
    assert again.exit_code == 0 and f"chain {name} unchanged: running on nothing (not attached)" in again.output
    os.unlink(Deployment.get(name).record.maps["fw_hits"])
    assert cli_run("status", name).exit_code == 1
    assert cli_run("deploy", chain_file(port=80, mode="tailcall")).exit_code == 0
    assert cli_run("status", name).exit_code == 0


def _map_create(map_type: int, key_size: int, value_size: int, max_entries: int) -> int:
    lib = bpfsys.lib()
    lib.bpf_map_create.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32, ctypes.c_uint32,
                                   ctypes.c_uint32, ctypes.c_void_p]
    fd = lib.bpf_map_create(map_type, b"vct_other", key_size, value_size, max_entries, None)
    assert fd >= 0, os.strerror(-fd)
    return fd


COUNTERS = """
name: {name}
mode: {mode}
functions:
  steer: {{type: classify, rules: [{{proto: tcp, label: web}}], next: {{web: web, default: tail}}}}
  web: {{type: counter, next: tail}}
  tail: {{type: counter}}
"""


@pytest.mark.parametrize("mode", MODES)
def test_a_pin_that_holds_another_map_is_given_back_its_own(chain_file, mode):
    """Someone pinned a map of another layout where the chain's counter map was:
    stats would read that one. Deploy pins the chain's own map (its counts kept)."""
    name = chain_file.name
    assert cli_run("deploy", chain_file(COUNTERS, mode=mode)).exit_code == 0
    dep = Deployment.get(name)
    for _ in range(3):
        dep.run(tcp(80))
    pin = dep.record.maps["web_by_proto"]
    ours = dep.record.map_ids[pin]
    os.unlink(pin)
    other = _map_create(1, 8, 8, 16)            # a hash map, 8-byte keys and values
    try:
        bpfsys.obj_pin(other, pin)
        other_id = bpfsys.map_info(other)["id"]
    finally:
        os.close(other)
    problem = (f"{pin} (holds another map of another layout (type 1, key 8 B, value 8 B, 16 entries; the "
               f"chain's: type {ours.type}, key {ours.key_size} B, value {ours.value_size} B, "
               f"{ours.max_entries} entries), id {other_id}, not the chain's id {ours.id})")
    status = cli_run("status", name)
    assert status.exit_code == 1 and f"{problem}: the chain's programs still use it" in status.output, status.output

    repaired = cli_run("deploy", chain_file(COUNTERS, mode=mode))
    assert repaired.exit_code == 0, repaired.output
    assert f"re-pinned {problem}\n" in repaired.output, repaired.output
    with bpfsys.PinnedMap(pin) as m:
        assert bpfsys.map_info(m.fd)["id"] == ours.id
    assert Deployment.get(name).stats()["web"]["tcp_packets"] == 3
    assert Deployment.get(name).run(tcp(80)).action == "XDP_PASS"
    assert Deployment.get(name).stats()["web"]["tcp_packets"] == 4


WIRE = """
name: {name}
mode: {mode}
attach: [{{interface: a0, netns: {ns}}}]
functions:
  count: {{type: counter, next: out}}
  out: {{type: forward, interface: b0}}
"""


def _frames_through(ns: str, count: int = 3) -> int:
    """UDP frames sent into a0 (from its peer) that come out of b0 (at its peer)."""
    frame = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") /
                  IP(src="198.18.1.2", dst="198.18.2.2") / UDP(sport=4000, dport=4001) / b"vct-wire")
    with socket_in(ns, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003)) as rx, \
            socket_in(ns, socket.AF_PACKET, socket.SOCK_RAW, 0) as tx:
        rx.bind(("b0p", 0x0003))
        tx.bind(("a0p", 0))
        for _ in range(count):
            tx.send(frame)
        got, deadline = 0, time.monotonic() + 1
        while (left := deadline - time.monotonic()) > 0:
            rx.settimeout(left)
            try:
                got += rx.recv(2048).endswith(b"vct-wire")
            except TimeoutError:
                break
    return got


@pytest.mark.parametrize("mode", MODES)
def test_an_interface_a_function_names_is_written_again_when_recreated(chain_file, mode):
    """`forward: {interface: b0}` holds b0's ifindex in a map. b0 recreated (a
    container restart), frames are redirected nowhere; deploy rewrites the map."""
    ns = f"vctw{os.getpid()}"
    with scratch_netns(ns, {"a0": [], "b0": []}) as (_, index, ip):
        set_offloads(ns, "b0p", gro=True, tx_checksum=False)   # b0p takes redirected frames
        name = chain_file.name
        assert cli_run("deploy", chain_file(WIRE, mode=mode, ns=ns)).exit_code == 0
        assert _frames_through(ns) == 3

        ip("link", "del", "b0")
        ip("link", "add", "b0", "type", "veth", "peer", "name", "b0p")
        for end in ("b0", "b0p"):
            ip("link", "set", end, "up")
        set_offloads(ns, "b0p", gro=True, tx_checksum=False)
        new = netlink.ifindex("b0", ns)
        assert _frames_through(ns) == 0
        problem = f"function 'out' (interface 'b0' recreated: ifindex {index['b0']} -> {new})"
        status = cli_run("status", name)
        assert status.exit_code == 1
        assert f"{problem}: its maps hold the interface's old ifindex" in status.output, status.output

        repaired = cli_run("deploy", chain_file(WIRE, mode=mode, ns=ns))
        assert repaired.exit_code == 0, repaired.output
        assert f"rewrote the maps of {problem}\n" in repaired.output, repaired.output
        assert _frames_through(ns) == 3
        assert Deployment.get(name).record.config_ifindexes == {"out": {"b0": new}}
        assert cli_run("status", name).exit_code == 0


def test_the_chain_attached_again_in_another_mode_is_recorded_so(chain_file):
    """Someone put the chain's own program back in generic mode: it runs, but the
    record says native, and undeploy (which detaches by mode) would miss it."""
    ns = f"vctm{os.getpid()}"
    text = "name: {name}\nattach: [{{interface: a0, netns: {ns}}}]\nfunctions: {{c: {{type: counter}}}}\n"
    with scratch_netns(ns, {"a0": []}) as (_, index, ip):
        name = chain_file.name
        assert cli_run("deploy", chain_file(text, ns=ns)).exit_code == 0
        dep = Deployment.get(name)
        assert dep.record.attachments[0].mode == "native"
        ip("link", "set", "dev", "a0", "xdp", "off")
        entry = dep.entry_fd()
        try:
            netlink.xdp_attach(index["a0"], entry, "generic", ns)
        finally:
            os.close(entry)
        problem = f"a0@{ns} (runs in generic mode, recorded native, runs the chain)"
        status = cli_run("status", name)
        assert status.exit_code == 1 and f"{problem}: the record is out of date" in status.output, status.output

        repaired = cli_run("deploy", chain_file(text, ns=ns))
        assert repaired.exit_code == 0 and f"updated the record of {problem}\n" in repaired.output, repaired.output
        assert Deployment.get(name).record.attachments[0].mode == "generic"
        assert cli_run("undeploy", name).exit_code == 0
        assert netlink.xdp_state(index["a0"], ns) is None
