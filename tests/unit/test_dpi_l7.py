"""App rules of the dpi function without BPF: their validation, the trie the
kernel looks names up in, held to the plain definition (every rule whose
pattern matches, read off the longest matching key alone), the reference
parsers (how a request is read, evasions included) and the `unreadable`
policy."""
from __future__ import annotations

import random

import pytest
from pydantic import ValidationError

from vnfchain.dpi.l7 import (DROPPED_UNREADABLE, HTTP_LEADING, KINDS, NAME_MAX, TRUNCATED, UNREADABLE, AppRule,
                             Request, byte_classes, decide, dns_query, fails_closed, first_app_rule, http_request,
                             identify, method_masks, method_token, name_key, path_key, tls_hello, trie_entries,
                             unreadable_cause)
from vnfchain.dpi.synthetic import client_hello
from vnfchain.functions.dpi import DpiParams


@pytest.mark.parametrize("rule,error", [
    ({"app": "http", "sni": "a.example", "action": "drop"}, "'sni' is for app: tls"),
    ({"app": "dns", "method": ["GET"], "action": "drop"}, "method and path are for app: http"),
    ({"app": "tls", "action": "label"}, "action: label needs label"),
    ({"app": "dns", "qname": "a..example", "action": "drop"}, "not a host name"),
    ({"app": "dns", "qname": "a.*.example", "action": "drop"}, "not a host name"),
    # a block scalar (host: |) ends in a newline: a rule that would never match
    ({"app": "http", "host": "bad.example\n", "action": "drop"}, "not a host name"),
    ({"app": "dns", "qname": "x" * 60 + ".example", "action": "drop"}, "longer than the 64 bytes"),
])
def test_bad_rules_are_refused_with_the_reason(rule, error):
    with pytest.raises(ValidationError, match=error):
        AppRule(**rule)


def test_ids_are_unique_over_signatures_and_app_rules():
    with pytest.raises(ValidationError, match="ids must be unique"):
        DpiParams(signatures=[{"id": 1000, "content": "x", "action": "drop"}],
                  apps=[{"app": "http", "action": "drop"}])
    with pytest.raises(ValidationError, match="no signatures or app rules"):
        DpiParams()


def kernel_view(kind: int, name: str | None) -> bytes:
    """The lookup key data the kernel builds for a name (vc_l7_copy_reversed)."""
    if name is None:
        return bytes([kind]) + bytes(NAME_MAX + 1)
    rev = name.lower()[::-1].encode()[:NAME_MAX]
    end = bytes([TRUNCATED]) if len(name) > NAME_MAX else b"\0"
    return (bytes([kind]) + rev + end).ljust(NAME_MAX + 2, b"\0")


def longest_match(entries: dict[bytes, int], data: bytes) -> int:
    found = [k for k in entries if data.startswith(k)]
    return entries[max(found, key=len)] if found else 0


def random_name(rng):
    return ".".join(rng.choice(["a", "b", "ab", "x" * 25]) for _ in range(rng.randint(1, 5))) + ".example"


@pytest.mark.parametrize("seed", range(20))
def test_the_longest_trie_match_holds_every_matching_rule(seed):
    rng = random.Random(seed)
    rules = []
    for _ in range(rng.randint(1, 12)):
        name = random_name(rng)[-NAME_MAX:].lstrip(".") if rng.random() < 0.85 else None
        if name and rng.random() < 0.5:
            name = "*." + name.split(".", 1)[1]
        rules.append(AppRule(app="dns", qname=name, action="drop"))
    entries = trie_entries(rules)
    for _ in range(200):
        name = random_name(rng)
        if rng.random() < 0.3:      # exactly a rule's name, so exact patterns get hit
            name = rng.choice([r.name for r in rules if r.name] or [name]).removeprefix("*.")
        mask = longest_match(entries, kernel_view(KINDS["dns"], name.upper()))
        want = {i for i in range(len(rules)) if first_app_rule([rules[i]], Request("dns", name)) == 0}
        assert {i for i in range(len(rules)) if mask >> i & 1} == want, name


def test_keys():
    assert name_key(1, "*.bad.example") == b"\x01elpmaxe.dab."
    assert name_key(3, "bad.example") == b"\x03elpmaxe.dab\0"
    assert path_key("/admin") == b"\x04/admin"


def test_a_clashing_id_says_where_each_comes_from():
    with pytest.raises(ValidationError, match=r"1001 is used twice: by signatures\[0\] and apps\[1\] "
                                              r"\(by default 1000 \+ its position\)"):
        DpiParams(signatures=[{"id": 1001, "content": "x", "action": "drop"}],
                  apps=[{"app": "http", "action": "drop"}, {"app": "dns", "action": "drop"}])
    with pytest.raises(ValidationError, match=r"7 is used twice: by rules_text, line 2 \(sid\) and apps\[0\] \[type"):
        DpiParams(rules_text='\nalert udp any any -> any 9 (content:"y"; sid:7;)\n',
                  apps=[{"app": "dns", "action": "drop", "id": 7}])


def test_the_help_tells_the_rules_file_and_id_semantics():
    from click.testing import CliRunner
    from vnfchain.cli import cli, commands  # noqa: F401
    text = " ".join(CliRunner().invoke(cli, ["functions", "dpi"]).output.split())
    assert "the first signature in the list that matches decides (Suricata orders by action" in text
    assert "one unsupported rule rejects the whole file" in text
    assert "default to 1000 + the rule's position in ``apps``: inserting a rule renumbers the counters" in text


# -- the reference parsers: what a request is, as the kernel is held to read it ----------

@pytest.mark.parametrize("payload,want", [
    (b"GET /a HTTP/1.1\r\nHost: WWW.Example:80\r\n\r\n", Request("http", "WWW.Example", "GET", "/a")),
    (b"\r\n\n\r\nPOST /a HTTP/1.1\nHost: x.example\n\n", Request("http", "x.example", "POST", "/a")),
    (b"\n" * HTTP_LEADING + b"GET / HTTP/1.1\r\n\r\n", Request("http", None, "GET", "/")),
    (b"\n" * (HTTP_LEADING + 1) + b"GET / HTTP/1.1\r\n\r\n", Request("http", unreadable="http_blank_lines")),
    (b"GET\t \x0b/a b HTTP/1.1\r\n\r\n", Request("http", None, "GET", "/a")),
    (b"GET hTTps://u:p@Bad.Example:8443/x?y HTTP/1.1\r\nHost: ok.example\r\n\r\n",
     Request("http", "Bad.Example", "GET", "/x?y", host_header="ok.example")),
    (b"GET http://[2001:db8::1]:80?q HTTP/1.1\r\n\r\n", Request("http", "[2001:db8::1]", "GET", "/?q")),
    (b"CONNECT bad.example:443 HTTP/1.1\r\n\r\n", Request("http", "bad.example", "CONNECT")),
    (b"GET http:/bad.example/ HTTP/1.1\r\nHost: ok.example\r\n\r\n",
     Request("http", "ok.example", "GET", "http:/bad.example/")),
    (b"GET http://a@b@bad.example/ HTTP/1.1\r\n\r\n", Request("http", method="GET", unreadable="http_request_line")),
    (b"GET " + b"s" * 17 + b"://bad.example/ HTTP/1.1\r\n\r\n",
     Request("http", method="GET", unreadable="http_request_line")),
    (b"GET / HTTP/1.1\r\nHost: a.example\r\nHOST: b.example\r\n\r\n",
     Request("http", "a.example", "GET", "/", "http_host_ambiguous")),
    (b"GET / HTTP/1.1\r\nHost: a.example\r\n b.example\r\n\r\n",
     Request("http", "a.example", "GET", "/", "http_host_ambiguous")),
    (b"GET / HTTP/1.1\r\nHost\t: a.example\r\n\r\n", Request("http", None, "GET", "/", "http_host_ambiguous")),
    (b"GET / HTTP/1.1\r\nAccept: */*\r\n", Request("http", None, "GET", "/", "http_host_unseen")),
    (b"GET / HTTP/1.1\r\nHost: a.exa", Request("http", None, "GET", "/", "http_host_unseen")),
    (b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n", Request("http", None, "GET", "/")),   # HTTP/1.0 style: no Host
    (b"PO", Request("http", unreadable="http_request_line")),
    (b"PX", None),
    (b"get / HTTP/1.1\r\n\r\n", None),
])
def test_http_requests_read_as_servers_read_them(payload, want):
    assert http_request(payload) == want


@pytest.mark.parametrize("hello,want", [
    (client_hello("a.example", before=400), Request("tls", "a.example")),
    (client_hello(None, names=[(1, b"x"), (0, b"a.example")]), Request("tls", "a.example")),
    (client_hello(None, names=[(1, b"x")]), Request("tls")),
    (client_hello(None), Request("tls")),
    (client_hello("a.example", record_split=80), Request("tls", unreadable="tls_sni_unreached")),
    (client_hello("a.example", record_split=400), Request("tls", "a.example")),
    (client_hello("a.example")[:105], Request("tls", unreadable="tls_sni_unreached")),
    (b"\x16", Request("tls", unreadable="tls_sni_unreached")),
    (b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00", None),        # a ServerHello
    (b"\x17\x03\x03\x00\x05hello", None),                      # application data
])
def test_client_hellos_are_walked_to_the_end_of_the_first_record(hello, want):
    assert tls_hello(hello) == want


def query(name: bytes, questions: int = 1) -> bytes:
    return b"\x12\x34\1\0" + questions.to_bytes(2, "big") + bytes(6) + name + b"\0\1\0\1"


@pytest.mark.parametrize("payload,tcp,want", [
    (query(b"\3www\4evil\7example\0"), False, Request("dns", "www.evil.example")),
    (query(b"\3www\4evil\7example\0", 2), False, Request("dns", "www.evil.example", unreadable="dns_questions")),
    (query(b"\3www\xc0\x0c"), False, Request("dns", unreadable="dns_name_unread")),
    (query(b"\1a" * 128 + b"\0"), False, Request("dns", unreadable="dns_name_unread")),
    (query(b"\0", 0), False, None),
    (b"\0\x1d" + query(b"\4evil\7example\0"), True, Request("dns", "evil.example")),
    (b"\0\x1d", True, Request("dns", unreadable="dns_name_unread")),
])
def test_dns_queries(payload, tcp, want):
    assert dns_query(payload, tcp) == want


def test_identify_tries_http_then_tls_then_dns_on_port_53():
    assert identify(b"GET / HTTP/1.1\r\n\r\n", "tcp", 53).app == "http"
    assert identify(client_hello("a.example"), "tcp", 8443).app == "tls"
    assert identify(query(b"\1a\0"), "udp", 5353) is None
    assert identify(b"\0\x0f" + query(b"\1a\0"), "tcp", 53) == Request("dns", "a")


def rules(*specs):
    return [AppRule(**s) for s in specs]


def test_an_ambiguous_host_is_one_that_other_rules_match():
    apps = rules({"app": "http", "host": "*.bad.example", "action": "drop"}, {"app": "http", "action": "pass"})
    same = Request("http", "a.bad.example", "GET", "/", host_header="b.bad.example")
    other = Request("http", "ok.example", "GET", "/", host_header="a.bad.example")
    assert unreadable_cause(apps, same) is None
    assert unreadable_cause(apps, other) == "http_host_ambiguous"
    assert decide(apps, other, {"http": "drop"}) == DROPPED_UNREADABLE
    assert decide(apps, other, {"http": "match"}) == 1              # the target decides


def test_unreadable_fails_closed_only_where_a_drop_rule_asks_for_more_than_the_app():
    policy = {"http": "drop", "tls": "drop", "dns": "match"}
    assert fails_closed(rules({"app": "http", "path": "/a", "action": "drop"}), "http", policy)
    assert fails_closed(rules({"app": "http", "method": ["DELETE"], "action": "drop"}), "http", policy)
    assert not fails_closed(rules({"app": "http", "action": "drop"}), "http", policy)
    assert not fails_closed(rules({"app": "tls", "sni": "a.example", "action": "alert"}), "tls", policy)
    assert not fails_closed(rules({"app": "dns", "qname": "a.example", "action": "drop"}), "dns", policy)


def test_unreadable_is_one_policy_or_one_per_app():
    base = {"apps": [{"app": "dns", "action": "drop"}]}
    # by default TLS matches: a browser's ClientHello often has its SNI in the second segment
    assert DpiParams(**base).unreadable_policy == {"http": "drop", "tls": "match", "dns": "drop"}
    assert DpiParams(**base, unreadable="drop").unreadable_policy == {"http": "drop", "tls": "drop", "dns": "drop"}
    assert DpiParams(**base, unreadable="match").unreadable_policy == {"http": "match", "tls": "match", "dns": "match"}
    assert DpiParams(**base, unreadable={"tls": "match"}).unreadable_policy == {"http": "drop", "tls": "match",
                                                                                "dns": "drop"}
    for wrong in ("block", {"ftp": "drop"}, {"tls": "pass"}):
        with pytest.raises(ValidationError, match="unreadable"):
            DpiParams(**base, unreadable=wrong)


def test_the_kernel_tables_come_from_the_reference():
    table = byte_classes()
    bits = {name: 1 << i for i, name in enumerate(["separator", "authority_end", "path_end"])}
    assert len(table["of"]) == len(table["lower"]) == 256
    assert [c for c in range(256) if table["of"][c] & bits["separator"]] == [0x09, 0x0B, 0x0C, 0x0D, 0x20]
    assert table["lower"][ord("Q")] == ord("q") and table["lower"][0xC4] == 0xC4      # ASCII letters only
    masks = method_masks(rules({"app": "http", "method": ["GET"], "action": "drop"}, {"app": "http", "action": "pass"}))
    assert masks[b"GET "] == 0b11 and masks[b"POST "] == 0b10
    assert masks[b"GE"] == masks[b"GET"] == masks[b""] == 0b10       # cut short or none: no method known
    assert method_token(b"GET ") == 0x20544547


def test_the_help_tells_the_unreadable_causes_and_the_limits():
    from click.testing import CliRunner
    from vnfchain.cli import cli, commands  # noqa: F401
    text = " ".join(CliRunner().invoke(cli, ["functions", "dpi"]).output.split())
    for cause in UNREADABLE:
        assert f"unreadable_{cause}" in text or cause in text
    assert "RFC 9112 3.2.2" in text and "post-quantum" in text and "unreadable: {tls: match}" in text
