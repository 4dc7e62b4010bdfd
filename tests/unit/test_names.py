"""Interface and netns names are held to the kernel's and iproute2's rules wherever
they come in: chain files (`vnfchain validate`), `--attach IF@NETNS`, the Python
API, function parameters and test-bed topologies. Each error names the value and
the rule."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import vnfchain.cli.commands  # noqa: F401  (registers the commands)
import vnfchain.cli.testbed  # noqa: F401
from vnfchain import Chain, SpecError
from vnfchain.cli import cli
from vnfchain.errors import TestbedSpecError
from vnfchain.names import IFNAME_RULE, NETNS_RULE
from vnfchain.testbed import load_topology

# (name, what the error says about it): the kernel's dev_valid_name() refuses each
BAD_INTERFACES = [
    ("", "is empty"),
    ("a" * 16, "is 16 bytes long"),
    ("é" * 8, "is 16 bytes long"),                      # 8 characters, 16 bytes
    (".", "is a directory name"),
    ("..", "is a directory name"),
    ("a/b", "contains '/'"),
    ("eth0:1", "contains ':'"),
    ("a b", "contains whitespace"),
    ("a\tb", "contains whitespace"),
    ("a\nb", "contains whitespace"),
    ("voilà", "contains byte 0xa0"),                    # 'à' is c3 a0: isspace(0xa0) in the kernel
    ("a\x00b", "contains '\\x00'"),
]
GOOD_INTERFACES = ["eth0", "a" * 15, "é" * 7, "x.y", "a@b", "veth-1_2", "..."]

BAD_NETNS = [
    ("", "is empty"),
    (".", "is a directory name"),
    ("..", "is a directory name"),
    ("../../etc", "contains '/'"),
    ("a" * 256, "is 256 bytes long"),
    ("a\x00b", "contains '\\x00'"),
]
GOOD_NETNS = ["vc-pvp-dut", "my ns", "a" * 255, "ns:1"]


def chain_text(interface: str = "eth0", netns: str | None = None) -> str:
    point = {"interface": interface, **({"netns": netns} if netns is not None else {})}
    return f"name: names\nattach: [{json.dumps(point)}]\nfunctions: {{c: {{type: counter}}}}\n"


def validate(tmp_path: Path, text: str):
    path = tmp_path / "chain.yaml"
    path.write_text(text)
    return CliRunner().invoke(cli, ["validate", str(path)]), path


def ids(cases):
    return [repr(c[0])[:20] for c in cases]


@pytest.mark.parametrize("name,problem", BAD_INTERFACES, ids=ids(BAD_INTERFACES))
def test_a_bad_interface_name_is_refused_by_validate_and_the_api(tmp_path, name, problem):
    result, path = validate(tmp_path, chain_text(name))
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"error: {path}:2: attach.0.interface: interface name ")
    assert problem in result.output and result.output.endswith(f"; an interface name is {IFNAME_RULE}\n")

    for attach in ([name], [(name, None)], [f"{name}@ns"]):
        with pytest.raises(SpecError, match="an interface name is 1-15 bytes") as info:
            Chain.from_yaml_text(chain_text()).deploy(attach=attach)
        assert problem in info.value.message
    with pytest.raises(SpecError) as info:
        Chain.from_dict({"name": "names", "functions": {"out": {"type": "forward", "interface": name}}})
    assert "(forward): interface: interface name " in info.value.message and problem in info.value.message


@pytest.mark.parametrize("name,problem", BAD_NETNS, ids=ids(BAD_NETNS))
def test_a_bad_netns_name_is_refused_by_validate_the_api_and_deploy(tmp_path, name, problem):
    result, path = validate(tmp_path, chain_text(netns=name))
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"error: {path}:2: attach.0.netns: network namespace name ")
    assert f"{problem}; a netns name is {NETNS_RULE}" in result.output

    if name:     # an empty NETNS ("eth0@") is the root namespace
        with pytest.raises(SpecError, match="a netns name is 1-255 bytes") as info:
            Chain.from_yaml_text(chain_text()).deploy(attach=[("eth0", name)])
        assert problem in info.value.message


@pytest.mark.parametrize("name", ["..", "a/b"])
def test_deploy_attach_refuses_a_bad_name_before_touching_anything(tmp_path, name):
    run, pins = tmp_path / "run", tmp_path / "bpffs"
    chain = tmp_path / "chain.yaml"
    chain.write_text(chain_text())
    result = CliRunner().invoke(cli, ["deploy", str(chain), "--attach", f"eth0@{name}"],
                                env={"VNFCHAIN_RUN": str(run), "VNFCHAIN_BPFFS": str(pins)})
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"error: attach point 'eth0@{name}' (IF or IF@NETNS): network namespace name")
    assert not run.exists() and not pins.exists()


@pytest.mark.parametrize("key,body", [
    ("functions.nat.outside", {"type": "nat", "outside": "wan:0"}),
    ("functions.fw.rules.0.iif", {"type": "firewall", "rules": [{"action": "drop", "iif": "lan/0"}]}),
])
def test_interface_parameters_of_functions_follow_the_same_rule(key, body):
    name = key.split(".")[1]
    with pytest.raises(SpecError) as info:
        Chain.from_dict({"name": "names", "functions": {name: body}})
    where = key.split(".", 2)[2]      # "functions.<name>." is said as "function '<name>' (<type>): "
    assert f"function '{name}' (" in info.value.message and f"{where}: interface name " in info.value.message
    assert IFNAME_RULE in info.value.message


def test_names_the_kernel_and_iproute2_take_are_accepted(tmp_path):
    for interface in GOOD_INTERFACES:
        result, _ = validate(tmp_path, chain_text(interface))
        assert result.exit_code == 0, (interface, result.output)
    for netns in GOOD_NETNS:
        result, _ = validate(tmp_path, chain_text(netns=netns))
        assert result.exit_code == 0, (netns, result.output)
    chain = Chain.from_yaml_text(chain_text("é" * 7, "my ns"))
    assert str(chain.spec.attach[0]) == "ééééééé@my ns"


TOPOLOGY = """\
name: names
hosts: {a: {}, b: {}}
links:
  - a: {host: a, interface: IFNAME, addresses: [198.18.1.1/24]}
    b: {host: b, interface: eth0, addresses: [198.18.1.2/24]}
"""


@pytest.mark.parametrize("name,words", [
    ("a" * 16, "is 16 bytes long"), ("..", "is a directory name"), ("a:b", "contains ':'"),
    ('"a b"', "contains whitespace"), ("a/b", "contains '/'"),
    ("-x", "must start with a letter or digit"),
])
def test_a_topology_refuses_bad_interface_names(tmp_path, name, words):
    path = tmp_path / "topo.yaml"
    path.write_text(TOPOLOGY.replace("IFNAME", name))
    with pytest.raises(TestbedSpecError) as info:
        load_topology(path)
    assert (info.value.line, info.value.key) == (4, "links.0.a.interface")
    assert words in info.value.reason


@pytest.mark.parametrize("command", [["down"], ["exec", None, "a", "--", "true"]])
def test_testbed_commands_refuse_a_bed_name_that_is_a_path(tmp_path, monkeypatch, command):
    """`testbed down ../../x` removed the directory x outside vnfchain's state."""
    run = tmp_path / "run"
    monkeypatch.setenv("VNFCHAIN_RUN", str(run))
    victim = tmp_path / "victim"
    (victim / "data").mkdir(parents=True)
    name = "../../victim"
    argv = ["testbed", command[0], name] + [a for a in command[1:] if a is not None]
    result = CliRunner().invoke(cli, argv)
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: test bed name '../../victim' must match [a-z][a-z0-9-]{0,7}")
    assert (victim / "data").is_dir()
