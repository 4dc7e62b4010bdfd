"""vnfchain trace: one packet through a running chain, its path and changes."""
from __future__ import annotations

import pytest
from click.testing import CliRunner

from vnfchain.chain.trace import Step, build_packet, differences, trace
from vnfchain.errors import SpecError
from tests.packet.test_chain_packets import BRANCHING

pytestmark = pytest.mark.root


@pytest.mark.parametrize("mode", ["tailcall", "fused"])
def test_trace_shows_the_path_and_verdicts(deployed, mode):
    dep = deployed(BRANCHING, mode)
    result = trace(dep, build_packet("Ether()/IP(src='198.18.1.2', dst='198.18.2.2')/UDP(dport=53)"))
    assert result.action == "XDP_DROP"
    assert result.steps == (Step("steer", "classify", "branch"),
                            Step("dropper", "counter", "drop", "policy"))
    assert not result.interference


def test_trace_cli_prints_path_and_writes_pcap(deployed, tmp_path):
    from vnfchain.cli import cli
    import vnfchain.cli.commands  # noqa: F401
    from scapy.utils import rdpcap
    dep = deployed(BRANCHING, "tailcall")
    pcap = tmp_path / "t.pcap"
    res = CliRunner().invoke(cli, ["trace", dep.name, "--packet",
                                   "Ether()/IP(src='198.18.1.2', dst='198.18.2.2')/TCP(dport=80)",
                                   "--pcap", str(pcap)])
    assert res.exit_code == 0, res.output
    assert "web" in res.output and "XDP_PASS" in res.output
    assert len(rdpcap(str(pcap))) == 2


def test_bad_packet_expression_is_a_clear_error():
    with pytest.raises(SpecError) as info:
        build_packet("Ether()/IP(")
    assert "cannot build the packet" in info.value.message and "e.g." in info.value.message
    with pytest.raises(SpecError):
        build_packet("__import__('os')")


def test_differences_name_changed_fields():
    a = bytes(build_packet("Ether(dst='02:00:00:00:00:01')/IP(src='198.18.1.2', dst='198.18.2.2', ttl=64)"))
    b = bytes(build_packet("Ether(dst='02:00:00:00:00:02')/IP(src='198.18.1.2', dst='198.18.2.2', ttl=63)"))
    changed = differences(a, b)
    assert any(c.startswith("Ethernet.dst") for c in changed)
    assert "IP.ttl: 64 -> 63" in changed
