"""The Aho–Corasick DFA finds exactly what plain search finds, overlapping and
nested patterns included, exact and nocase patterns mixed; byte classes shrink
its rows; contents parse Snort-style |hex| blocks."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vnfchain.dpi.automaton import build, naive_matches, parse_content

# a small alphabet makes overlaps, prefixes and nesting common
alphabet = st.sampled_from(b"abcAB\x00\xff")
pattern = st.binary(min_size=1, max_size=6).map(lambda b: bytes(b"abcAB"[x % 5] for x in b))
payload = st.lists(alphabet, max_size=80).map(bytes)


@settings(max_examples=300, deadline=None)
@given(patterns=st.lists(pattern, min_size=1, max_size=12), data=payload)
def test_dfa_finds_every_occurrence(patterns, data):
    found = sorted(build(patterns).scan(data), key=lambda m: (m[1], m[0]))
    assert found == sorted(naive_matches(patterns, data), key=lambda m: (m[1], m[0]))


@settings(max_examples=300, deadline=None)
@given(patterns=st.lists(st.tuples(pattern, st.booleans()), min_size=1, max_size=12), data=payload)
def test_dfa_with_nocase_patterns_finds_every_occurrence(patterns, data):
    contents, nocase = [p for p, _ in patterns], [n for _, n in patterns]
    found = sorted(build(contents, nocase).scan(data), key=lambda m: (m[1], m[0]))
    assert found == sorted(naive_matches(contents, data, nocase), key=lambda m: (m[1], m[0]))


def test_nocase_folds_letters_only():
    dfa = build([b"get /a", b"Get"], [True, False])
    assert dfa.scan(b"GeT /A") == [(0, 5)]
    assert dfa.scan(b"Get /a") == [(1, 2), (0, 5)]
    assert dfa.scan(b"GET _a") == []            # '/' is not '_' whatever the case (0x2f vs 0x5f)


def test_byte_classes_shrink_rows():
    dfa = build([b"abc", b"xyz"], [True, False])
    # a/A, b/B, c/C, x, y, z, and everything else
    assert dfa.classes == 7
    assert dfa.byte_class[ord("a")] == dfa.byte_class[ord("A")] != dfa.byte_class[ord("X")]
    assert len(dfa.table) == dfa.states * 7


def test_overlapping_and_nested_patterns():
    patterns = [b"he", b"she", b"his", b"hers"]
    found = set(build(patterns).scan(b"ushers"))
    assert found == {(1, 3), (0, 3), (3, 5)}   # she, he (inside she), hers


def test_a_pattern_at_the_end_of_the_data():
    assert build([b"end"]).scan(b"the end") == [(0, 6)]


@pytest.mark.parametrize("text,expected", [
    ("GET ", b"GET "),
    ("|0d 0a|", b"\r\n"),
    ("a|41|b", b"aAb"),
    ("|de ad be ef|tail", b"\xde\xad\xbe\xeftail"),
])
def test_contents_parse(text, expected):
    assert parse_content(text) == expected


@pytest.mark.parametrize("text,words", [
    ("abc|0d", "not closed"),
    ("|zz|", "not hex bytes"),
    ("|0d0|", "not hex bytes"),
    ("", "empty"),
])
def test_bad_contents_say_why(text, words):
    with pytest.raises(ValueError, match=words):
        parse_content(text)


def test_state_limit_is_a_clear_error():
    with pytest.raises(ValueError, match="automaton states"):
        build([bytes([i]) * 10 for i in range(50)], max_states=100)
