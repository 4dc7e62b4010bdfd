"""Topology validation: every error names file, line and key (no root needed)."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from vnfchain.errors import SpecError, TestbedSpecError
from vnfchain.testbed import load_topology

TOPOLOGIES = sorted((Path(__file__).resolve().parents[2] / "topologies").glob("*.yaml"))

GOOD = """\
name: unit
hosts:
  client:
    routes:
      - {dst: 198.18.0.0/15, via: 198.18.1.1}
  dut:
    sysctls: {net.ipv4.ip_forward: 1}
    bridges: {br0: {addresses: [198.18.2.1/24]}}
  server:
    services:
      - {type: http, port: 80}
links:
  - a: {host: client, interface: eth0, addresses: [198.18.1.2/24]}
    b: {host: dut, interface: dut-lan, addresses: [198.18.1.1/24]}
  - a: {host: dut, interface: dut-srv, bridge: br0}
    b: {host: server, interface: eth0, addresses: [198.18.2.2/24]}
"""


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "topo.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def error_for(tmp_path, old: str, new: str) -> TestbedSpecError:
    assert old in GOOD, old
    path = write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(TestbedSpecError) as info:
        load_topology(path)
    return info.value


def test_shipped_topologies_are_valid():
    names = {p.stem for p in TOPOLOGIES}
    assert {"pvp", "lb", "nat", "sfc"} <= names
    for path in TOPOLOGIES:
        topo = load_topology(path)
        assert topo.name == path.stem
        assert topo.checks, f"{path.name} has no checks"
        assert path.read_text().startswith("#"), f"{path.name} lacks its diagram comment"


def test_good_topology_loads(tmp_path):
    topo = load_topology(write(tmp_path, GOOD))
    assert list(topo.hosts) == ["client", "dut", "server"]
    assert topo.netns("dut") == "vc-unit-dut"
    assert [str(a.ip) for a in topo.addresses("dut")] == ["198.18.1.1", "198.18.2.1"]
    assert topo.links[0].gro is True  # on by default
    with pytest.raises(Exception):
        topo.name = "other"  # frozen


# (what to change, replacement, line of the error, key, words the message must hold)
CASES = [
    ("addresses: [198.18.1.2/24]", "addresses: [10.0.0.2/24]", 13, "links.0.a.addresses.0",
     "outside 198.18.0.0/15"),
    ("addresses: [198.18.1.2/24]", "addresses: [198.18.1.2/8]", 13, "links.0.a.addresses.0",
     "reaches outside"),
    ("interface: dut-lan", "interface: dut-lan-interface", 14, "links.0.b.interface", "IFNAMSIZ"),
    ("interface: dut-lan", "interface: vct0", 14, "links.0.b.interface", "reserved"),
    ("{host: server, interface: eth0", "{host: sever, interface: eth0", 16, "links.1.b.host",
     "host 'sever'"),
    ("addresses: [198.18.2.2/24]", "addresses: [198.18.1.2/24]", 16, "links.1.b.addresses.0",
     "used twice"),
    ("{dst: 198.18.0.0/15, via: 198.18.1.1}", "{dst: 0.0.0.0/0, via: 198.18.1.1}", 5,
     "hosts.client.routes.0.dst", "default route"),
    ("{dst: 198.18.0.0/15, via: 198.18.1.1}", "{dst: 192.168.0.0/16, via: 198.18.1.1}", 5,
     "hosts.client.routes.0.dst", "outside"),
    ("{dst: 198.18.0.0/15, via: 198.18.1.1}", "{dst: 198.18.0.0/15, via: 198.18.9.1}", 5,
     "hosts.client.routes.0.via", "not on any subnet"),
    ("net.ipv4.ip_forward: 1", "kernel.panic: 1", 7, "hosts.dut.sysctls.kernel.panic", "net.*"),
    ("name: unit", "name: much-too-long", 1, "name", "[a-z][a-z0-9-]{0,7}"),
    ("bridge: br0}", "bridge: br1}", 15, "links.1.a.bridge", "no bridge 'br1'"),
    ("{host: dut, interface: dut-srv, bridge: br0}",
     "{host: dut, interface: dut-srv, bridge: br0, addresses: [198.18.2.9/24]}", 15,
     "links.1.a.addresses", "cannot have addresses"),
    ("{type: http, port: 80}", "{type: http, port: 80, colour: red}", 11,
     "hosts.server.services.0.colour", "unknown key"),
    ("{type: http, port: 80}", "{type: http}", 11, "hosts.server.services.0", "needs `port`"),
    ("addresses: [198.18.1.2/24]", "addresses: [fe80::1/64]", 13, "links.0.a.addresses.0", "IPv4"),
]


@pytest.mark.parametrize("old,new,line,key,words", CASES, ids=[c[4] for c in CASES])
def test_errors_name_file_line_and_key(tmp_path, old, new, line, key, words):
    err = error_for(tmp_path, old, new)
    assert isinstance(err, SpecError) and err.exit_code == 2
    assert err.file == str(tmp_path / "topo.yaml")
    assert (err.line, err.key) == (line, key), err.message
    assert words in err.message
    assert err.message.startswith(f"{err.file}:{line}: ")


def test_duplicate_interface_in_one_host(tmp_path):
    err = error_for(tmp_path, "interface: dut-srv", "interface: dut-lan")
    assert err.key == "links.1.a.interface" and "already has an interface" in err.message


def test_link_to_itself(tmp_path):
    err = error_for(tmp_path, "{host: server, interface: eth0", "{host: dut, interface: eth0")
    assert err.key == "links.1" and "itself" in err.message


def test_check_target_outside_bench_range(tmp_path):
    err = error_for(tmp_path, "links:", "checks:\n  - {from: client, ping: 8.8.8.8}\nlinks:")
    assert err.key == "checks.0" and "outside" in err.message


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(TestbedSpecError, match="does not exist"):
        load_topology(tmp_path / "nope.yaml")
    with pytest.raises(TestbedSpecError) as info:
        load_topology(write(tmp_path, "name: [unclosed\n"))
    assert info.value.line is not None


def test_name_override_is_checked(tmp_path):
    topo = load_topology(write(tmp_path, GOOD), name="t1pvp")
    assert topo.name == "t1pvp" and topo.netns("client") == "vc-t1pvp-client"
    with pytest.raises(TestbedSpecError):
        load_topology(write(tmp_path, GOOD), name="Bad_Name")
