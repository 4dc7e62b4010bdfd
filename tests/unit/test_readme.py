"""Every chain the README and examples/ show is one vnfchain accepts, as shown.

A README block that is a whole chain (it has ``name:``) is validated as it is;
one that shows a function or two (``fw: {type: firewall, ...}``) is validated
inside a chain whose other functions, the ones its ``next`` names, are counters.
The README's Python example runs in tests/netns/test_readme_e2e.py."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from tests.readme_blocks import blocks
from vnfchain import Chain

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))


def as_chain(text: str) -> str:
    doc = yaml.safe_load(text)
    if "name" in doc:
        return text
    named = set(doc)
    wanted = {target for body in doc.values() for target in _successors(body.get("next"))} - named
    stubs = "".join(f"  {name}: {{type: counter}}\n" for name in sorted(wanted))
    body = "".join(f"  {line}\n" for line in text.splitlines())
    return f"name: readme\nfunctions:\n{body}{stubs}"


def _successors(nxt) -> list[str]:
    if isinstance(nxt, str):
        return [nxt]
    return list(nxt.values()) if isinstance(nxt, dict) else []


@pytest.mark.parametrize("text", blocks("yaml"), ids=lambda t: t.split(":")[0])
def test_every_readme_chain_validates(tmp_path, text):
    (tmp_path / "local.rules").write_text('alert tcp any any -> any 22 (content:"SSH-1"; sid:40;)\n')
    path = tmp_path / "chain.yaml"
    path.write_text(as_chain(text))
    chain = Chain.from_yaml(path)
    assert chain.spec.functions


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_validates(path):
    assert Chain.from_yaml(path).spec.functions


def test_the_python_example_is_python():
    (code,) = blocks("python")
    ast.parse(code)
