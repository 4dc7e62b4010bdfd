"""The firewall rule model: every validation message a user can hit, shadowing,
and the compiled bit-vector classifier held equal to the reference matcher
(``first_match``) on random rulesets and packets, IPv4 and IPv6, fragments,
non-TCP and ICMP packets, interfaces and conntrack states.

No root, no kernel: the same property against nftables is tests/netns/test_firewall_oracle.py.
"""
from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from tests.firewall_oracle import (
    DrawPick,
    RandomPick,
    Wire,
    as_later_fragment,
    describe,
    packet_lists,
    random_packet,
    random_packets,
    random_rule,
    random_rules,
    rule_lists,
)
from vnfchain.firewall.lbvs import compile_rules
from vnfchain.firewall.rules import Packet, Rule, covers, first_match, matches, shadowed

IFACES = ("eth0", "eth1", None)   # None: a packet whose ingress the firewall does not know


# --- validation: each message names the problem and the fix ----------------------------

@pytest.mark.parametrize("spec, message", [
    ({"src": "198.18.300.0/24"}, "'198.18.300.0/24' is not a CIDR; write 198.18.0.0/24"),
    ({"dst": ["198.18.0.0/24", "nonsense"]}, "'nonsense' is not a CIDR"),
    ({"src": "2001:db8::/129"}, "is not a CIDR"),
    ({"proto": "tcp", "dport": 70000}, "port range 70000-70000 must lie within 0-65535"),
    ({"proto": "tcp", "dport": "8080-80"}, "port range 8080-80 must lie within 0-65535, low end first"),
    ({"proto": "tcp", "sport": "http"}, "'http' is not a port; write 80"),
    ({"proto": "tcp", "sport": "1-x"}, "'1-x' is not a port range; write it as 8000-8080"),
    ({"proto": "udp", "dport": True}, "True is not a port"),
    ({"proto": "tcpp"}, "unknown protocol 'tcpp'; use tcp, udp, icmp, icmpv6 or a number 0-255"),
    ({"proto": 256}, "unknown protocol 256"),
    ({"proto": True}, "unknown protocol True"),
    ({"proto": "tcp", "flags": "syn,fin,sin"}, "unknown TCP flag 'sin'; flags are fin, syn"),
    ({"flags": "syn"}, "flags need proto: tcp"),
    ({"proto": "udp", "flags": "syn"}, "flags need proto: tcp"),
    ({"dport": 80}, "sport/dport need proto: tcp or udp"),
    ({"proto": "icmp", "sport": 1}, "sport/dport need proto: tcp or udp"),
    ({"icmp_type": 8}, "icmp_type needs proto: icmp or icmpv6"),
    ({"proto": "tcp", "icmp_type": 8}, "icmp_type needs proto: icmp or icmpv6"),
    ({"proto": "icmp", "icmp_type": "echo-request-please"}, "unknown ICMP type 'echo-request-please'; known: echo-reply"),
    ({"proto": "icmpv6", "icmp_type": 300}, "icmp_type must be 0-255"),
    ({"src": "198.18.0.0/24", "dst": "2001:db8::/32"}, "src and dst mix IPv4 and IPv6"),
    ({"src": ["198.18.0.0/24", "2001:db8::/32"]}, "src and dst mix IPv4 and IPv6"),
    ({"proto": "icmp", "dst": "2001:db8::/32"}, "proto icmp with IPv6 addresses never matches"),
    ({"proto": "icmpv6", "src": "198.18.0.0/24"}, "proto icmpv6 with IPv4 addresses never matches"),
    ({"ct": ["new", "closing"]}, "unknown conntrack state 'closing'; states are new, established"),
    ({"iif": "has space"}, "iif"),
    ({"iif": "a" * 16}, "iif"),
    ({"src": []}, "an empty list matches no packet; leave the key out"),
    ({"proto": "tcp", "dport": []}, "an empty list matches no packet"),
    ({"ct": []}, "an empty list matches no packet"),
], ids=lambda v: str(v)[:40] if isinstance(v, dict) else None)
def test_invalid_rule_says_why(spec, message):
    with pytest.raises(ValidationError, match=re.escape(message)):
        Rule.model_validate({"action": "allow", **spec})


def test_goto_and_label_go_together():
    with pytest.raises(ValidationError, match="action: goto needs label: NAME"):
        Rule(action="goto")
    with pytest.raises(ValidationError, match="only goto takes a label"):
        Rule(action="drop", label="web")
    with pytest.raises(ValidationError, match="label"):
        Rule(action="goto", label="Web")   # labels are lower-case identifiers
    assert Rule(action="goto", label="web").label == "web"


def test_valid_rule_is_normalised_and_round_trips():
    rule = Rule(action="allow", src="198.18.1.7/24", proto="TCP", sport=["1024-65535", 53], dport="80",
                flags="syn,!ack", comment="web")
    assert [str(n) for n in rule.src] == ["198.18.1.0/24"]      # host bits masked
    assert (rule.proto, rule.sport, rule.dport) == (6, ((1024, 65535), (53, 53)), ((80, 80),))
    assert rule.flags == (0x12, 0x02)
    assert rule.family == 4
    assert Rule.model_validate(rule.model_dump()) == rule
    assert Rule(action="allow", proto="icmpv6", icmp_type="echo-request").icmp_type == 128
    assert Rule(action="allow", proto="icmp", icmp_type="8").icmp_type == 8
    assert Rule(action="allow", proto="icmpv6").family == 6
    assert Rule(action="allow", proto="udp").family is None


# --- shadowing ----------------------------------------------------------------------

def _rules(*specs) -> list[Rule]:
    return [Rule.model_validate(s) for s in specs]


@pytest.mark.parametrize("specs, pairs", [
    ([{"action": "allow", "proto": "tcp"}, {"action": "drop", "proto": "tcp", "dport": 80}], [(0, 1)]),
    ([{"action": "drop", "proto": "tcp", "dport": 80}, {"action": "allow", "proto": "tcp"}], []),
    ([{"action": "allow", "src": "198.18.0.0/16"}, {"action": "drop", "src": "198.18.4.0/24", "proto": "udp"}],
     [(0, 1)]),
    ([{"action": "allow", "src": "198.18.4.0/24"}, {"action": "drop", "src": "198.18.0.0/16"}], []),
    ([{"action": "allow", "src": "198.18.0.0/16"}, {"action": "drop", "src": "2001:db8::/32"}], []),
    ([{"action": "allow", "proto": "tcp", "dport": "1-1000"}, {"action": "drop", "proto": "tcp", "dport": [22, 80]}],
     [(0, 1)]),
    ([{"action": "allow", "proto": "tcp", "dport": "1-1000"}, {"action": "drop", "proto": "tcp", "dport": [22, 8080]}],
     []),
    ([{"action": "allow", "proto": "tcp", "flags": "syn"}, {"action": "drop", "proto": "tcp", "flags": "syn,!ack"}],
     [(0, 1)]),
    ([{"action": "allow", "proto": "tcp", "flags": "syn,!ack"}, {"action": "drop", "proto": "tcp", "flags": "syn"}],
     []),
    ([{"action": "allow", "proto": "icmp"}, {"action": "drop", "proto": "icmp", "icmp_type": 8},
      {"action": "drop", "proto": "icmpv6", "icmp_type": 128}], [(0, 1)]),
    ([{"action": "allow", "ct": ["established", "related"]}, {"action": "drop", "ct": "established"},
      {"action": "drop", "ct": ["new", "established"]}], [(0, 1)]),
    ([{"action": "allow", "iif": "eth0"}, {"action": "drop", "iif": "eth0", "proto": "udp"},
      {"action": "drop", "iif": "eth1"}], [(0, 1)]),
    ([{"action": "allow", "proto": "udp"}, {"action": "drop", "proto": "udp"}, {"action": "drop", "proto": "udp"}],
     [(0, 1), (0, 2)]),
])
def test_shadowed_names_the_earlier_rule(specs, pairs):
    assert shadowed(_rules(*specs)) == pairs


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_covers_is_sound(data):
    """If ``covers(a, b)``, no packet matches b without matching a. ``a`` is
    ``b`` with some fields left out (so it mostly covers b), or a random rule."""
    pick = DrawPick(data.draw)
    b = random_rule(pick, with_ct=True, ifaces=IFACES[:2])
    if pick.chance(0.7):
        spec = b.model_dump(exclude_none=True, exclude_defaults=True)
        kept = {k: v for k, v in spec.items() if k in ("action", "label") or not pick.chance(0.4)}
        try:
            a = Rule.model_validate(kept)
        except ValidationError:       # e.g. ports kept without their proto
            a = Rule.model_validate(spec)
        assert covers(a, b), (a, b)   # a generalisation of b covers it
    else:
        a = random_rule(pick, with_ct=True, ifaces=IFACES[:2])
    if not covers(a, b):
        return
    for wire in data.draw(packet_lists([b], max_size=10, with_ct=True, ifaces=IFACES)):
        assert not matches(b, wire.packet) or matches(a, wire.packet), (a, b, wire)


# --- the compiled classifier is the reference matcher -----------------------------------

PACKET_KW = {"families": (4, 6), "ifaces": IFACES, "with_ct": True}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.data_too_large])
@given(data=st.data())
@example(data=None)  # the hand-picked cases below, always run
def test_classifier_is_first_match(data):
    if data is None:
        rules, packets = _HAND_RULES, _HAND_PACKETS
    else:
        rules = data.draw(rule_lists(max_size=25, ifaces=IFACES[:2], with_ct=True), label="rules")
        packets = data.draw(packet_lists(rules, max_size=25, **PACKET_KW), label="packets")
    classifier = compile_rules(rules)
    for wire in packets:
        expected = first_match(rules, wire.packet)
        got = classifier.match(wire.packet)
        assert got == expected, (f"{wire}: classifier says {describe(rules, got)}, "
                                 f"first_match says {describe(rules, expected)}")


_HAND_RULES = _rules(
    {"action": "drop", "proto": "tcp", "dport": 22},
    {"action": "allow", "proto": "icmp", "icmp_type": "echo-request"},
    {"action": "goto", "label": "web", "proto": "tcp", "dst": "2001:db8::/64", "dport": [80, 443]},
    {"action": "allow", "proto": "icmpv6"},
    {"action": "drop", "proto": "tcp", "flags": "syn,!ack", "iif": "eth1"},
    {"action": "allow", "ct": ["established", "related"]},
    {"action": "drop", "proto": 47},
)
_HAND_PACKETS = [
    # a later fragment of TCP to port 22 has no port: only the proto-only rules can match
    as_later_fragment(random_packet(RandomPick(1), _HAND_RULES[:1], families=(4,))),
    random_packet(RandomPick(2), _HAND_RULES, families=(4,)),
]
_HAND_PACKETS += [
    Wire(Packet(4, "198.18.0.1", "198.18.0.2", 58)),              # icmpv6 number in IPv4
    Wire(Packet(6, "2001:db8::1", "2001:db8::2", 1, icmp_type=None)),  # icmp number in IPv6
    Wire(Packet(6, "2001:db8::1", "2001:db8::2", 58, icmp_type=135, ct="new")),
    Wire(Packet(4, "198.18.0.1", "198.18.0.2", 6, 1000, 22, 0x02, iif="eth1")),
    Wire(Packet(4, "198.18.0.1", "198.18.0.2", 6, 1000, 23, 0x02, iif="eth1")),
    Wire(Packet(4, "198.18.0.1", "198.18.0.2", 17, ct="related")),
    Wire(Packet(4, "198.18.0.1", "198.18.0.2", 47, ct="established")),
]


def test_hand_picked_verdicts():
    first = [first_match(_HAND_RULES, w.packet) for w in _HAND_PACKETS[2:]]
    assert first == [None, None, 3, 0, 4, 5, 5]


@pytest.mark.parametrize("n, seed", [(300, 1), (1000, 2)])
def test_classifier_is_first_match_on_long_lists(n, seed):
    rules = random_rules(RandomPick(seed), n, ifaces=IFACES[:2], with_ct=True, specific=1 - 20 / n)
    classifier = compile_rules(rules)
    packets = random_packets(RandomPick(seed + 100), rules, 800, **PACKET_KW)
    hits = set()
    for wire in packets:
        expected = first_match(rules, wire.packet)
        hits.add(expected)
        assert classifier.match(wire.packet) == expected, wire
    assert len(hits) > 50  # the packets reach far into the list, not just its first rules
