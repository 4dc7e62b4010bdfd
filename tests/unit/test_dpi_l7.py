"""App rules of the dpi function without BPF: their validation, and the trie
the kernel looks names up in, held to the plain definition (every rule whose
pattern matches, read off the longest matching key alone)."""
from __future__ import annotations

import random

import pytest
from pydantic import ValidationError

from vnfchain.dpi.l7 import (KINDS, NAME_MAX, TRUNCATED, AppRule, Request, first_app_rule, name_key,
                             path_key, trie_entries)
from vnfchain.functions.dpi import DpiParams


@pytest.mark.parametrize("rule,error", [
    ({"app": "http", "sni": "a.example", "action": "drop"}, "'sni' is for app: tls"),
    ({"app": "dns", "method": ["GET"], "action": "drop"}, "method and path are for app: http"),
    ({"app": "tls", "action": "label"}, "action: label needs label"),
    ({"app": "dns", "qname": "a..example", "action": "drop"}, "not a host name"),
    ({"app": "dns", "qname": "a.*.example", "action": "drop"}, "not a host name"),
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
