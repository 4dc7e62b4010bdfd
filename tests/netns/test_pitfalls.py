"""The veth pitfalls, found on real interfaces before a packet is lost: a peer
without NAPI, a peer sending with checksum offload, XDP_TX without an XDP
program on the peer; each names the interface and the command that fixes it,
and after that command it is gone."""
from __future__ import annotations

import os
import subprocess

import pytest
from click.testing import CliRunner

from tests.scratch_netns import scratch_netns
from vnfchain import Chain
from vnfchain.pitfalls import machine_pitfalls

pytestmark = [pytest.mark.root, pytest.mark.netns]

NS = f"vctp{os.getpid()}"


def chain(ns: str, extra: str = "", functions: str = "  out: {type: forward}\n") -> Chain:
    return Chain.from_yaml_text(f"name: pit\n{extra}attach:\n  - {{interface: dut0, netns: {ns}}}\n"
                                f"functions:\n{functions}")


def ethtool(ns: str, *args: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns, "ethtool", "-K", *args], check=True, capture_output=True)


def test_veth_pitfalls_are_found_with_their_fix():
    with scratch_netns(NS, {"dut0": []}) as (ns, _, _ip):
        ethtool(ns, "dut0p", "gro", "off")
        ethtool(ns, "dut0p", "tx", "on")
        found = machine_pitfalls(chain(ns).spec)
        assert [(p.where, p.fix) for p in found] == [
            (f"dut0@{ns}", f"ip netns exec {ns} ethtool -K dut0p gro on"),
            (f"dut0@{ns}", f"ip netns exec {ns} ethtool -K dut0p tx off")]
        assert "neither GRO on nor an XDP program" in found[0].problem
        transmits = machine_pitfalls(chain(ns, "exit: tx\n", "  c: {type: counter}\n").spec)
        assert [p.problem.split(":")[0] for p in transmits] == [
            "frames the chain transmits back out of dut0 (XDP_TX) are dropped"]
        for fix in {p.fix for p in found}:
            subprocess.run(fix.split(), check=True, capture_output=True)
        assert machine_pitfalls(chain(ns).spec) == []
        assert machine_pitfalls(chain(ns, "", "  c: {type: counter}\n").spec) == []   # sends nothing out


def test_doctor_checks_a_chain_against_the_machine(tmp_path):
    import vnfchain.cli.doctor  # noqa: F401  (registers the command)
    from vnfchain.cli import cli
    with scratch_netns(NS, {"dut0": []}) as (ns, _, _ip):
        ethtool(ns, "dut0p", "gro", "off")
        path = tmp_path / "chain.yaml"
        path.write_text(f"name: pit\nattach:\n  - {{interface: dut0, netns: {ns}}}\n"
                        f"  - {{interface: gone0, netns: {ns}}}\nfunctions:\n  out: {{type: forward}}\n")
        result = CliRunner().invoke(cli, ["doctor", "--json", "--chain", str(path)])
        import json
        checks = json.loads(result.output)["checks"]
        ok = {c["name"]: c["ok"] for c in checks}
        assert result.exit_code == 1
        assert ok[f"interface dut0@{ns}"] and not ok[f"interface gone0@{ns}"]
        fixes = [c["fix"] for c in checks if c["name"] == f"pitfall at dut0@{ns}"]
        assert f"ip netns exec {ns} ethtool -K dut0p gro on" in fixes
