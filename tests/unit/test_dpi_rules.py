"""Suricata-style rules files: the supported subset becomes dpi signatures;
everything else is an error naming the file and the rule's line."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from vnfchain import Chain
from vnfchain.dpi.rules import RuleError, rules
from vnfchain.errors import SpecError

RULES = r'''
# web rules
alert tcp any any -> any 80 (msg:"passwd"; content:"/etc/passwd"; sid:100; rev:2;)
drop tcp any any -> any any (msg:"sqli"; content:"union"; nocase; depth:64; content:"select"; nocase; depth:64; sid:101;)
pass udp any any -> any 53 (content:"|00 01|"; offset:2; \
    depth:2; sid:102; classtype:misc;)
alert ip any any -> any any (msg:"a \"quoted\"\; semicolon"; content:"a\;b"; sid:103;)
'''


def test_the_supported_subset_becomes_signatures():
    assert rules(RULES) == [
        (3, {"action": "alert", "proto": "tcp", "dport": 80, "id": 100, "content": "/etc/passwd"}),
        (4, {"action": "drop", "proto": "tcp", "id": 101, "content": ["union", "select"], "nocase": True,
             "depth": 64}),
        (5, {"action": "pass", "proto": "udp", "dport": 53, "id": 102, "content": "|00 01|", "offset": 2,
             "depth": 2}),
        (7, {"action": "alert", "id": 103, "content": "a;b"}),
    ]


@pytest.mark.parametrize("rule,words", [
    ('reject tcp any any -> any 80 (content:"x"; sid:1;)', "action 'reject' is not supported"),
    ('alert http any any -> any 80 (content:"x"; sid:1;)', "protocol 'http' is not supported"),
    ('alert tcp $HOME_NET any -> any 80 (content:"x"; sid:1;)', "source address '$HOME_NET'"),
    ('alert tcp any any -> any $HTTP_PORTS (content:"x"; sid:1;)', "destination port '$HTTP_PORTS'"),
    ('alert tcp any any <> any 80 (content:"x"; sid:1;)', "direction '<>'"),
    ('alert tcp any any -> any 80 (content:"x"; pcre:"/x/"; sid:1;)', "option 'pcre' is not supported"),
    ('alert tcp any any -> any 80 (flow:established; content:"x"; sid:1;)', "option 'flow' is not supported"),
    ('alert tcp any any -> any 80 (content:!"x"; sid:1;)', "negated contents"),
    ('alert tcp any any -> any 80 (content:"x"; nocase; content:"y"; sid:1;)', "different nocase/offset/depth"),
    ('alert tcp any any -> any 80 (content:"x";)', "no sid"),
    ('alert tcp any any -> any 80 (msg:"x"; sid:1;)', "no content"),
    ('alert tcp any any -> any 80 (nocase; content:"x"; sid:1;)', "nocase must follow a content"),
    ('alert tcp any any -> any 80 (content:"x"; depth:many; sid:1;)', "depth takes a number"),
    ('alert tcp any any -> any 80 content:"x"; sid:1;', "not a rule"),
])
def test_unsupported_rules_name_their_line(rule, words):
    with pytest.raises(RuleError, match=f"^line 3: .*{words.replace('$', '[$]')}"):
        rules(f"# one\n\n{rule}\n")


def chain(tmp_path: Path, rules_text: str, extra: str = "") -> Path:
    (tmp_path / "web.rules").write_text(rules_text)
    path = tmp_path / "chain.yaml"
    path.write_text(f"name: rules\nfunctions:\n  dpi:\n    type: dpi\n{extra}    rules_file: web.rules\n")
    return path


def test_rules_file_is_relative_to_the_chain_file(tmp_path, monkeypatch):
    monkeypatch.chdir("/")
    params = Chain.from_yaml(chain(tmp_path, RULES)).spec.function("dpi").params
    assert [s.id for s in params.all_signatures] == [100, 101, 102, 103]
    assert params.rules_file == str(tmp_path / "web.rules")


def test_rules_follow_the_signatures(tmp_path):
    extra = '    signatures: [{id: 1, content: "x", action: drop}]\n'
    params = Chain.from_yaml(chain(tmp_path, RULES, extra)).spec.function("dpi").params
    assert [s.id for s in params.all_signatures] == [1, 100, 101, 102, 103]


@pytest.mark.parametrize("rules_text,words", [
    ('alert tcp any any -> any 80 (content:"x"; sid:1;)\nalert tcp any any -> any 80 (flow:to_server; sid:2;)\n',
     r"web.rules, line 2: option 'flow' is not supported"),
    ('alert tcp any any -> any 80 (content:"|zz|"; sid:1;)\n', r"web.rules, line 1: content: content '\|zz\|'.* is not hex bytes"),
    ('alert tcp any any -> any 80 (content:"x"; sid:0;)\n', r"web.rules, line 1: sid: Input should be greater than or equal to 1"),
    ('alert tcp any any -> any 80 (content:"x"; sid:1;)\nalert udp any any -> any 9 (content:"y"; sid:1;)\n',
     "1 is used twice"),
    ("# nothing\n", "no signatures"),
])
def test_rule_errors_name_the_chain_line_and_the_rule_line(tmp_path, rules_text, words):
    path = chain(tmp_path, rules_text)
    with pytest.raises(SpecError, match=f"^{path}:3: function 'dpi' \\(dpi\\): .*{words}"):
        Chain.from_yaml(path)


def test_a_missing_rules_file(tmp_path):
    path = tmp_path / "chain.yaml"
    path.write_text("name: rules\nfunctions:\n  dpi:\n    type: dpi\n    rules_file: nope.rules\n")
    with pytest.raises(SpecError, match="nope.rules: No such file or directory; check the path"):
        Chain.from_yaml(path)


def test_the_rules_are_read_once_and_kept_with_the_parameters(tmp_path):
    from vnfchain.chain.model import spec_from_dict, spec_to_dict
    path = chain(tmp_path, RULES)
    spec = Chain.from_yaml(path).spec
    (tmp_path / "web.rules").write_text('alert tcp any any -> any 80 (content:"x"; sid:5;)\n')
    edited = Chain.from_yaml(path).spec
    assert spec.function("dpi").params != edited.function("dpi").params
    (tmp_path / "web.rules").unlink()
    again = spec_from_dict(spec_to_dict(spec))         # as a later process reads the record
    assert [s.id for s in again.function("dpi").params.all_signatures] == [100, 101, 102, 103]


def test_a_rules_file_that_is_not_text_or_too_large(tmp_path, monkeypatch):
    from vnfchain import yamlio
    path = tmp_path / "chain.yaml"
    path.write_text("name: rules\nfunctions:\n  dpi:\n    type: dpi\n    rules_file: web.rules\n")
    (tmp_path / "web.rules").write_bytes(b'alert tcp any any -> any 80 (content:"x"; sid:5;)\n\xff\xfe\n')
    with pytest.raises(SpecError, match="web.rules: line 2 is not UTF-8 text .*save the file as UTF-8"):
        Chain.from_yaml(path)
    (tmp_path / "web.rules").write_text("# padding\n" * 20)
    monkeypatch.setattr(yamlio, "MAX_BYTES", 100)    # the chain file is smaller, the rules larger
    with pytest.raises(SpecError, match="web.rules is larger than .* MiB; split it or trim it"):
        Chain.from_yaml(path)


@pytest.mark.parametrize("make", [os.mkfifo, lambda p: os.symlink("/dev/zero", p)], ids=["fifo", "device"])
def test_a_rules_file_that_is_no_regular_file_is_refused_at_once(tmp_path, make):
    """A chain file read as untrusted input may name a FIFO (which nobody
    writes: `validate` would wait forever) or a device."""
    import time
    path = tmp_path / "chain.yaml"
    path.write_text("name: rules\nfunctions:\n  dpi:\n    type: dpi\n    rules_file: web.rules\n")
    make(str(tmp_path / "web.rules"))
    started = time.monotonic()
    with pytest.raises(SpecError, match="web.rules is not a regular file; give the path of a rules file"):
        Chain.from_yaml(path)
    assert time.monotonic() - started < 1
