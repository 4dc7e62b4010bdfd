"""The firewall end to end on the pvp bed, with connection tracking: what is
allowed gets through and its replies come back; what is not is refused; a
live rule change holds from the next connection on."""
from __future__ import annotations

import textwrap

import pytest

from vnfchain import Chain
from vnfchain.errors import TestbedError
from tests.chain_fixtures import chain_name

pytestmark = pytest.mark.root


def chain_yaml(bed, extra_rules=""):
    return textwrap.dedent(f"""
        name: {chain_name('fwe2e')}
        attach:
          - {{interface: dut-lan, netns: {bed.netns('dut')}}}
          - {{interface: dut-wan, netns: {bed.netns('dut')}}}
        functions:
          fw:
            type: firewall
            conntrack: true
            default: drop
            rules:
              - {{action: allow, ct: [established, related]}}
              - {{action: allow, proto: icmp, icmp_type: echo-request, src: 198.18.1.0/24}}
              - {{action: allow, proto: tcp, dport: 80, src: 198.18.1.0/24, ct: new}}
        """) + textwrap.indent(extra_rules, " " * 6) + "    next: out\n  out: {type: forward}\n"


@pytest.fixture
def firewalled(pvp_bed):
    dep = Chain.from_yaml_text(chain_yaml(pvp_bed)).deploy()
    try:
        yield dep
    finally:
        dep.undeploy()


def test_allowed_traffic_and_its_replies_pass(pvp_bed, firewalled):
    server = pvp_bed.addr("server")
    assert pvp_bed.ping("client", server, count=2).ok        # replies are established
    answer = pvp_bed.http_get("client", f"http://{server}/")
    assert answer.ok and "server" in answer.body              # the whole TCP exchange
    assert firewalled.stats()["fw"]["rule0_hits"] > 0         # ... through the established rule


def test_blocked_port_and_inbound_connections_are_refused(pvp_bed, firewalled):
    server, client = pvp_bed.addr("server"), pvp_bed.addr("client")
    with pytest.raises(TestbedError):
        pvp_bed.tcp_echo("client", server, 7, b"hello", timeout=1.0)
    assert not pvp_bed.ping("server", client, count=1).ok   # nobody allowed the server in
    assert firewalled.stats()["fw"]["drop_default_policy"] > 0


def test_live_rule_change_opens_the_port_for_the_next_connection(pvp_bed, firewalled):
    server = pvp_bed.addr("server")
    with pytest.raises(TestbedError):
        pvp_bed.tcp_echo("client", server, 7, b"before", timeout=1.0)
    changed = Chain.from_yaml_text(chain_yaml(
        pvp_bed, "- {action: allow, proto: tcp, dport: 7, src: 198.18.1.0/24}\n")).deploy()
    assert changed.last_change == "config"
    assert pvp_bed.tcp_echo("client", server, 7, b"after", timeout=2.0) == b"after"
    assert pvp_bed.http_get("client", f"http://{server}/").ok   # flows kept through the change
