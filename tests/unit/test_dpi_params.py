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
