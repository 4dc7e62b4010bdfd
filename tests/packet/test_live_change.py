"""Deploying a running chain's name changes it live, as little as needed:
config -> maps in place, code -> slot swap, topology -> new generation swapped
in atomically. State maps and counters survive; a failed change changes nothing."""
from __future__ import annotations

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from vnfchain import Chain, DeployError
from vnfchain.chain import deploy as deploy_mod
from tests.chain_fixtures import chain_name, not_compiling

pytestmark = pytest.mark.root

BASE = """
name: {name}
mode: {mode}
functions:
  steer:
    type: classify
    rules: [{{proto: tcp, dport: {port}, label: web}}{more}]
    next: {{web: web, default: tail}}
  web: {{type: counter, next: tail}}
  tail: {{type: counter, verdict: {verdict}}}
"""

EXTRA = BASE.replace("verdict: {verdict}}}", "verdict: {verdict}, next: extra}}") + """  extra: {{type: counter}}
"""

BROKEN = BASE.replace("verdict: {verdict}}}", "verdict: {verdict}, next: out}}") + """  out: {{type: forward, interface: vctnosuch2}}
"""


def tcp(port):
    return Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src="198.18.1.2", dst="198.18.2.2") / TCP(dport=port)


def prog_ids(dep):
    return dep.record.entry_prog_id, {f.name: f.prog_id for f in dep.record.functions}


@pytest.fixture
def chain(deployed):  # deployed: skips without root/BCC
    name = chain_name("live")

    def change(template=BASE, **kw):
        values = dict(name=name, mode="tailcall", port=80, verdict="continue", more="")
        values.update(kw)
        return Chain.from_yaml_text(template.format(**values)).deploy(attach=[])

    yield change
    deploy_mod.undeploy(name)
    assert not (deploy_mod.pin_root() / name).exists()


def visits(dep, packet):
    before = dep.stats()
    action = dep.run(packet).action
    after = dep.stats()
    return action, [fn for fn in ("steer", "web", "tail", "extra")
                    if fn in after and after[fn]["rx_packets"] - before.get(fn, {}).get("rx_packets", 0)]


def test_config_change_updates_maps_and_keeps_programs(chain):
    dep = chain(port=80)
    assert visits(dep, tcp(80)) == ("XDP_PASS", ["steer", "web", "tail"])
    ids, web_before = prog_ids(dep), dep.stats()["web"]["tcp_packets"]

    with not_compiling():
        dep = chain(port=443)
    assert dep.last_change == "config"
    assert prog_ids(dep) == ids                        # no program was replaced
    assert visits(dep, tcp(80)) == ("XDP_PASS", ["steer", "tail"])
    assert visits(dep, tcp(443)) == ("XDP_PASS", ["steer", "web", "tail"])
    assert dep.stats()["web"]["tcp_packets"] == web_before + 1   # state kept


def test_a_counters_verdict_is_config(chain):
    dep = chain()
    dep.run(tcp(22))
    ids, tail_seen = prog_ids(dep), dep.stats()["tail"]

    with not_compiling():
        dep = chain(verdict="drop")
    assert dep.last_change == "config" and prog_ids(dep) == ids
    assert dep.run(tcp(22)).action == "XDP_DROP"
    assert dep.stats()["tail"]["tcp_packets"] == tail_seen["tcp_packets"] + 1
    with not_compiling():
        assert chain(verdict="continue").run(tcp(22)).action == "XDP_PASS"


def test_code_change_swaps_only_that_functions_slot(chain):
    dep = chain()
    dep.run(tcp(22))
    (entry, fns), tail_seen = prog_ids(dep), dep.stats()["tail"]
    maps = dict(dep.record.maps)

    # 41 rules outgrow the room the rules map was made with: a new map size is steer's code
    dep = chain(more="".join(f", {{proto: udp, dport: {port}, label: web}}" for port in range(1, 41)))
    assert dep.last_change == "code"
    new_entry, new_fns = prog_ids(dep)
    assert new_entry == entry and new_fns["tail"] == fns["tail"] and new_fns["web"] == fns["web"]
    assert new_fns["steer"] != fns["steer"]
    assert dep.run(tcp(22)).action == "XDP_PASS"
    assert dep.run(Ether() / IP(src="198.18.1.2", dst="198.18.2.2") / UDP(dport=40)).action == "XDP_PASS"
    stats = dep.stats()
    assert stats["tail"]["rx_packets"] == tail_seen["rx_packets"] + 2    # same counters
    assert stats["tail"]["tcp_packets"] == tail_seen["tcp_packets"] + 1  # same state map
    assert stats["web"]["udp_packets"] == 1                              # the new rules hold
    assert {k: v for k, v in dep.record.maps.items() if k != "steer_rules"} == \
        {k: v for k, v in maps.items() if k != "steer_rules"}


def test_topology_change_builds_a_new_generation_and_carries_counters(chain):
    dep = chain()
    for _ in range(3):
        dep.run(tcp(80))
    old_gen, entry = dep.gen_dir, dep.record.entry_prog_id
    web_map = dep.record.maps["web_by_proto"]

    dep = chain(EXTRA)
    assert dep.last_change == "topology"
    assert dep.record.entry_prog_id != entry and not old_gen.exists()
    assert dep.record.maps["web_by_proto"] == web_map        # state map reused
    assert dep.stats()["web"]["rx_packets"] == 3                # counters carried over
    assert dep.stats()["web"]["tcp_packets"] == 3
    assert visits(dep, tcp(80)) == ("XDP_PASS", ["steer", "web", "tail", "extra"])


def test_mode_change_is_a_topology_change(chain):
    chain()
    dep = chain(mode="fused")
    assert dep.last_change == "topology" and dep.record.mode == "fused"
    assert visits(dep, tcp(80))[0] == "XDP_PASS"
    assert chain(mode="fused", port=8080).last_change == "config"


def test_failed_change_leaves_the_running_chain_exactly_as_it_was(chain):
    dep = chain()
    before = dep.record
    pins = sorted(p.name for p in (dep.pin_dir / "maps").iterdir())
    with pytest.raises(DeployError) as info:
        chain(BROKEN)
    assert "vctnosuch2" in info.value.message
    after = deploy_mod.Deployment.get(dep.name)
    assert after.record == before
    assert sorted(p.name for p in (dep.pin_dir / "maps").iterdir()) == pins
    assert [p.name for p in dep.pin_dir.iterdir() if p.name.startswith("g")] == [dep.gen_dir.name]
    assert visits(after, tcp(80)) == ("XDP_PASS", ["steer", "web", "tail"])


WIRED = """
name: {name}
functions:
  steer:
    type: classify
    rules: [{{proto: tcp, dport: {port}, label: web}}]
    next: {{web: web, default: out}}
  web: {{type: counter, next: out}}
  out: {{type: forward, interface: {interface}}}
"""


def test_a_config_change_that_would_fail_half_way_changes_nothing(deployed):
    name = chain_name("half")
    dep = Chain.from_yaml_text(WIRED.format(name=name, port=80, interface="lo")).deploy(attach=[])
    try:
        assert visits(dep, tcp(80))[1] == ["steer", "web"]
        with pytest.raises(DeployError) as info:   # new rules, and an interface that is not there
            Chain.from_yaml_text(WIRED.format(name=name, port=443, interface="vctnosuch3")).deploy(attach=[])
        assert "vctnosuch3" in info.value.message
        assert visits(dep, tcp(80))[1] == ["steer", "web"]     # the old rules still run
        assert visits(dep, tcp(443))[1] == ["steer"]
    finally:
        deploy_mod.undeploy(name)
