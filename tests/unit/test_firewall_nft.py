"""The nftables translation, as text: one expectation per field and per
semantic choice documented in vnfchain/firewall/nft.py. That the kernel loads
it, and judges packets as first_match does, is tests/netns/test_firewall_oracle.py."""
from __future__ import annotations

import pytest

from vnfchain.firewall import nft
from vnfchain.firewall.rules import Rule


def text(index: int = 0, **spec) -> str:
    return nft.rule_text(Rule.model_validate({"action": "allow", **spec}), index)


@pytest.mark.parametrize("spec, expected", [
    ({}, 'accept comment "rule 0"'),
    ({"action": "drop", "src": ["198.18.0.0/16", "198.18.1.0/24", "198.19.0.0/16"]},
     'meta nfproto ipv4 ip saddr 198.18.0.0/15 drop comment "rule 0"'),            # collapsed
    ({"dst": ["2001:db8::1", "2001:db8:1::/48"]},
     'meta nfproto ipv6 ip6 daddr { 2001:db8::1/128, 2001:db8:1::/48 } accept comment "rule 0"'),
    ({"proto": 132}, 'meta l4proto 132 accept comment "rule 0"'),
    ({"proto": "icmpv6"}, 'meta nfproto ipv6 meta l4proto 58 accept comment "rule 0"'),   # IPv6 only
    ({"proto": "icmp"}, 'meta nfproto ipv4 meta l4proto 1 accept comment "rule 0"'),
    ({"iif": "eth0"}, 'iifname "eth0" accept comment "rule 0"'),
    ({"ct": ["established", "related"]}, 'ct state { established, related } accept comment "rule 0"'),
    ({"action": "goto", "label": "web"}, 'meta mark set 0x76630001 accept comment "rule 0"'),
])
def test_field_translation(spec, expected):
    assert text(**spec) == expected


def test_transport_fields_are_guarded_against_later_fragments():
    v4 = text(src="198.18.0.0/24", proto="tcp", dport=[80, "8000-8080", "8050-9000", 9001], flags="syn,!ack")
    assert v4 == ('meta nfproto ipv4 ip saddr 198.18.0.0/24 ip frag-off & 0x1fff == 0 meta l4proto 6 '
                  'th dport { 80, 8000-9001 } tcp flags & 0x12 == 0x2 accept comment "rule 0"')
    v6 = text(proto="icmpv6", icmp_type="echo-request").splitlines()
    assert v6 == ['meta nfproto ipv6 exthdr frag missing meta l4proto 58 icmpv6 type 128 accept comment "rule 0"',
                  'meta nfproto ipv6 frag frag-off 0 meta l4proto 58 icmpv6 type 128 accept comment "rule 0"']
    either = text(3, proto="udp", sport=53).splitlines()
    assert [line.split(" meta l4proto")[0] for line in either] == [
        "meta nfproto ipv4 ip frag-off & 0x1fff == 0", "meta nfproto ipv6 exthdr frag missing",
        "meta nfproto ipv6 frag frag-off 0"]
    assert all(line.endswith('th sport 53 accept comment "rule 3"') for line in either)


def test_ruleset_counters_policy_marks_and_replace():
    rules = [Rule(action="goto", label="dns", proto="udp"), Rule(action="goto", label="web"),
             Rule(action="goto", label="dns")]
    assert nft.goto_marks(rules) == {"dns": 0x76630001, "web": 0x76630002}
    script = nft.ruleset(rules, "allow", counters=True, replace=True, hook="prerouting", priority=-5)
    assert script.splitlines() == [
        "add table inet vcfw", "delete table inet vcfw",
        "table inet vcfw {", "\tchain filter {",
        "\t\ttype filter hook prerouting priority -5; policy accept;",
        '\t\tmeta l4proto 17 counter meta mark set 0x76630001 accept comment "rule 0"',
        '\t\tcounter meta mark set 0x76630002 accept comment "rule 1"',
        '\t\tcounter meta mark set 0x76630001 accept comment "rule 2"',
        '\t\tcounter comment "default"', "\t}", "}"]


@pytest.mark.parametrize("call, message", [
    (lambda: nft.ruleset([], "reject"), "default action 'reject' must be allow or drop"),
    (lambda: nft.ruleset([], "drop", hook="ingress"), "hook 'ingress' must be one of"),
    (lambda: nft.rule_text(Rule(action="allow", iif='a"b'), 0), "contains '\"'"),
    (lambda: nft.rule_text(Rule(action="goto", label="web"), 0, marks={}), "goto label 'web' of rule 0 has no mark"),
])
def test_what_nft_cannot_say_is_an_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()
