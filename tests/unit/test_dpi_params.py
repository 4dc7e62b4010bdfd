"""DPI parameters: limits are clear errors that name the limit and the fix
(with the YAML line), never a traceback; the DPI table's layout."""
from __future__ import annotations

import pytest

from vnfchain import Chain
from vnfchain.dpi import synthetic
from vnfchain.errors import SpecError
from vnfchain.functions import dpi


def load(sigs, max_scan=256):
    return Chain.from_yaml_text(synthetic.chain_yaml("dpilimits", sigs, max_scan))


def test_too_many_contents_in_one_signature():
    sig = {"id": 1, "content": [f"c{i:03d}" for i in range(65)], "action": "drop"}
    with pytest.raises(SpecError, match="65 contents in one signature; it takes up to 64"):
        load([sig])


def test_a_table_over_the_limit_names_it_and_the_fix(monkeypatch, tmp_path):
    monkeypatch.setattr(dpi, "MAX_TABLE_BYTES", 1 << 20)
    path = tmp_path / "big.yaml"
    path.write_text(synthetic.chain_yaml("dpilimits", synthetic.signatures(2000), 256))
    with pytest.raises(SpecError) as info:
        Chain.from_yaml(path)
    message = str(info.value)
    assert message.startswith(f"{path}:4: function 'dpi'")
    assert "2000 contents compile to" in message and "over the 1 MiB limit of the DPI table" in message
    assert "use fewer or shorter contents" in message


def test_ten_thousand_contents_fit_in_one_power_of_two_map_value():
    params = load(synthetic.signatures(10_000)).spec.function("dpi").params
    automaton, contents = dpi._compiled(params)
    size = dpi._table_size(automaton)
    assert len(contents) == 10_000
    assert automaton.classes < 80                # text contents, nocase letters folded: not 256
    assert size & (size - 1) == 0 and size >= automaton.states * automaton.classes > size // 2


def test_a_small_table_has_room_to_grow():
    params = load([{"id": 1, "content": "GET ", "action": "drop"}]).spec.function("dpi").params
    automaton, _ = dpi._compiled(params)
    size = dpi._table_size(automaton)
    assert size & (size - 1) == 0 and size >= 2 * automaton.states * automaton.classes


def test_a_window_past_the_last_payload_byte_is_an_error_naming_the_signature():
    # offset 65535 with a 2-byte content would end at byte 65536: once a traceback in populate
    with pytest.raises(SpecError, match="signature 7: offset 65535 \\+ content length 2 ends past payload "
                                        "byte 65535.*lower the offset"):
        load([{"id": 7, "content": "ab", "offset": 65535, "action": "drop"}])
    load([{"id": 7, "content": "a", "offset": 65535, "action": "drop"}])   # the last byte itself is fine


def test_a_depth_shorter_than_the_content_is_an_error():
    with pytest.raises(SpecError, match="signature 3: depth 2 is shorter than its 4-byte content, so it can "
                                        "never match; make depth at least 4"):
        load([{"id": 3, "content": ["ab", "GET "], "depth": 2, "action": "drop"}])


def test_a_rules_file_window_error_names_the_line(tmp_path):
    rules = tmp_path / "r.rules"
    rules.write_text('alert tcp any any -> any any (content:"abcd"; depth:3; sid:9;)\n')
    with pytest.raises(SpecError, match="line 1: .*signature 9: depth 3 is shorter"):
        Chain.from_yaml_text(f"name: dpiw\nfunctions:\n  dpi:\n    type: dpi\n    rules_file: {rules}\n"
                             "    next: out\n  out: {type: counter, verdict: tx}\n")


def test_a_signature_that_starts_past_max_scan_is_warned_about_with_its_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(synthetic.chain_yaml("dpiw", [{"id": 1, "content": "GET ", "action": "drop"},
                                                 {"id": 2, "content": "abc", "offset": 62, "action": "drop"}], 64))
    warnings = Chain.from_yaml(path).spec.warnings
    assert len(warnings) == 1
    assert "signature 2 can never match: its content ends at payload byte 65, past max_scan 64" in warnings[0]
    assert warnings[0].startswith(f"{path}:")
    assert not load([{"id": 2, "content": "abc", "offset": 61, "action": "drop"}], 64).spec.warnings
