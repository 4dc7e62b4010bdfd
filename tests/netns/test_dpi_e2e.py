"""DPI end to end on the sfc bed, with real clients: curl, a TLS client
(Python's ssl) and a DNS resolver query. What a rule forbids never reaches the
server (the connection or query times out); everything else is answered; HTTP
and TLS take their own branches; an alert reaches `vnfchain events` running as
a separate process after deploy has returned."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests.chain_fixtures import chain_name
from vnfchain import Chain
from vnfchain.errors import TestbedError

pytestmark = pytest.mark.root

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def dpi_chain(sfc_bed):
    dut = sfc_bed.netns("dut")
    dep = Chain.from_yaml_text(textwrap.dedent(f"""
        name: {chain_name('dpie2e')}
        attach:
          - {{interface: dut-lan, netns: {dut}}}
          - {{interface: dut-wan, netns: {dut}}}
        functions:
          dpi:
            type: dpi
            signatures:
              - {{id: 1, content: "/etc/passwd", action: drop}}
            apps:
              - {{app: http, host: "*.bad.example", action: drop}}
              - {{app: tls, sni: banned.example, action: drop}}
              - {{app: dns, qname: "*.evil.example", action: drop}}
              - {{app: dns, qname: watch.example, action: alert, id: 7}}
              - {{app: http, action: label, label: web}}
              - {{app: tls, action: label, label: tls}}
            next: {{web: web, tls: tls, default: out}}
          web: {{type: counter, next: out}}
          tls: {{type: counter, next: out}}
          out: {{type: forward}}
        """)).deploy()
    try:
        yield dep
    finally:
        dep.undeploy()


def test_http_with_a_forbidden_path_or_host_is_blocked_and_the_rest_answered(sfc_bed, dpi_chain):
    server = sfc_bed.addr("server")
    before = dpi_chain.stats()
    assert sfc_bed.http_get("client", f"http://{server}/").body == "server\n"
    assert sfc_bed.http_get("client", f"http://{server}/", headers=["Host: www.good.example"]).ok
    assert not sfc_bed.http_get("client", f"http://{server}/etc/passwd", timeout=1.5).ok
    assert not sfc_bed.http_get("client", f"http://{server}/", headers=["Host: WWW.Bad.Example"], timeout=1.5).ok
    after = dpi_chain.stats()
    assert after["dpi"]["drop_signature"] > before["dpi"].get("drop_signature", 0)
    assert after["dpi"]["drop_app_rule"] > before["dpi"].get("drop_app_rule", 0)
    assert after["web"]["rx_packets"] >= before["web"]["rx_packets"] + 2     # the two answered requests


def test_tls_to_a_banned_name_is_blocked_and_to_another_completes(sfc_bed, dpi_chain):
    server = sfc_bed.addr("server")
    before = dpi_chain.stats()["tls"]["rx_packets"]
    assert sfc_bed.tls_hello("client", server, 443, "shop.example") == "server\n"
    assert dpi_chain.stats()["tls"]["rx_packets"] > before                  # the ClientHello took the tls branch
    with pytest.raises(TestbedError, match="timed out"):
        sfc_bed.tls_hello("client", server, 443, "banned.example", timeout=1.5)
    assert dpi_chain.stats()["dpi"]["app1001_hits"] >= 1


def test_dns_for_a_banned_name_is_dropped_and_another_answered(sfc_bed, dpi_chain):
    server = sfc_bed.addr("server")
    assert sfc_bed.dns_query("client", server, "www.example") == ["198.18.0.53"]
    assert sfc_bed.dns_query("client", server, "c2.evil.example", timeout=1.0) is None
    assert sfc_bed.dns_query("client", server, "c2.Evil.Example", timeout=1.0) is None
    assert dpi_chain.stats()["dpi"]["app1002_hits"] >= 2


def test_an_alert_reaches_vnfchain_events_in_another_process(sfc_bed, dpi_chain):
    server, client = sfc_bed.addr("server"), sfc_bed.addr("client")
    env = dict(os.environ, PYTHONPATH=REPO)
    events = subprocess.Popen([sys.executable, "-m", "vnfchain", "events", dpi_chain.name, "--json",
                               "--count", "1", "--timeout", "10"], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert sfc_bed.dns_query("client", server, "watch.example") == ["198.18.0.53"]   # alerted, not blocked
        out, _ = events.communicate(timeout=20)
    finally:
        if events.poll() is None:
            events.kill()
            events.wait()
    assert events.returncode == 0
    event = json.loads(out)
    assert (event["id"], event["app"], event["name"]) == (7, "dns", "watch.example")
    assert (event["src"], event["dst"], event["dport"], event["proto"]) == (client, server, 53, "udp")
