"""Live changes of a load balancer's backends are map updates (nothing is
compiled): a removed backend's flows move and no other flow does, a drained
backend keeps its flows but takes no new ones, new weights shape new flows."""
from __future__ import annotations

from collections import Counter

import pytest
import yaml
from scapy.layers.inet import IP, TCP

from vnfchain import Chain, DeployError
from vnfchain.chain.deploy import Deployment
from vnfchain.chain import deploy as deploy_mod
from tests.chain_fixtures import MODES, chain_name, delta, not_compiling
from tests.frames import eth

pytestmark = pytest.mark.root

B1, B2, B3 = "198.18.2.11", "198.18.2.12", "198.18.2.13"


def chain_yaml(name, mode, backends, table_size=4093, more=()):
    return yaml.safe_dump({"name": name, "mode": mode, "functions": {"lb": {
        "type": "loadbalancer", "table_size": table_size,
        "services": [{"vip": "198.18.0.100", "port": 80, "backends": backends}, *more]}}})


@pytest.fixture(params=MODES)
def lb(request, deployed):   # deployed: skips without root/BCC
    name = chain_name(f"lblive{request.param[0]}")

    def change(backends, **kw):
        return Chain.from_yaml_text(chain_yaml(name, request.param, backends, **kw)).deploy(attach=[])
    yield change
    deploy_mod.undeploy(name)


def send(dep, sports, flags="S"):
    """{sport: backend} for one packet of each flow."""
    template = bytearray(bytes(eth(IP(src="198.18.1.11", dst="198.18.0.100") / TCP(dport=80, flags=flags))))
    out = {}
    for sport in sports:
        template[34:36] = sport.to_bytes(2, "big")
        out[sport] = IP(dep.run(bytes(template)).data[14:]).dst
    return out


def test_removing_a_backend_moves_only_its_flows(lb):
    dep = lb([{"ip": B1}, {"ip": B2}, {"ip": B3}])
    flows = range(20000, 20600)
    first = send(dep, flows)
    assert set(first.values()) == {B1, B2, B3}
    before = dep.stats()
    with not_compiling():
        dep = lb([{"ip": B1}, {"ip": B2}])
    assert dep.last_change == "config"
    again = send(dep, flows, flags="A")
    on_b3 = [s for s in flows if first[s] == B3]
    assert all(again[s] == first[s] for s in flows if first[s] != B3)      # the others stay
    assert all(again[s] in (B1, B2) for s in on_b3)                          # its flows move
    counted = delta(before, dep.stats())["lb"]
    assert counted["moved_flows"] == len(on_b3) and counted["table_hits"] == len(flows) - len(on_b3)
    assert B3 not in send(dep, range(30000, 30300)).values()                # and no new flow goes there


def test_a_drained_backend_keeps_its_flows_and_takes_no_new_ones(lb):
    dep = lb([{"ip": B1}, {"ip": B2}])
    flows = range(21000, 21300)
    first = send(dep, flows)
    with not_compiling():
        dep = lb([{"ip": B1}, {"ip": B2, "drain": True}])
    assert send(dep, flows, flags="A") == first
    assert set(send(dep, range(31000, 31300)).values()) == {B1}
    state = dict((row[2], row) for row in dep.state()["lb"][1])
    assert state[f"{B2}:80"][4] == "draining" and state[f"{B2}:80"][5] == "0.0%"
    # every backend drained: new flows have nowhere to go, existing ones continue
    dep = lb([{"ip": B1, "drain": True}, {"ip": B2, "drain": True}])
    before = dep.stats()
    assert dep.run(eth(IP(src="198.18.1.11", dst="198.18.0.100") / TCP(sport=32000, dport=80))).action == "XDP_DROP"
    assert delta(before, dep.stats())["lb"]["drop_lb_no_backend"] == 1
    assert send(dep, flows, flags="A") == first


def test_new_weights_shape_new_flows(lb):
    lb([{"ip": B1}, {"ip": B2}])
    with not_compiling():
        dep = lb([{"ip": B1, "weight": 1}, {"ip": B2, "weight": 3}])
    seen = Counter(send(dep, range(40000, 42000)).values())
    assert seen[B2] / 2000 == pytest.approx(0.75, rel=0.08)


def test_a_new_set_of_config_maps_keeps_every_flow_on_its_backend(lb):
    eight = [{"ip": f"198.18.2.{11 + i}"} for i in range(8)]
    dep = lb(eight)
    flows = range(22000, 22400)
    first = send(dep, flows)
    old_pins = dict(dep.record.maps)
    # a ninth backend outgrows the backend maps and a new table size remakes the
    # ring: the new program gets a new set of config maps, with new backend ids
    dep = lb(eight + [{"ip": "198.18.2.19"}], table_size=4099)
    assert dep.record.maps != old_pins
    before = dep.stats()
    assert send(dep, flows, flags="A") == first
    assert delta(before, dep.stats())["lb"]["table_hits"] == len(flows)


def test_a_removed_backends_id_does_not_hand_its_flows_to_the_next_backend(lb):
    dep = lb([{"ip": B1}, {"ip": B2}, {"ip": B3}])
    flows = range(23000, 23300)
    first = send(dep, flows)
    on_b3 = [s for s in flows if first[s] == B3]
    lb([{"ip": B1}, {"ip": B2}])
    dep = lb([{"ip": B1}, {"ip": B2}, {"ip": "198.18.2.14"}])   # may get B3's old id
    before = dep.stats()
    again = send(dep, flows, flags="A")
    counted = delta(before, dep.stats())["lb"]
    assert counted["moved_flows"] == len(on_b3) and counted["table_hits"] == len(flows) - len(on_b3)
    assert all(again[s] == first[s] for s in flows if first[s] != B3)


def test_a_change_that_fails_half_way_is_rolled_back(lb, monkeypatch):
    from vnfchain.functions import loadbalancer
    other = {"vip": "198.18.0.101", "port": 80, "backends": [{"ip": B1}]}
    dep = lb([{"ip": B1}, {"ip": B2}], more=[other])
    writes = []
    real = loadbalancer.write_array

    def failing(table, start, values):
        writes.append(start)
        if len(writes) == 2:         # the second service's table
            raise OSError(12, "simulated: cannot allocate memory")
        real(table, start, values)
    monkeypatch.setattr(loadbalancer, "write_array", failing)
    with pytest.raises(DeployError, match="could not write its config into its maps: simulated"):
        lb([{"ip": B1}, {"ip": B2, "drain": True}], more=[dict(other, backends=[{"ip": B2}])])
    monkeypatch.setattr(loadbalancer, "write_array", real)
    dep = Deployment.get(dep.name)
    assert [row[4] for row in dep.state()["lb"][1]] == ["active", "active", "active"]
    assert set(send(dep, range(24000, 24100)).values()) == {B1, B2}
