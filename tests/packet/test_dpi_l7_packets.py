"""DPI app rules through BPF_PROG_TEST_RUN: HTTP Host/method/path, TLS SNI (real
ClientHellos from Python's ssl), DNS query names; wildcards, case, names
longer than the kernel's buffer; labels per application; signatures still
first. Held to the Python reference over random rule sets and names. Alert
events read back from the pinned ring buffer, by the library and by
`vnfchain events`. Every case in both chain modes."""
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
from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from tests.chain_fixtures import MODES, chain_name, delta, not_compiling
from vnfchain import Chain
from vnfchain.chain import deploy as deploy_mod
from vnfchain.cli import cli, commands  # noqa: F401  (registers the commands)
from vnfchain.dpi.l7 import NAME_MAX, Request, dns_query, first_app_rule, http_request, rule_ids
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


MANY = [b"a"] * 98 + [b"evil", b"example"]     # 100 labels, 211 bytes: legal

LONG = ".".join(["x" * 20] * 4)   # 83 bytes before the domain: longer than the kernel's buffer

# description, packet, action, deciding rule's counter, functions the packet went through
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
    ("a banned SNI", lambda: tls("banned.example"), "XDP_DROP", "app1003", ()),
    ("another SNI branches to tls", lambda: tls("fine.example"), "XDP_TX", "app1010", ("tls",)),
    ("a ClientHello to an IP address (no SNI) branches to tls", lambda: tls(SERVER), "XDP_TX", "app1010", ("tls",)),
    ("an SNI alert continues", lambda: tls("a.watch.example"), "XDP_TX", "app50", ()),
    ("a DNS name below a wildcard", lambda: dns("a.b.evil.example"), "XDP_DROP", "app1005", ()),
    ("the exact DNS name, any case", lambda: dns("Evil.EXAMPLE"), "XDP_DROP", "app1006", ()),
    ("a long DNS name below a wildcard", lambda: dns(f"{LONG}.evil.example"), "XDP_DROP", "app1005", ()),
    ("a DNS name of 100 labels below a wildcard", lambda: raw_dns(dns_wire(MANY)), "XDP_DROP", "app1005", ()),
    ("a DNS name of 127 labels below a wildcard", lambda: raw_dns(dns_wire([b"a"] * 125 + [b"evil", b"example"])),
     "XDP_DROP", "app1005", ()),
    ("an allowed DNS name", lambda: dns("notevil.example"), "XDP_TX", None, ()),
    ("a DNS pass rule", lambda: dns("printer.local.example"), "XDP_PASS", "app1008", ()),
    ("a DNS alert", lambda: dns("spy.example"), "XDP_TX", "app51", ()),
    ("DNS responses are not queries", lambda: dns("evil.example", response=True), "XDP_TX", None, ()),
    ("DNS only on port 53", lambda: dns("evil.example", dport=5353), "XDP_TX", None, ()),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("desc,make,action,hit,through", CASES, ids=[c[0] for c in CASES])
def test_app_rules(deployed, mode, desc, make, action, hit, through):
    dep = deployed(CHAIN, mode)
    before = dep.stats()
    result = dep.run(make())
    changed = delta(before, dep.stats())
    assert result.action == action
    assert [k for k in changed.get("dpi", {}) if k.endswith("_hits")] == ([f"{hit}_hits"] if hit else [])
    for branch in ("web", "tls"):
        assert (branch in changed) == (branch in through)
    if action == "XDP_DROP":
        assert changed["dpi"]["drop_" + ("signature" if hit.startswith("sig") else "app_rule")] == 1


# -- held to the reference ---------------------------------------------------------------

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


def random_request(rng: random.Random):
    """(Request, or None when the packet is no app the rules know; packet), on
    varied ports: HTTP and TLS are told by their bytes, DNS only on UDP/53"""
    app = rng.choice(["http", "tls", "dns"])
    name = random_name(rng)
    if app == "tls":
        packet = tls(name)
        packet[TCP].dport = rng.choice([443, 8443])
        return Request("tls", name), packet
    cased = "".join(c.upper() if rng.random() < 0.3 else c for c in name)
    if app == "dns":
        how = rng.choice(["udp53", "udp53", "udp5353", "tcp53"])
        if how == "tcp53":
            return None, frame(TCP(sport=40002, dport=53), bytes(DNS(rd=1, qd=DNSQR(qname=cased))))
        return (Request("dns", name) if how == "udp53" else None), dns(cased, dport=53 if how == "udp53" else 5353)
    path = rng.choice(["/", "/a", "/abc", "/b/c"])
    packet = http(cased, path)
    packet[TCP].dport = rng.choice([80, 8080])
    return Request("http", name, "GET", path), packet


SEEN_AS = {"drop": "XDP_DROP", "pass": "XDP_PASS", "alert": "XDP_TX", None: "XDP_TX"}


@pytest.mark.parametrize("seed", range(4))
def test_kernel_verdicts_equal_the_reference(seed):
    rng = random.Random(seed)
    name = chain_name(f"l7diff{seed}")
    rules = random_rules(rng, rng.randint(1, 20))
    text = (f"name: {name}\nmode: {MODES[seed % 2]}\nfunctions:\n  dpi:\n    type: dpi\n"
            f"    apps: {json.dumps(rules)}\n    next: out\n  out: {{type: counter, verdict: tx}}\n")
    chain = Chain.from_yaml_text(text)
    apps = chain.spec.function("dpi").params.apps
    dep = chain.deploy(attach=[])
    try:
        wrong = []
        ids = rule_ids(apps)
        for _ in range(120):
            request, packet = random_request(rng)
            want = first_app_rule(apps, request) if request else None
            before = dep.stats()
            got = dep.run(packet).action, [k for k in delta(before, dep.stats()).get("dpi", {}) if k.endswith("_hits")]
            if got != (SEEN_AS[apps[want].action if want is not None else None],
                       [f"app{ids[want]}_hits"] if want is not None else []):
                wrong.append(f"{request} {packet.summary()}: kernel {got}, "
                             f"reference rule {want}")
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
]


@pytest.mark.parametrize("mode", MODES)
def test_http_and_dns_variants_equal_the_reference(deployed, mode):
    """The kernel reads Host and query names as l7.http_request and l7.dns_query do."""
    dep = deployed(CHAIN, mode)
    apps = Chain.from_yaml_text(CHAIN).spec.function("dpi").params.apps
    seen = {"drop": "XDP_DROP", "pass": "XDP_PASS", "label": "XDP_TX", "alert": "XDP_TX", None: "XDP_TX"}
    cases = [(p, http_request, raw_http) for p in HTTP_VARIANTS] + [(p, dns_query, raw_dns) for p in DNS_VARIANTS]
    for payload, read, make in cases:
        request = read(payload)
        assert request is not None
        want = first_app_rule(apps, request)
        assert dep.run(make(payload)).action == seen[apps[want].action if want is not None else None], \
            (payload[:40], request, want)


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
