"""What a user changes in a function's config -- rules, a verdict, an
interface, timeouts, signatures -- lives in the function's maps: deploying the
change compiles nothing, replaces no program, and holds from the next packet,
for every function type, in both chain modes. And every map the kernel holds is
what its type's maps() declares: kind, size, and key and value sizes from the
layouts' codecs (vnfchain/layout.py)."""
from __future__ import annotations

import contextlib
import os
import re
import time

import pytest
import yaml
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import ARP, Ether

from tests.chain_fixtures import MODES, chain_name, delta, not_compiling
from tests.frames import eth
from tests.scratch_netns import scratch_netns
from vnfchain import Chain, bpfsys
from vnfchain.chain import deploy as deploy_mod

pytestmark = pytest.mark.root

NS = f"vctc{os.getpid()}"
LAN_HOST, REMOTE, NAT = "198.18.1.11", "198.18.100.2", "198.18.100.1"
MAP_TYPES = {"hash": 1, "array": 2, "percpu_hash": 5, "percpu_array": 6, "lru_hash": 9, "lpm_trie": 11,
             "ringbuf": 27}


@pytest.fixture(scope="module")
def gateways():
    """A namespace per mode: lan0 (198.18.1.1/24) and wan0 (198.18.100.1/24)
    for the NAT, out0 and out1 for the rest: {mode: (netns, {ifname: ifindex})}."""
    with contextlib.ExitStack() as stack:
        made = {}
        for i, mode in enumerate(MODES):
            ns, index, _ip = stack.enter_context(scratch_netns(
                f"{NS}{i}", {"lan0": ["198.18.1.1/24"], "wan0": ["198.18.100.1/24"], "out0": [], "out1": []},
                forwarding=True))
            made[mode] = (ns, index)
        yield made


@pytest.fixture(params=MODES)
def live(request, deployed, gateways):   # deployed: skips without root/BCC
    """(change, run): change(functions, attach) deploys the chain of these
    functions under one name (the first time new, then a live change);
    run(packet, ingress) runs a frame in from an interface of the mode's
    namespace."""
    mode = request.param
    ns, index = gateways[mode]
    name = chain_name(f"cfg{re.sub('[^a-z]', '', request.node.name[5:10])}{mode[0]}")

    def change(functions: dict, attach=("out0",)):
        text = yaml.safe_dump({"name": name, "mode": mode, "functions": functions})
        dep = Chain.from_yaml_text(text).deploy(attach=[f"{a}@{ns}" for a in attach])
        assert_maps_are_declared(dep)
        return dep

    def run(dep, packet, ingress="out0"):
        return dep.run(packet, ingress_ifindex=index[ingress], netns=ns)
    yield change, run
    deploy_mod.undeploy(name)


def assert_maps_are_declared(dep) -> None:
    """Every map the chain pinned is one maps() declares, as the kernel made it."""
    declared = {}
    for f in dep.spec.functions:
        for m in f.ftype.maps(f.params):
            declared[f"{f.name}_{m.name}"] = (MAP_TYPES[m.kind], m.key.size if m.key else 0,
                                              m.value.size if m.value else 0, m.max_entries)
    made = {}
    for name, pin in dep.record.maps.items():
        with bpfsys.PinnedMap(pin) as m:
            made[name] = (m.type, m.key_size, m.value_size, m.max_entries)
    assert made == declared


def programs(dep) -> tuple:
    return dep.record.entry_prog_id, [f.prog_id for f in dep.record.functions]


def tcp(dport, src="198.18.1.2"):
    return eth(IP(src=src, dst="198.18.2.2") / TCP(sport=40000, dport=dport, flags="S"))


def test_rules_a_verdict_and_an_interface(live):
    change, run = live
    wired = {"steer": {"type": "classify", "rules": [{"proto": "tcp", "dport": 80, "label": "web"}],
                       "next": {"web": "web", "default": "out"}},
             "web": {"type": "counter", "next": "out"},
             "out": {"type": "forward", "interface": "out1"}}
    dep = change(wired)
    assert run(dep, tcp(80)).action == "XDP_REDIRECT"          # out of out1
    ids = programs(dep)
    wired["steer"]["rules"][0]["dport"] = 443
    wired["web"]["verdict"] = "drop"
    del wired["out"]["interface"]                              # the FIB: no route to 198.18.2.2 here
    with not_compiling():
        dep = change(wired)
    assert dep.last_change == "config" and programs(dep) == ids
    before = dep.stats()
    assert run(dep, tcp(443)).action == "XDP_DROP"             # the new rule, the new verdict
    assert run(dep, tcp(80)).action == "XDP_PASS"              # the FIB leaves it to the kernel
    counted = delta(before, dep.stats())
    assert counted["web"]["tcp_packets"] == 1 and counted["out"]["rx_packets"] == 1


def test_firewall_rules_non_ip_and_conntrack_timeouts(live):
    change, run = live
    fw = {"type": "firewall", "default": "drop", "conntrack": True,
          "rules": [{"action": "allow", "ct": ["established"]},
                    {"action": "allow", "proto": "udp", "src": "198.18.1.0/24", "ct": ["new"]}]}
    dep = change({"fw": fw})
    ids = programs(dep)

    def reply_after_a_while(sport):
        """A UDP query from the inside, and its answer 1.2 s later."""
        assert run(dep, eth(IP(src="198.18.1.2", dst="198.18.2.2") / UDP(sport=sport, dport=53))).action == \
            "XDP_PASS"
        time.sleep(1.2)
        return run(dep, eth(IP(src="198.18.2.2", dst="198.18.1.2") / UDP(sport=53, dport=sport))).action

    assert reply_after_a_while(5000) == "XDP_PASS"             # within the 30 s of an unconfirmed UDP flow
    assert run(dep, Ether() / ARP()).action == "XDP_PASS"      # non_ip: allow
    assert run(dep, tcp(22, src="198.18.9.9")).action == "XDP_DROP"
    fw.update(timeouts={"udp": 1}, non_ip="drop")
    fw["rules"].append({"action": "allow", "proto": "tcp", "dport": 22})
    with not_compiling():
        dep = change({"fw": fw})
    assert dep.last_change == "config" and programs(dep) == ids
    assert reply_after_a_while(5001) == "XDP_DROP"             # its flow timed out after 1 s
    assert run(dep, Ether() / ARP()).action == "XDP_DROP"
    assert run(dep, tcp(22, src="198.18.9.9")).action == "XDP_PASS"


def test_nat_timeouts(live):
    change, run = live
    nat = {"type": "nat", "outside": "wan0", "snat": [{"src": "198.18.1.0/24", "to": "masquerade"}]}
    attach = ("lan0", "wan0")
    dep = change({"nat": nat}, attach)
    ids = programs(dep)

    def reply_after_a_while(sport):
        """Where the answer to a UDP query from the inside goes, 1.2 s after it."""
        out = run(dep, eth(IP(src=LAN_HOST, dst=REMOTE) / UDP(sport=sport, dport=53)), "lan0")
        assert out.packet[IP].src == NAT
        time.sleep(1.2)
        back = run(dep, eth(IP(src=REMOTE, dst=NAT) / UDP(sport=53, dport=out.packet[UDP].sport)), "wan0")
        return back.packet[IP].dst

    assert reply_after_a_while(5000) == LAN_HOST               # translated back
    nat["timeouts"] = {"udp": 1}
    with not_compiling():
        dep = change({"nat": nat}, attach)
    assert dep.last_change == "config" and programs(dep) == ids
    assert reply_after_a_while(5001) == NAT                    # the mapping timed out after 1 s: untouched


def test_loadbalancer_idle_timeout(live):
    change, run = live
    lb = {"type": "loadbalancer", "table_size": 251,
          "services": [{"vip": "198.18.0.100", "port": 53, "proto": "udp", "backends": [{"ip": "198.18.2.11"}]}]}
    dep = change({"lb": lb})
    ids = programs(dep)

    def query(sport):
        return run(dep, eth(IP(src=LAN_HOST, dst="198.18.0.100") / UDP(sport=sport, dport=53)))

    def again_after_a_while(sport):
        """What a flow's second datagram, 1.2 s after its first, counts as."""
        query(sport)
        time.sleep(1.2)
        before = dep.stats()
        query(sport)
        counted = delta(before, dep.stats())["lb"]
        return {k: v for k, v in counted.items() if k in ("new_flows", "table_hits")}

    assert again_after_a_while(5000) == {"table_hits": 1}     # the flow keeps its backend
    lb["idle_timeout"] = 1
    with not_compiling():
        dep = change({"lb": lb})
    assert dep.last_change == "config" and programs(dep) == ids
    assert again_after_a_while(5001) == {"new_flows": 1}      # idle 1 s: scheduled again


def test_dpi_signatures_and_app_rules(live):
    change, run = live

    def http(host, path="/"):
        return eth(IP(src=LAN_HOST, dst="198.18.2.2") / TCP(sport=40000, dport=80, flags="PA")
                   / f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())

    dpi = {"type": "dpi", "signatures": [{"id": 1, "content": "/etc/passwd", "action": "drop"}],
           "apps": [{"app": "http", "host": "bad.example", "action": "drop"}]}
    dep = change({"dpi": dpi})
    ids = programs(dep)
    assert [run(dep, http(h, p)).action for h, p in [("bad.example", "/"), ("ok.example", "/etc/passwd"),
                                                     ("ok.example", "/etc/shadow")]] == \
        ["XDP_DROP", "XDP_DROP", "XDP_PASS"]
    dpi["signatures"][0]["content"] = "/etc/shadow"
    dpi["apps"][0]["host"] = "worse.example"
    with not_compiling():
        dep = change({"dpi": dpi})
    assert dep.last_change == "config" and programs(dep) == ids
    assert [run(dep, http(h, p)).action for h, p in [("bad.example", "/"), ("ok.example", "/etc/passwd"),
                                                     ("ok.example", "/etc/shadow"), ("worse.example", "/")]] == \
        ["XDP_PASS", "XDP_PASS", "XDP_DROP", "XDP_DROP"]
