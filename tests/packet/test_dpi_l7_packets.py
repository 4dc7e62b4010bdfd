"""DPI app rules through BPF_PROG_TEST_RUN: HTTP Host/method/path, TLS SNI (real
ClientHellos from Python's ssl, and built ones), DNS query names; wildcards,
case, names longer than the kernel's buffer; labels per application;
signatures still first. The evasions a client can try — blank lines, absolute
targets, folded or doubled Host headers, requests and ClientHellos cut short or
split, SNI behind many extensions, DNS with several questions, compressed or
over TCP — and what `unreadable` makes of them. Held to the Python reference
(vnfchain/dpi/l7.py) over random rule sets, variants and hypothesis-generated
requests. Alert events read back from the pinned ring buffer, by the library
and by `vnfchain events`. Every case in both chain modes."""
from __future__ import annotations

import json
import os
import random
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings, strategies as st
from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from tests.chain_fixtures import MODES, chain_name, delta, not_compiling
from vnfchain import Chain
from vnfchain.chain import deploy as deploy_mod
from vnfchain.cli import cli, commands  # noqa: F401  (registers the commands)
from vnfchain.dpi.l7 import (DROPPED_UNREADABLE, HTTP_LEADING, HTTP_SCAN, NAME_MAX, Request, decide,
                             first_app_rule, identify, rule_ids, unreadable_cause)
from vnfchain.dpi.synthetic import client_hello as built_hello
from vnfchain.events import EventReader

pytestmark = pytest.mark.root

CHAIN = """
name: l7
functions:
  dpi:
    type: dpi
    signatures:
      - {id: 1, content: "/etc/passwd", action: drop}
      - {id: 2, content: "evil-payload", action: alert}
    apps:
      - {app: http, host: "*.bad.example", action: drop}
      - {app: http, host: admin.example, path: /admin, action: drop}
      - {app: http, method: [DELETE], action: drop}
      - {app: tls, sni: banned.example, action: drop}
      - {app: tls, sni: "*.watch.example", action: alert, id: 50}
      - {app: dns, qname: "*.evil.example", action: drop}
      - {app: dns, qname: evil.example, action: drop}
      - {app: dns, qname: spy.example, action: alert, id: 51}
      - {app: dns, qname: "*.local.example", action: pass}
      - {app: http, action: label, label: web}
      - {app: tls, action: label, label: tls}
    unreadable: drop        # fail closed everywhere (the default matches unreadable TLS)
    next: {web: web, tls: tls, default: out}
  web: {type: counter, next: out}
  tls: {type: counter, next: out}
  out: {type: counter, verdict: tx}
"""

CLIENT, SERVER = "198.18.1.2", "198.18.2.2"


def frame(l4, payload=b"", v6=False):
    ip = IPv6(src="2001:db8::2", dst="2001:db8:1::2") if v6 else IP(src=CLIENT, dst=SERVER)
    return Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / ip / l4 / payload


def http(host=None, path="/", method="GET", headers=(), body=b"", v6=False):
    lines = [f"{method} {path} HTTP/1.1", "User-Agent: vnfchain-test", *headers]
    if host is not None:
        lines.append(f"Host: {host}")
    request = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
    return frame(TCP(sport=40000, dport=80, flags="PA"), request, v6)


def raw_http(request: bytes):
    """An HTTP request exactly as given (line endings, blanks)."""
    return frame(TCP(sport=40000, dport=80, flags="PA"), request)


def client_hello(sni: str) -> bytes:
    """The first flight of a real TLS client (Python's ssl) asking for ``sni``
    (an IP address: a ClientHello without server_name)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    conn = context.wrap_bio(incoming, outgoing, server_hostname=sni)
    with pytest.raises(ssl.SSLWantReadError):
        conn.do_handshake()
    return outgoing.read()


def tls(sni):
    return frame(TCP(sport=40001, dport=443, flags="PA"), client_hello(sni))


def dns(qname, dport=53, response=False):
    return frame(UDP(sport=40002, dport=dport), bytes(DNS(rd=1, qr=int(response), qd=DNSQR(qname=qname))))


def dns_wire(labels: list[bytes], tail: bytes = b"\0\0\1\0\1") -> bytes:
    """A query with this name, label by label (scapy refuses some names tested here)."""
    return b"\x12\x34\1\0\0\1\0\0\0\0\0\0" + b"".join(bytes([len(x)]) + x for x in labels) + tail


def raw_dns(payload: bytes):
    return frame(UDP(sport=40002, dport=53), payload)


def raw_tls(payload: bytes):
    return frame(TCP(sport=40001, dport=443, flags="PA"), payload)


def trailing(packet, after: bytes) -> bytes:
    """The frame with bytes after its IP datagram, which the receiving stack
    cuts off (its lengths say where the datagram ends) and never delivers."""
    return bytes(packet) + after


def tcp_dns(message: bytes, cut: int | None = None):
    """A DNS query over TCP/53: its length, then the message (up to cut bytes of both)."""
    return frame(TCP(sport=40002, dport=53, flags="PA"), (len(message).to_bytes(2, "big") + message)[:cut])


MANY = [b"a"] * 98 + [b"evil", b"example"]     # 100 labels, 211 bytes: legal

LONG = ".".join(["x" * 20] * 4)   # 83 bytes before the domain: longer than the kernel's buffer

PAD = "X-Pad: " + "p" * 900                  # one header line of 907 bytes

# description, packet, action, what decided (a rule's counter, or unreadable_<cause> for a
# request whose name could not be read for sure: dropped, as this dpi has drop rules on names),
# functions the packet went through
CASES = [
    ("host below a wildcard is dropped", lambda: http("www.bad.example"), "XDP_DROP", "app1000", ()),
    ("host in any case, with a port", lambda: http("WWW.Bad.EXAMPLE:8080"), "XDP_DROP", "app1000", ()),
    ("a fully qualified host (trailing dot)", lambda: http("www.bad.example."), "XDP_DROP", "app1000", ()),
    ("a long host below a wildcard", lambda: http(f"{LONG}.bad.example"), "XDP_DROP", "app1000", ()),
    ("the wildcard's own domain is not below it", lambda: http("bad.example"), "XDP_TX", "app1009", ("web",)),
    ("nor a name that merely ends alike", lambda: http("xbad.example"), "XDP_TX", "app1009", ("web",)),
    ("Host after other headers, over IPv6", lambda: http("a.bad.example", headers=("Accept: */*",) * 3, v6=True),
     "XDP_DROP", "app1000", ()),
    ("host and path prefix", lambda: http("admin.example", "/admin/users"), "XDP_DROP", "app1001", ()),
    ("host with another path", lambda: http("admin.example", "/public/admin"), "XDP_TX", "app1009", ("web",)),
    ("path on another host", lambda: http("www.example", "/admin"), "XDP_TX", "app1009", ("web",)),
    ("a method rule", lambda: http("www.example", method="DELETE"), "XDP_DROP", "app1002", ()),
    ("no Host header: only catch-all rules", lambda: http(None), "XDP_TX", "app1009", ("web",)),
    ("a Host line in the body is not a header",
     lambda: http("ok.example", method="POST", body=b"\r\nHost: www.bad.example\r\n"), "XDP_TX", "app1009", ("web",)),
    ("Host with bare-LF line endings", lambda: raw_http(b"GET / HTTP/1.1\nHost: www.bad.example\nUser-Agent: x\n\n"),
     "XDP_DROP", "app1000", ()),
    ("Host after many blanks", lambda: raw_http(b"GET / HTTP/1.1\r\nHost: \t      \t   www.bad.example\r\n\r\n"),
     "XDP_DROP", "app1000", ()),
    ("Host with trailing blanks", lambda: raw_http(b"GET / HTTP/1.1\r\nHost:www.bad.example \t \r\n\r\n"),
     "XDP_DROP", "app1000", ()),
    ("a Host line after a bare-LF end of headers is not a header",
     lambda: raw_http(b"POST / HTTP/1.1\nUser-Agent: x\n\nHost: www.bad.example\r\n\r\n"), "XDP_TX", "app1009", ("web",)),
    ("an unknown method is not HTTP", lambda: http("www.bad.example", method="FETCH"), "XDP_TX", None, ()),
    ("signatures come first", lambda: http("good.example", "/etc/passwd"), "XDP_DROP", "sig1", ()),
    # RFC 9112 2.2: blank lines before the request line are skipped, as servers do
    ("CRLF blank lines before the request line",
     lambda: raw_http(b"\r\n\r\nGET / HTTP/1.1\r\nHost: www.bad.example\r\n\r\n"), "XDP_DROP", "app1000", ()),
    ("bare-LF blank lines before the request line",
     lambda: raw_http(b"\n\n\nGET /x HTTP/1.1\nHost: ok.example\n\n"), "XDP_TX", "app1009", ("web",)),
    (f"{HTTP_LEADING} blank bytes are skipped",
     lambda: raw_http(b"\r\n" * (HTTP_LEADING // 2) + b"GET / HTTP/1.1\r\nHost: www.bad.example\r\n\r\n"),
     "XDP_DROP", "app1000", ()),
    ("more blank bytes than are skipped",
     lambda: raw_http(b"\n" * (HTTP_LEADING + 1) + b"GET / HTTP/1.1\r\nHost: ok.example\r\n\r\n"),
     "XDP_DROP", "unreadable_http_blank_lines", ()),
    # RFC 9112 3.2.2: a target with a host decides, whatever the Host header says
    ("an absolute-form target names the host",
     lambda: raw_http(b"GET http://www.bad.example/ HTTP/1.1\r\nHost: www.bad.example\r\n\r\n"),
     "XDP_DROP", "app1000", ()),
    ("https, any case, userinfo and port in the target",
     lambda: raw_http(b"GET HtTpS://u:p@WWW.Bad.Example:8443/a HTTP/1.1\r\nHost: www.bad.example:8443\r\n\r\n"),
     "XDP_DROP", "app1000", ()),
    ("the path of an absolute-form target",
     lambda: raw_http(b"GET http://admin.example/admin/x HTTP/1.1\r\nHost: admin.example\r\n\r\n"),
     "XDP_DROP", "app1001", ()),
    ("an absolute-form target without Host header",
     lambda: raw_http(b"GET http://www.bad.example HTTP/1.1\r\n\r\n"), "XDP_DROP", "app1000", ()),
    ("an IPv6 literal target", lambda: raw_http(b"GET http://[2001:db8::1]:80/ HTTP/1.1\r\n\r\n"),
     "XDP_TX", "app1009", ("web",)),
    ("a banned target with an allowed Host header is ambiguous",
     lambda: raw_http(b"GET http://www.bad.example/ HTTP/1.1\r\nHost: ok.example\r\n\r\n"),
     "XDP_DROP", "unreadable_http_host_ambiguous", ()),
    ("an allowed target with a banned Host header is ambiguous",
     lambda: raw_http(b"GET http://ok.example/ HTTP/1.1\r\nHost: www.bad.example\r\n\r\n"),
     "XDP_DROP", "unreadable_http_host_ambiguous", ()),
    ("CONNECT names its host in the target",
     lambda: raw_http(b"CONNECT www.bad.example:443 HTTP/1.1\r\nHost: www.bad.example:443\r\n\r\n"),
     "XDP_DROP", "app1000", ()),
    ("tabs and several blanks between method and target",
     lambda: raw_http(b"GET \t  /admin\tHTTP/1.1\r\nHost: admin.example\r\n\r\n"), "XDP_DROP", "app1001", ()),
    ("Host far into the headers", lambda: raw_http(
        f"GET / HTTP/1.1\r\n{PAD}\r\nHost: www.bad.example\r\n\r\n".encode()), "XDP_DROP", "app1000", ()),
    ("Host past the bytes read", lambda: raw_http(
        f"GET / HTTP/1.1\r\n{PAD}\r\n{PAD}\r\nHost: ok.example\r\n\r\n".encode()),
     "XDP_DROP", "unreadable_http_host_unseen", ()),
    ("the headers go on in the next segment, no Host yet",
     lambda: raw_http(b"GET / HTTP/1.1\r\nUser-Agent: x\r\n"), "XDP_DROP", "unreadable_http_host_unseen", ()),
    ("a segment that ends inside the method", lambda: raw_http(b"GE"), "XDP_DROP", "unreadable_http_request_line", ()),
    # bytes after the IP datagram reach no server: the Host it reads comes in the next segment
    ("a Host after the end of the IP datagram is not read",
     lambda: trailing(raw_http(b"GET / HTTP/1.1\r\n"), b"Host: ok.example\r\n\r\n"),
     "XDP_DROP", "unreadable_http_host_unseen", ()),
    ("a request line after the end of the IP datagram is not read",
     lambda: trailing(raw_http(b"GET / HTTP/1.1\r\nHost: www.bad.example\r\n\r\n"), b"X" * 64),
     "XDP_DROP", "app1000", ()),
    ("a folded Host (obs-fold)", lambda: raw_http(b"GET / HTTP/1.1\r\nHost:\r\n www.bad.example\r\n\r\n"),
     "XDP_DROP", "unreadable_http_host_ambiguous", ()),
    ("two Host headers", lambda: raw_http(b"GET / HTTP/1.1\r\nHost: ok.example\r\nhost: www.bad.example\r\n\r\n"),
     "XDP_DROP", "unreadable_http_host_ambiguous", ()),
    ("blanks before the Host colon", lambda: raw_http(b"GET / HTTP/1.1\r\nHost : www.bad.example\r\n\r\n"),
     "XDP_DROP", "unreadable_http_host_ambiguous", ()),
    ("more blanks before the Host value than are skipped",
     lambda: raw_http(b"GET / HTTP/1.1\r\nHost:" + b" " * 17 + b"ok.example\r\n\r\n"),
     "XDP_DROP", "unreadable_http_host_ambiguous", ()),
    # TLS: the whole first record is walked; what lies beyond it or the packet is not reached
    ("a banned SNI", lambda: tls("banned.example"), "XDP_DROP", "app1003", ()),
    ("another SNI branches to tls", lambda: tls("fine.example"), "XDP_TX", "app1010", ("tls",)),
    ("a ClientHello to an IP address (no SNI) branches to tls", lambda: tls(SERVER), "XDP_TX", "app1010", ("tls",)),
    ("an SNI alert continues", lambda: tls("a.watch.example"), "XDP_TX", "app50", ()),
    ("the SNI after 300 extensions", lambda: raw_tls(built_hello("banned.example", before=300)),
     "XDP_DROP", "app1003", ()),
    ("another SNI after 300 extensions", lambda: raw_tls(built_hello("fine.example", before=300)),
     "XDP_TX", "app1010", ("tls",)),
    ("a name of another type before the host_name",
     lambda: raw_tls(built_hello(None, names=[(7, b"fine.example"), (0, b"banned.example")])), "XDP_DROP", "app1003", ()),
    ("a ClientHello split over two TLS records", lambda: raw_tls(built_hello("fine.example", record_split=60)),
     "XDP_DROP", "unreadable_tls_sni_unreached", ()),
    ("a ClientHello cut short by its TCP segment", lambda: raw_tls(built_hello("fine.example")[:100]),
     "XDP_DROP", "unreadable_tls_sni_unreached", ()),
    ("a segment holding the record header alone", lambda: raw_tls(built_hello("fine.example")[:5]),
     "XDP_DROP", "unreadable_tls_sni_unreached", ()),
    ("a ClientHello whose SNI lies after the end of the IP datagram",
     lambda: trailing(raw_tls(built_hello("banned.example")[:100]), built_hello("benign.example")[100:]),
     "XDP_DROP", "unreadable_tls_sni_unreached", ()),
    ("an empty handshake record first", lambda: raw_tls(b"\x16\x03\x01\x00\x00" + built_hello("fine.example")),
     "XDP_DROP", "unreadable_tls_sni_unreached", ()),
    # DNS
    ("a DNS name below a wildcard", lambda: dns("a.b.evil.example"), "XDP_DROP", "app1005", ()),
    ("the exact DNS name, any case", lambda: dns("Evil.EXAMPLE"), "XDP_DROP", "app1006", ()),
    ("a long DNS name below a wildcard", lambda: dns(f"{LONG}.evil.example"), "XDP_DROP", "app1005", ()),
    ("a DNS name of 100 labels below a wildcard", lambda: raw_dns(dns_wire(MANY)), "XDP_DROP", "app1005", ()),
    ("a DNS name of 127 labels below a wildcard", lambda: raw_dns(dns_wire([b"a"] * 125 + [b"evil", b"example"])),
     "XDP_DROP", "app1005", ()),
    ("a DNS name of 128 labels (over 255 bytes)", lambda: raw_dns(dns_wire([b"a"] * 126 + [b"evil", b"example"])),
     "XDP_DROP", "unreadable_dns_name_unread", ()),
    ("an allowed DNS name", lambda: dns("notevil.example"), "XDP_TX", None, ()),
    ("a DNS pass rule", lambda: dns("printer.local.example"), "XDP_PASS", "app1008", ()),
    ("a DNS alert", lambda: dns("spy.example"), "XDP_TX", "app51", ()),
    ("DNS responses are not queries", lambda: dns("evil.example", response=True), "XDP_TX", None, ()),
    ("DNS only on port 53", lambda: dns("evil.example", dport=5353), "XDP_TX", None, ()),
    ("a DNS query over TCP", lambda: tcp_dns(dns_wire([b"c2", b"evil", b"example"])), "XDP_DROP", "app1005", ()),
    ("a TCP segment with the query's length alone", lambda: tcp_dns(dns_wire([b"c2", b"evil", b"example"]), cut=2),
     "XDP_DROP", "unreadable_dns_name_unread", ()),
    ("a compressed query name", lambda: raw_dns(dns_wire([b"www", b"evil"], tail=b"\xc0\x0c\0\1\0\1")),
     "XDP_DROP", "unreadable_dns_name_unread", ()),
    ("a query of two questions", lambda: raw_dns(dns_wire([b"ok", b"example"]).replace(b"\0\1\0\0", b"\0\2\0\0", 1)),
     "XDP_DROP", "unreadable_dns_questions", ()),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("desc,make,action,hit,through", CASES, ids=[c[0] for c in CASES])
def test_app_rules(deployed, mode, desc, make, action, hit, through):
    dep = deployed(CHAIN, mode)
    before = dep.stats()
    result = dep.run(make())
    changed = delta(before, dep.stats())
    assert result.action == action
    decided = [k for k in changed.get("dpi", {}) if k.endswith("_hits") or k.startswith("unreadable_")]
    assert decided == ([hit if hit.startswith("unreadable_") else f"{hit}_hits"] if hit else [])
    for branch in ("web", "tls"):
        assert (branch in changed) == (branch in through)
    if action == "XDP_DROP":
        reason = "app_unreadable" if hit.startswith("unreadable_") else "signature" if hit.startswith("sig") else "app_rule"
        assert changed["dpi"]["drop_" + reason] == 1


# `unreadable: match`: what could be read decides (the target over a Host header), counted all the same
MATCH_CASES = [
    ("a banned target with an allowed Host header: the target",
     lambda: raw_http(b"GET http://www.bad.example/ HTTP/1.1\r\nHost: ok.example\r\n\r\n"), "XDP_DROP",
     ["app1000_hits", "unreadable_http_host_ambiguous"]),
    ("an allowed target with a banned Host header: the target",
     lambda: raw_http(b"GET http://ok.example/ HTTP/1.1\r\nHost: www.bad.example\r\n\r\n"), "XDP_TX",
     ["app1009_hits", "unreadable_http_host_ambiguous"]),
    ("a folded Host is no Host", lambda: raw_http(b"GET / HTTP/1.1\r\nHost:\r\n www.bad.example\r\n\r\n"),
     "XDP_TX", ["app1009_hits", "unreadable_http_host_ambiguous"]),
    ("two Host headers: the first", lambda: raw_http(b"GET / HTTP/1.1\r\nHost: www.bad.example\r\nHost: ok\r\n\r\n"),
     "XDP_DROP", ["app1000_hits", "unreadable_http_host_ambiguous"]),
    ("a split ClientHello is TLS without a name", lambda: raw_tls(built_hello("banned.example", record_split=60)),
     "XDP_TX", ["app1010_hits", "unreadable_tls_sni_unreached"]),
    ("a DNS query of two questions: the first", lambda: raw_dns(
        dns_wire([b"evil", b"example"]).replace(b"\0\1\0\0", b"\0\2\0\0", 1)),
     "XDP_DROP", ["app1006_hits", "unreadable_dns_questions"]),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("desc,make,action,decided", MATCH_CASES, ids=[c[0] for c in MATCH_CASES])
def test_unreadable_match_decides_on_what_was_read(deployed, mode, desc, make, action, decided):
    dep = deployed(CHAIN.replace("    unreadable: drop ", "    unreadable: match "), mode)
    before = dep.stats()
    assert dep.run(make()).action == action
    changed = delta(before, dep.stats()).get("dpi", {})
    assert sorted(k for k in changed if k.endswith("_hits") or k.startswith("unreadable_")) == decided
    assert "drop_app_unreadable" not in changed


@pytest.mark.parametrize("mode", MODES)
def test_unreadable_per_app_and_only_where_a_drop_rule_asks_for_a_name(deployed, mode):
    """{tls: match} keeps HTTP and DNS closed; an app whose rules ask no name
    (or only alert on one) never has a request dropped as unreadable."""
    per_app = deployed(CHAIN.replace("    unreadable: drop ", "    unreadable: {tls: match} "), mode)
    assert per_app.run(raw_tls(built_hello("banned.example", record_split=60))).action == "XDP_TX"
    assert per_app.run(raw_http(b"GET / HTTP/1.1\r\nX: y\r\n")).action == "XDP_DROP"
    lenient = deployed("name: l7lenient\nfunctions:\n  dpi:\n    type: dpi\n    apps:\n"
                       "      - {app: tls, sni: watch.example, action: alert}\n"
                       "      - {app: http, path: /admin, action: pass}\n"
                       "      - {app: dns, action: drop}\n"
                       "    next: out\n  out: {type: counter, verdict: tx}\n", mode)
    before = lenient.stats()
    assert lenient.run(raw_tls(built_hello("watch.example", record_split=60))).action == "XDP_TX"
    assert lenient.run(raw_http(b"GET / HTTP/1.1\r\nX: y\r\n")).action == "XDP_TX"
    assert lenient.run(raw_dns(dns_wire([b"www", b"evil"], tail=b"\xc0\x0c\0\1\0\1"))).action == "XDP_DROP"
    changed = delta(before, lenient.stats())["dpi"]
    assert (changed["unreadable_tls_sni_unreached"], changed["unreadable_http_host_unseen"],
            changed["unreadable_dns_name_unread"], changed["app1002_hits"]) == (1, 1, 1, 1)
    assert "drop_app_unreadable" not in changed


# -- held to the reference ---------------------------------------------------------------

SEEN_AS = {"drop": "XDP_DROP", "pass": "XDP_PASS", "label": "XDP_TX", "alert": "XDP_TX", None: "XDP_TX"}


def l4(proto: str, dport: int):
    return TCP(sport=40000, dport=dport, flags="PA") if proto == "tcp" else UDP(sport=40000, dport=dport)


def outcome(dep, proto: str, dport: int, payload: bytes) -> tuple[str, list[str]]:
    """What the kernel did with a payload: the action, and the counters that tell what decided."""
    before = dep.stats()
    action = dep.run(frame(l4(proto, dport), payload)).action
    changed = delta(before, dep.stats()).get("dpi", {})
    return action, sorted(k for k in changed if k.endswith("_hits") or k.startswith("unreadable_"))


def reference(params, proto: str, dport: int, payload: bytes) -> tuple[str, list[str]]:
    """The same as vnfchain/dpi/l7.py has it (labels and alerts continue: XDP_TX here)."""
    apps, ids = params.apps, rule_ids(params.apps)
    request = identify(payload, proto, dport)
    if request is None:
        return "XDP_TX", []
    cause = unreadable_cause(apps, request)
    counters = [f"unreadable_{cause}"] if cause else []
    rule = decide(apps, request, params.unreadable_policy)
    if rule == DROPPED_UNREADABLE:
        return "XDP_DROP", counters
    if rule is None:
        return "XDP_TX", counters
    return SEEN_AS[apps[rule].action], sorted(counters + [f"app{ids[rule]}_hits"])


def random_name(rng: random.Random) -> str:
    labels = [rng.choice(["a", "b", "bad", "ok", "x" * rng.randint(10, 30)]) for _ in range(rng.randint(0, 4))]
    return ".".join(labels + [rng.choice(["bad", "ok"]), "example"])


def random_rules(rng: random.Random, n: int) -> list[dict]:
    rules = []
    for _ in range(n):
        app = rng.choice(["http", "tls", "dns"])
        rule = {"app": app, "action": rng.choice(["drop", "pass", "alert"])}
        if rng.random() < 0.8:
            name = random_name(rng)[-NAME_MAX:].lstrip(".")   # the longest a pattern may be
            if rng.random() < 0.5 and "." in name:
                name = "*." + name.split(".", 1)[1]
            rule[{"http": "host", "tls": "sni", "dns": "qname"}[app]] = name
        if app == "http" and rng.random() < 0.3:
            rule["path"] = rng.choice(["/a", "/ab", "/b/"])
        rules.append(rule)
    return rules


def random_request(rng: random.Random) -> tuple[str, int, bytes]:
    """(proto, dport, payload) of a request as clients send them, on varied
    ports: HTTP and TLS are told by their bytes, DNS only on port 53"""
    app = rng.choice(["http", "tls", "dns"])
    name = random_name(rng)
    if app == "tls":
        return "tcp", rng.choice([443, 8443]), client_hello(name)
    cased = "".join(c.upper() if rng.random() < 0.3 else c for c in name)
    if app == "dns":
        query = bytes(DNS(rd=1, qd=DNSQR(qname=cased)))
        how = rng.choice(["udp53", "udp5353", "tcp53", "tcp53 without length"])
        if how == "tcp53":
            return "tcp", 53, len(query).to_bytes(2, "big") + query
        return how[:3], int(how[3:].split()[0]), query
    return "tcp", rng.choice([80, 8080]), bytes(http(cased, rng.choice(["/", "/a", "/abc", "/b/c"]))[TCP].payload)


@pytest.mark.parametrize("seed", range(4))
def test_kernel_verdicts_equal_the_reference(seed):
    rng = random.Random(seed)
    name = chain_name(f"l7diff{seed}")
    rules = random_rules(rng, rng.randint(1, 20))
    text = (f"name: {name}\nmode: {MODES[seed % 2]}\nfunctions:\n  dpi:\n    type: dpi\n"
            f"    apps: {json.dumps(rules)}\n    next: out\n  out: {{type: counter, verdict: tx}}\n")
    chain = Chain.from_yaml_text(text)
    params = chain.spec.function("dpi").params
    dep = chain.deploy(attach=[])
    try:
        wrong = []
        for _ in range(120):
            proto, dport, payload = random_request(rng)
            got, want = outcome(dep, proto, dport, payload), reference(params, proto, dport, payload)
            if got != want:
                wrong.append(f"{proto}/{dport} {payload[:60]!r}: kernel {got}, reference {want}")
        assert not wrong, f"{len(wrong)} differ, e.g. " + "; ".join(wrong[:3])
    finally:
        deploy_mod.undeploy(name)


HTTP_VARIANTS = [
    b"GET / HTTP/1.1\nHost: www.bad.example\nUser-Agent: x\n\n",
    b"GET / HTTP/1.1\nHost: www.bad.example\r\n\r\n",
    b"GET /admin HTTP/1.1\r\nHost:admin.example\n\n",
    b"GET / HTTP/1.1\r\nHost:" + b" " * 16 + b"www.bad.example\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost:" + b" " * 17 + b"www.bad.example\r\n\r\n",   # past the blanks skipped
    b"GET / HTTP/1.1\r\nHost:\twww.bad.example\t\r\n\r\n",
    b"GET / HTTP/1.1\r\nHOST: www.bad.example:80 \r\n\r\n",
    b"GET / HTTP/1.1\r\nX: y\n\r\nHost: www.bad.example\r\n\r\n",
    b"GET / HTTP/1.1\nX: y\n\nHost: www.bad.example\n\n",
    b"GET / HTTP/1.1\r\nHost: www.bad.example",                         # runs past the packet
    b"GET / HTTP/1.1\r\nHost: " + b"a" * 300 + b".bad.example\r\n\r\n",
    b"DELETE / HTTP/1.1\nHost: ok.example\n\n",
    b"\r\n" * 3 + b"GET /admin HTTP/1.1\r\nHost: admin.example\r\n\r\n",
    b"\n" * HTTP_LEADING + b"GET / HTTP/1.1\nHost: a.bad.example\n\n",
    b"\r" * (HTTP_LEADING + 1) + b"GET / HTTP/1.1\nHost: ok.example\n\n",
    b"GET\x0b\x0c /admin HTTP/1.1\r\nHost: admin.example\r\n\r\n",
    b"GET" + b" " * 18 + b"/ HTTP/1.1\r\nHost: ok.example\r\n\r\n",       # more separators than are skipped
    b"GET http://u@v@www.bad.example/ HTTP/1.1\r\n\r\n",                  # two "@"
    b"GET http://" + b"a" * 300 + b".bad.example/ HTTP/1.1\r\n\r\n",       # an authority too long
    b"GET abcdefghijklmnopq://www.bad.example/ HTTP/1.1\r\n\r\n",        # a scheme too long
    b"GET http:/www.bad.example/ HTTP/1.1\r\nHost: ok.example\r\n\r\n",  # not absolute-form
    b"GET http:// HTTP/1.1\r\nHost: ok.example\r\n\r\n",                 # an empty host
    b"GET http://[::1]:8080 HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n",
    b"GET http://admin.example?/admin HTTP/1.1\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: www.bad.example\r\n\r\n",
    b"CONNECT www.bad.example HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\n Host: www.bad.example\r\n\r\n",                # a blank-led line: folded
    b"GET / HTTP/1.1\r\nHost: ok.example\r\nX: a\r\n\tb\r\n\r\n",         # a fold elsewhere
    b"GET / HTTP/1.1\r\nHost: ok.example\r\n\r\nHost: www.bad.example\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: www.bad.example@ok.example\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: ok\0www.bad.example\r\n\r\n",
    b"POS",
    b"P",
    b"GET",
    b"GET ",
]

TLS_VARIANTS = [
    built_hello("banned.example", before=31),
    built_hello("banned.example", before=33),
    built_hello("banned.example", before=340),
    built_hello(None, before=3),
    built_hello(None, names=[(0, b"")]),
    built_hello(None, names=[(1, b"a")] * 17 + [(0, b"banned.example")]),      # more names than are read
    built_hello(None, names=[(1, b"a")] * 15 + [(0, b"banned.example")]),
    built_hello("banned.example", record_split=200),                        # the SNI in the first record
    built_hello("banned.example", record_split=3),
    built_hello("banned.example")[:114],                                    # the name cut short
    built_hello("Banned.Example."),
    b"\x16",
    b"\x16\x04\x01\x00\x10",                                                 # not TLS 1.x
    b"\x16\x03\x01\x00\x04\x02\x00\x00\x00",                                   # another handshake message
]

DNS_VARIANTS = [
    dns_wire(MANY),
    dns_wire([b"a"] * 125 + [b"evil", b"example"]),
    dns_wire([b"a"] * 126 + [b"evil", b"example"]),               # 128 labels: more than a legal name
    dns_wire([b"a"] * 200 + [b"evil", b"example"]),
    dns_wire([b"x" * 63] * 3 + [b"evil", b"example"]),
    dns_wire([b"www", b"evil"], tail=b"\xc0\x0c\0\1\0\1"),          # compressed
    dns_wire([b"www", b"evil", b"example"], tail=b"")[:-3],         # cut short
    dns_wire([], tail=b"\0\0\1\0\1"),                                 # the root
    dns_wire([b"Spy", b"EXAMPLE"]),
    dns_wire([b"spy", b"example"]).replace(b"\0\1\0\0", b"\0\5\0\0", 1),   # five questions
]

VARIANTS = ([("tcp", 80, p) for p in HTTP_VARIANTS] + [("tcp", 443, p) for p in TLS_VARIANTS]
            + [("udp", 53, p) for p in DNS_VARIANTS]
            + [("tcp", 53, len(p).to_bytes(2, "big") + p) for p in DNS_VARIANTS] + [("tcp", 53, b"\0")])
MATCHING = CHAIN.replace("    unreadable: drop ", "    unreadable: match ")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("text", [CHAIN, MATCHING], ids=["drop", "match"])
def test_variants_equal_the_reference(deployed, mode, text):
    """The kernel reads requests as l7.identify does and decides as l7.decide says."""
    dep, params = deployed(text, mode), Chain.from_yaml_text(text).spec.function("dpi").params
    wrong = [f"{proto}/{dport} {payload[:48]!r}: kernel {got}, reference {want}"
             for proto, dport, payload in VARIANTS
             if (got := outcome(dep, proto, dport, payload)) != (want := reference(params, proto, dport, payload))]
    assert not wrong, f"{len(wrong)} of {len(VARIANTS)} differ: " + "; ".join(wrong[:3])


# -- the same by hypothesis: requests built of the evasions above, cut anywhere ---------

HOSTS = [b"www.bad.example", b"WWW.Bad.Example", b"admin.example", b"ok.example", b"a.bad.example.",
         b"[2001:db8::1]", b"u:p@www.bad.example", b""]
HEADERS = [b"Host: %s", b"host:\t%s", b"HOST:%s  ", b"Host : %s", b"hoSt\t:%s", b"Host:" + b" " * 17 + b"%s",
           b" folded %s", b"Host: %s\r\n\tfolded",
           b"X-Pad: " + b"p" * 600, b"Accept: */*"]


@st.composite
def http_requests(draw) -> tuple[str, int, bytes]:
    method = draw(st.sampled_from([b"GET", b"POST", b"DELETE", b"CONNECT", b"FETCH", b"get"]))
    host = draw(st.sampled_from(HOSTS))
    form = draw(st.sampled_from(["origin", "absolute", "authority"]))
    if form == "origin":
        target = draw(st.sampled_from([b"/", b"/admin", b"/admin/x?y", b"*", b"a:b"]))
    else:
        scheme = b"" if form == "authority" else draw(st.sampled_from([b"http://", b"HTTPS://", b"h2c://",
                                                                       b"x" * 17 + b"://", b"http:/"]))
        target = scheme + host + draw(st.sampled_from([b"", b":8080"])) + draw(st.sampled_from([b"", b"/admin", b"?q"]))
    end = draw(st.sampled_from([b"\r\n", b"\n"]))
    lines = [h.replace(b"%s", draw(st.sampled_from(HOSTS))) for h in draw(st.lists(st.sampled_from(HEADERS), max_size=4))]
    request = (draw(st.sampled_from([b"", b"\r\n", b"\n\r\n", b"\n" * (HTTP_LEADING + 1)]))
               + method + draw(st.sampled_from([b" ", b"\t", b" \x0b ", b" " * 17])) + target + b" HTTP/1.1" + end
               + b"".join(line + end for line in lines) + end)
    return "tcp", 80, request[:draw(st.integers(1, len(request)))] if draw(st.booleans()) else request


@st.composite
def client_hellos(draw) -> tuple[str, int, bytes]:
    names = draw(st.none() | st.lists(st.tuples(st.sampled_from([0, 1]), st.sampled_from(
        [b"banned.example", b"fine.example", b"a.watch.example", b""])), min_size=1, max_size=3))
    hello = built_hello(draw(st.sampled_from(["banned.example", "fine.example", None])), names=names,
                        before=draw(st.sampled_from([0, 2, 33, 300])),
                        record_split=draw(st.none() | st.integers(1, 300)))
    if draw(st.booleans()):
        hello = hello[:draw(st.integers(1, len(hello)))]
    return "tcp", 443, hello


@st.composite
def dns_queries(draw) -> tuple[str, int, bytes]:
    labels = draw(st.lists(st.sampled_from([b"a", b"evil", b"Evil", b"example", b"spy", b"local", b"x" * 63]),
                           max_size=6))
    message = (b"\x12\x34" + draw(st.sampled_from([b"\1\0", b"\x81\x80"])) + bytes([0, draw(st.integers(0, 2))])
               + bytes(6) + b"".join(bytes([len(x)]) + x for x in labels)
               + draw(st.sampled_from([b"\0", b"\xc0\x0c", b"\x3f"])) + b"\0\1\0\1")
    proto = draw(st.sampled_from(["udp", "tcp"]))
    if proto == "tcp":
        message = len(message).to_bytes(2, "big") + message
    if draw(st.booleans()):
        message = message[:draw(st.integers(1, len(message)))]
    return proto, 53, message


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(mode=st.sampled_from(MODES), text=st.sampled_from([CHAIN, MATCHING]),
       cases=st.lists(st.one_of(http_requests(), client_hellos(), dns_queries()), min_size=1, max_size=6))
def test_generated_requests_equal_the_reference(deployed, mode, text, cases):
    dep, params = deployed(text, mode), Chain.from_yaml_text(text).spec.function("dpi").params
    for proto, dport, payload in cases:
        assert outcome(dep, proto, dport, payload) == reference(params, proto, dport, payload), (proto, dport, payload)


def test_a_dns_query_with_an_unreadable_name_is_still_dns(deployed):
    catch_all = ("name: l7dns\nfunctions:\n  dpi:\n    type: dpi\n    apps: [{app: dns, qname: ok.example, action: pass},"
                 " {app: dns, action: drop}]\n    next: out\n  out: {type: counter, verdict: tx}\n")
    for mode in MODES:
        dep = deployed(catch_all, mode)
        assert dep.run(dns("ok.example")).action == "XDP_PASS"
        for payload in DNS_VARIANTS:
            assert dep.run(raw_dns(payload)).action == "XDP_DROP", (mode, payload[:40])


@pytest.mark.parametrize("mode", MODES)
def test_a_tls_rule_without_sni_drops_every_client_hello(deployed, mode):
    dep = deployed("name: l7tls\nfunctions:\n  dpi:\n    type: dpi\n    apps: [{app: tls, action: drop}]\n"
                   "    next: out\n  out: {type: counter, verdict: tx}\n", mode)
    assert dep.run(tls("fine.example")).action == "XDP_DROP"
    assert dep.run(tls(SERVER)).action == "XDP_DROP"
    assert dep.run(http("fine.example")).action == "XDP_TX"


def test_a_new_app_rule_is_a_config_change_and_holds_from_the_next_packet():
    name = chain_name("l7live")
    rules = ['{app: dns, qname: "*.evil.example", action: drop}']

    def chain():
        return Chain.from_yaml_text(f"name: {name}\nfunctions:\n  dpi:\n    type: dpi\n"
                                    f"    apps: [{', '.join(rules)}]\n    next: out\n"
                                    f"  out: {{type: counter, verdict: tx}}\n")
    dep = chain().deploy(attach=[])
    try:
        assert dep.run(dns("www.spam.example")).action == "XDP_TX"
        rules.insert(0, '{app: dns, qname: "*.spam.example", action: drop}')
        with not_compiling():
            changed = chain().deploy(attach=[])
        assert changed.last_change == "config"
        assert changed.run(dns("www.spam.example")).action == "XDP_DROP"
        assert changed.run(dns("www.evil.example")).action == "XDP_DROP"
        assert changed.run(dns("www.example")).action == "XDP_TX"
    finally:
        deploy_mod.undeploy(name)


def test_unreadable_is_a_config_change_and_its_counters_carry_over():
    name = chain_name("l7unread")

    def chain(policy):
        return Chain.from_yaml_text(f"name: {name}\nfunctions:\n  dpi:\n    type: dpi\n    unreadable: {policy}\n"
                                    "    apps: [{app: tls, sni: banned.example, action: drop}]\n    next: out\n"
                                    "  out: {type: counter, verdict: tx}\n")
    split = raw_tls(built_hello("fine.example", record_split=60))
    dep = chain("drop").deploy(attach=[])
    try:
        assert dep.run(split).action == "XDP_DROP"
        with not_compiling():
            changed = chain("match").deploy(attach=[])
        assert changed.last_change == "config"
        assert changed.run(split).action == "XDP_TX"
        assert changed.stats()["dpi"]["unreadable_tls_sni_unreached"] == 2
    finally:
        deploy_mod.undeploy(name)


# -- alert events ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def readers(deployed):
    """One event reader per mode's chain, kept for the module (the read position is shared)."""
    made = {mode: EventReader(deployed(CHAIN, mode)) for mode in MODES}
    yield made
    for reader in made.values():
        reader.close()


def events_of(dep, reader, packet) -> list[dict]:
    reader.poll(0)          # what earlier tests left
    dep.run(packet)
    return reader.poll(1.0)


@pytest.mark.parametrize("mode", MODES)
def test_a_signature_alert_sends_its_id_and_5_tuple(deployed, readers, mode):
    dep = deployed(CHAIN, mode)
    (event,) = events_of(dep, readers[mode], frame(UDP(sport=1111, dport=9), b"xx evil-payload xx"))
    assert {k: event[k] for k in ("function", "id", "app", "proto", "src", "sport", "dst", "dport", "name")} == {
        "function": "dpi", "id": 2, "app": "signature", "proto": "udp",
        "src": CLIENT, "sport": 1111, "dst": SERVER, "dport": 9, "name": None}


@pytest.mark.parametrize("mode", MODES)
def test_an_app_alert_names_what_it_matched(deployed, readers, mode):
    dep = deployed(CHAIN, mode)
    (event,) = events_of(dep, readers[mode], dns("Spy.Example"))
    assert (event["id"], event["app"], event["name"], event["proto"], event["dport"]) == (51, "dns", "spy.example", "udp", 53)
    (event,) = events_of(dep, readers[mode], tls(f"{LONG}.watch.example"))
    assert (event["id"], event["app"], event["proto"], event["dport"]) == (50, "tls", "tcp", 443)
    assert event["name"] == "…" + f"{LONG}.watch.example"[-NAME_MAX:]   # the kernel keeps the end


@pytest.mark.parametrize("mode", MODES)
def test_no_event_without_an_alert(deployed, readers, mode):
    dep = deployed(CHAIN, mode)
    assert events_of(dep, readers[mode], dns("evil.example")) == []
    assert events_of(dep, readers[mode], http("www.example")) == []
    assert dep.stats()["dpi"]["alerts_lost"] == 0


def test_events_cli_prints_one_line_per_alert(deployed, readers):
    dep = deployed(CHAIN, "tailcall")
    readers["tailcall"].poll(0)
    dep.run(frame(UDP(sport=2222, dport=9), b"evil-payload"))
    dep.run(dns("spy.example"))
    runner = CliRunner()
    result = runner.invoke(cli, ["events", dep.name, "--count", "2", "--timeout", "5"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(lines) == 2
    assert lines[0].endswith(f"dpi id 2 signature udp {CLIENT}:2222 -> {SERVER}:9")
    assert lines[1].endswith(f"dpi id 51 dns spy.example udp {CLIENT}:40002 -> {SERVER}:53")
    dep.run(tls("a.watch.example"))
    result = runner.invoke(cli, ["events", dep.name, "--json", "--count", "1", "--timeout", "5"])
    assert result.exit_code == 0, result.output
    event = json.loads(result.output)
    assert (event["id"], event["name"], event["dport"]) == (50, "a.watch.example", 443)


def test_events_cli_stops_at_its_timeout_and_refuses_chains_without_events(deployed, readers):
    dep = deployed(CHAIN, "fused")
    readers["fused"].poll(0)
    runner = CliRunner()
    result = runner.invoke(cli, ["events", dep.name, "--timeout", "0.3"])
    assert result.exit_code == 0 and result.output == ""
    plain = deployed("name: x\nfunctions:\n  out: {type: counter, verdict: tx}\n", "tailcall", tag="noev")
    result = runner.invoke(cli, ["events", plain.name, "--timeout", "0.3"])
    assert result.exit_code == 1
    assert "has no function that sends events" in result.output


def own_chain(deployed, tag):
    """A chain of CHAIN's rules whose events no module reader takes."""
    return deployed(CHAIN + f"# {tag}\n", "tailcall", tag=tag)


def test_events_cli_count_leaves_the_other_events_for_the_next_reader(deployed):
    dep = own_chain(deployed, "evcount")
    runner = CliRunner()
    runner.invoke(cli, ["events", dep.name, "--timeout", "0.1"])     # what was left
    dep.run(dns("spy.example"), repeat=3)
    first = runner.invoke(cli, ["events", dep.name, "--count", "1", "--timeout", "2"])
    assert first.exit_code == 0, first.output
    assert len(first.output.splitlines()) == 1
    rest = runner.invoke(cli, ["events", dep.name, "--count", "5", "--timeout", "0.5"])
    assert rest.exit_code == 0, rest.output
    assert len(rest.output.splitlines()) == 2


def test_events_cli_timeout_0_reads_what_waits(deployed):
    dep = own_chain(deployed, "evzero")
    runner = CliRunner()
    runner.invoke(cli, ["events", dep.name, "--timeout", "0.1"])
    dep.run(dns("spy.example"))
    result = runner.invoke(cli, ["events", dep.name, "--timeout", "0"])
    assert result.exit_code == 0, result.output
    assert "dpi id 51 dns spy.example" in result.output


def test_events_cli_into_a_closed_pipe_ends_quietly(deployed):
    dep = own_chain(deployed, "evpipe")
    dep.run(dns("spy.example"), repeat=1500)        # more lines than a pipe holds
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.run(["bash", "-o", "pipefail", "-c",       # fails if vnfchain does
                           f"{sys.executable} -m vnfchain events {dep.name} --json --timeout 3 | head -n 1"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert json.loads(proc.stdout)["id"] == 51
    assert (proc.returncode, proc.stderr) == (0, "")


def test_events_cli_unreadable_ring_is_a_clear_error(deployed, monkeypatch):
    import errno
    from vnfchain import bpfsys

    def refused(path):
        raise OSError(errno.EPERM, f"open pin {path}: {os.strerror(errno.EPERM)}")
    dep = own_chain(deployed, "evperm")
    monkeypatch.setattr(bpfsys, "obj_get", refused)      # as for a user without CAP_BPF
    result = CliRunner().invoke(cli, ["events", dep.name, "--timeout", "0.1"])
    assert result.exit_code == 1
    assert f"error: cannot read the events of chain '{dep.name}': open pin " in result.output
    assert "Operation not permitted; run as root" in result.output
    assert isinstance(result.exception, SystemExit)
