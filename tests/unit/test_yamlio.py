"""Hostile YAML is refused quickly, with file:line, through every way in: the Python
API, `vnfchain validate`, and test-bed topologies."""
from __future__ import annotations

import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
from click.testing import CliRunner

import vnfchain.cli.commands  # noqa: F401  (registers the commands)
from vnfchain import Chain, yamlio
from vnfchain.cli import cli
from vnfchain.dpi.synthetic import chain_yaml, signatures
from vnfchain.errors import SpecError, TestbedSpecError
from vnfchain.testbed import load_topology

REPO = Path(__file__).resolve().parents[2]


def billion_laughs(levels: int = 9) -> str:
    """The classic: 9 levels of 9 aliases each, 10^9 strings from under 1 KB."""
    lines = ['a0: &a0 "lol"']
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]")
    return "name: bomb\n" + "\n".join(lines) + "\nfunctions: {c: {type: counter}}\n"


def wide_alias() -> str:
    """One anchor of 2,000 values repeated 1,000 times: 2 million values from 17 KB."""
    items = ", ".join(str(i) for i in range(2000))
    return f"name: bomb\nbig: &big [{items}]\nrepeat: [{', '.join(['*big'] * 1000)}]\n"


def write(tmp_path: Path, data, name: str = "chain.yaml") -> Path:
    path = tmp_path / name
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def refused(path: Path) -> tuple[SpecError, float, int]:
    """The error of Chain.from_yaml(path), the seconds it took and the peak bytes it held."""
    tracemalloc.start()
    started = time.perf_counter()
    try:
        Chain.from_yaml(path)
    except SpecError as exc:
        error = exc
    else:
        pytest.fail(f"{path} was accepted")
    finally:
        took = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return error, took, peak


@pytest.mark.parametrize("text", [billion_laughs(), wide_alias()], ids=["billion-laughs", "wide"])
def test_an_alias_bomb_is_refused_at_once_and_small(tmp_path, text):
    path = write(tmp_path, text)
    assert len(text) < 20_000
    error, took, peak = refused(path)
    assert str(error).startswith(f"{path}:")
    assert "aliases expand to more than 100,000 values" in str(error)
    assert took < 0.5, f"{took:.2f} s"
    assert peak < 2 << 20, f"{peak >> 10} KiB"   # expanded: gigabytes


def test_an_alias_bomb_through_the_cli_and_a_topology(tmp_path):
    path = write(tmp_path, billion_laughs())
    started = time.perf_counter()
    result = CliRunner().invoke(cli, ["validate", str(path)])
    assert time.perf_counter() - started < 1
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"error: {path}:") and "alias bomb" in result.output
    assert "Traceback" not in result.output

    with pytest.raises(TestbedSpecError) as info:
        load_topology(path)
    assert info.value.file == str(path) and "alias bomb" in info.value.reason


@pytest.mark.parametrize("text,line", [
    ("name: x\nfunctions: &a {c: *a}\n", 2),
    ("name: x\nlist: &b\n  - 1\n  - [*b]\n", 4),
])
def test_an_alias_inside_its_own_anchor_is_an_error(tmp_path, text, line):
    error, _, _ = refused(write(tmp_path, text))
    assert error.line == line
    assert "is inside the value of its own anchor" in error.reason


def test_nesting_deeper_than_the_limit_is_refused_without_a_crash(tmp_path):
    """200 KB of brackets crashed libyaml's composer (the interpreter's C stack)."""
    path = write(tmp_path, "name: x\nfunctions: " + "[" * 100_000 + "]" * 100_000 + "\n")
    child = subprocess.run([sys.executable, "-m", "vnfchain", "validate", str(path)],
                           capture_output=True, text=True, cwd=REPO, timeout=30)
    assert child.returncode == 2, child.stderr
    assert child.stderr.startswith(f"error: {path}:2: lists and mappings are nested more than "
                                   f"{yamlio.MAX_DEPTH} deep"), child.stderr


def test_nesting_up_to_the_limit_is_read(tmp_path):
    depth = yamlio.MAX_DEPTH
    data, _ = yamlio.loads("[" * depth + "1" + "]" * depth)
    for _ in range(depth):
        (data,) = data
    assert data == 1


def test_a_file_over_the_size_limit_is_refused_unread(tmp_path):
    path = tmp_path / "huge.yaml"
    with open(path, "wb") as f:
        f.truncate(yamlio.MAX_BYTES + 1)      # sparse: refused by its size alone
    error, took, _ = refused(path)
    assert error.file == str(path) and "larger than 16 MiB" in error.reason
    assert took < 0.1


def test_the_largest_real_chains_fit_under_the_size_limit(tmp_path):
    dpi = chain_yaml("dpi-10k", signatures(10_000), 256)
    assert len(dpi) < yamlio.MAX_BYTES / 16
    chain = Chain.from_yaml(write(tmp_path, dpi))
    assert len(chain.spec.function("dpi").params.signatures) == 10_000


@pytest.mark.parametrize("data,line", [
    (b"name: caf\xe9\nfunctions: {}\n", 1),                          # Latin-1
    (b"# chain\n\n" + "name: x\n".encode("utf-16"), 3),               # UTF-16 with its BOM
    (b"\x89PNG\r\n\x1a\n\x00\x00", 1),                                # not text at all
])
def test_a_file_that_is_not_utf8_names_the_file(tmp_path, data, line):
    path = write(tmp_path, data)
    error, _, _ = refused(path)
    assert (error.file, error.line) == (str(path), line)
    assert error.reason.startswith("not UTF-8 text (byte 0x") and "save it as UTF-8" in error.reason
    result = CliRunner().invoke(cli, ["validate", str(path)])
    assert result.exit_code == 2 and result.output.startswith(f"error: {path}:{line}: not UTF-8")


@pytest.mark.parametrize("text,line,reason", [
    ("name: x\nport: " + "9" * 5000 + "\n", 2, "cannot read the value '9999"),
    ("name: x\nwhen: 2024-13-40\n", 2, "month must be in 1..12"),
    ("name: x\n? [a, b]\n: 1\n", 2, "a mapping key must be a plain value"),
    ("name: x\nk: &k [1]\n*k : 2\n", 3, "a mapping key must be a plain value"),
    ("name: x\nd: &d {a: 1}\ne: {<<: *d}\n", 3, "merge keys (<<: *anchor) are not supported"),
    ("name: x\na: &a 1\nb: &a 2\n", 3, "anchor &a is defined twice"),
    ("name: x\na: *nowhere\n", 2, "alias *nowhere has no anchor"),
    ("name: x\n---\nname: y\n", 2, "more than one document"),
    ("name: x\nnote: a\x00b\n", 2, "character #x0000: control characters are not allowed"),
    ("name: x\nname: y\n", 2, "duplicate key 'name'"),
    ("name: x\nok: !!bool maybe\n", 2, "cannot read the value 'maybe'"),
    ("name: x\nwhen: !!timestamp soon\n", 2, "cannot read the value 'soon'"),
])
def test_malformed_values_are_errors_with_their_line(tmp_path, text, line, reason):
    path = write(tmp_path, text)
    error, _, _ = refused(path)
    assert (error.file, error.line) == (str(path), line), str(error)
    assert reason in error.reason


def test_aliases_within_the_limit_still_work_and_point_at_their_use(tmp_path):
    text = """\
name: shared
functions:
  steer:
    type: classify
    rules: &web
      - {proto: tcp, dport: 80, label: web}
    next: {web: again, default: again}
  again:
    type: classify
    rules: *web
"""
    chain = Chain.from_yaml(write(tmp_path, text))
    assert chain.spec.function("again").params == chain.spec.function("steer").params
    _, locator = yamlio.loads(text, "x.yaml")
    assert locator.line(("functions", "again", "rules", 0, "dport")) == 10
    assert locator.line(("functions", "steer", "rules", 0, "dport")) == 6


def test_explicit_tags_that_do_not_fit_their_value_are_errors_in_the_cli(tmp_path):
    path = write(tmp_path, "name: x\nfunctions:\n  c: {type: counter, verdict: !!bool perhaps}\n")
    result = CliRunner().invoke(cli, ["validate", str(path)])
    assert result.exit_code == 2 and result.output.startswith(f"error: {path}:3: cannot read the value 'perhaps'")


def test_a_long_sexagesimal_number_is_refused_before_it_is_computed(tmp_path):
    """YAML 1.1 reads 1:59:59 as a base-60 integer, one multiplication of an
    ever larger number per digit: a 450 KB one took 4 s, a 16 MiB one hours."""
    path = write(tmp_path, "name: x\nport: 1" + ":59" * 150_000 + "\n")
    error, took, _ = refused(path)
    assert (error.line, took < 1) == (2, True), (str(error), took)
    assert "over 4,300 digits" in error.reason
