"""DPI end to end on the sfc bed, with real clients: curl, a TLS client
(Python's ssl) and a DNS resolver query. What a rule forbids never reaches the
server (the connection or query times out); everything else is answered; HTTP
and TLS take their own branches; an alert reaches `vnfchain events` running as
a separate process after deploy has returned. Evasions do not get a banned
name through: curl through a proxy (absolute-form target) or with a target
and a Host header that disagree, blank lines before a request, a ClientHello
with its SNI behind 300 extensions or split over two TLS records (sent to the
bed's TLS server), a DNS query of two questions."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

from tests.chain_fixtures import chain_name
from vnfchain import Chain
from vnfchain.dpi.synthetic import client_hello
from vnfchain.errors import TestbedError
from vnfchain.testbed.agent import dns_name
from vnfchain.testbed.netlink import socket_in

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


# -- evasions -------------------------------------------------------------------------

def curl(bed, *args, timeout: float = 1.5) -> subprocess.CompletedProcess:
    return bed.exec("client", ["curl", "-sS", "--max-time", f"{timeout:g}", *args])


def counted(dep, before: dict, name: str) -> int:
    return dep.stats()["dpi"].get(name, 0) - before.get(name, 0)


def test_the_target_of_a_request_decides_its_host(sfc_bed, dpi_chain):
    """curl through a proxy sends GET http://host/ (absolute-form): the target's
    host is matched; a target and a Host header that disagree reach nothing."""
    server = sfc_bed.addr("server")
    before = dpi_chain.stats()["dpi"]
    assert curl(sfc_bed, "-x", f"http://{server}:80", "http://www.good.example/", timeout=3).stdout == "server\n"
    assert curl(sfc_bed, "-x", f"http://{server}:80", "http://www.bad.example/").returncode != 0
    for target, host in (("http://www.bad.example/", "www.good.example"), ("http://www.good.example/", "www.bad.example")):
        assert curl(sfc_bed, "--noproxy", "*", "--request-target", target, "-H", f"Host: {host}",
                    f"http://{server}/").returncode != 0
    assert counted(dpi_chain, before, "app1000_hits") >= 1
    assert counted(dpi_chain, before, "unreadable_http_host_ambiguous") >= 2


def test_blank_lines_before_a_request_do_not_hide_it(sfc_bed, dpi_chain):
    server = sfc_bed.addr("server")
    request = b"\r\n\n\r\nGET / HTTP/1.1\r\nHost: %s\r\n\r\n"
    assert sfc_bed.tcp_echo("client", server, 7, request % b"www.good.example") == request % b"www.good.example"
    with pytest.raises(TestbedError, match="timed out"):
        sfc_bed.tcp_echo("client", server, 7, request % b"www.bad.example", timeout=1.5)


def tls_answer(bed, server: str, hello: bytes, timeout: float = 1.5) -> bytes | None:
    """Send a ClientHello to the bed's TLS server: the header of the record it answers with, or None."""
    with socket_in(bed.netns("client"), socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect((server, 443))
        sock.sendall(hello)
        try:
            return sock.recv(5)
        except TimeoutError:
            return None


def test_the_sni_behind_300_extensions_is_seen_and_a_split_client_hello_counted(sfc_bed, dpi_chain):
    """By default (unreadable: {tls: match}) a ClientHello split before its SNI
    goes through unseen, as a browser's 1.8 KB one must, and is counted."""
    server = sfc_bed.addr("server")
    before = dpi_chain.stats()["dpi"]
    answer = tls_answer(sfc_bed, server, client_hello("shop.example", before=300), timeout=3)
    assert answer and answer[0] in (0x15, 0x16)             # the server answered (a handshake or an alert)
    assert tls_answer(sfc_bed, server, client_hello("banned.example", before=300)) is None
    assert tls_answer(sfc_bed, server, client_hello("shop.example", record_split=60), timeout=3) is not None
    assert counted(dpi_chain, before, "app1001_hits") >= 1
    assert counted(dpi_chain, before, "unreadable_tls_sni_unreached") >= 1


def test_a_dns_query_of_two_questions_is_not_answered(sfc_bed, dpi_chain):
    server = sfc_bed.addr("server")
    question = dns_name("www.example") + b"\0\1\0\1"
    one = b"\x12\x34\1\0\0\1" + bytes(6) + question
    two = b"\x12\x35\1\0\0\2" + bytes(6) + question + dns_name("c2.evil.example") + b"\0\1\0\1"
    assert sfc_bed.udp_echo("client", server, 53, one) is not None
    assert sfc_bed.udp_echo("client", server, 53, two, timeout=1.0) is None
    assert dpi_chain.stats()["dpi"]["unreadable_dns_questions"] >= 1
