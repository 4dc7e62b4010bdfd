"""The chain commands a user runs without root: functions, validate, render, graph,
and deploy refusing an invalid chain before it touches the machine."""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

import vnfchain.cli.commands  # noqa: F401  (registers the commands)
from vnfchain.cli import cli

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "pvp-forward.yaml"
WIDE = {"COLUMNS": "200"}  # keep rich from wrapping table cells mid-word

# line 5 names a function that does not exist
BROKEN = """\
name: vcunit-broken
functions:
  a:
    type: counter
    next: nowhere
"""


def invoke(*args, env=None):
    return CliRunner().invoke(cli, [str(a) for a in args], env={**WIDE, **(env or {})})


def write(tmp_path: Path, text: str, name: str = "chain.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def long_chain(n: int) -> str:
    fns = "".join(f"  c{i}: {{type: counter, next: c{i + 1}}}\n" for i in range(n - 1))
    return f"name: long\nfunctions:\n{fns}  c{n - 1}: {{type: counter}}\n"


def assert_clean_error(result, code: int = 2):
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    assert result.output.startswith("error: "), result.output


# -- functions ------------------------------------------------------------------------------

def test_functions_lists_the_types():
    result = invoke("functions")
    assert result.exit_code == 0, result.output
    for name in ("counter", "forward", "classify"):
        assert re.search(rf"^\s*{name}\s+\S", result.output, re.MULTILINE), result.output
    assert "bpf_fib_lookup" in result.output


def test_functions_classify_shows_nested_parameters():
    result = invoke("functions", "classify")
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line for line in result.output.splitlines() if line.strip()}
    for param in ("rules", "rules[].proto", "rules[].dport", "rules[].label"):
        assert param in rows, result.output
    assert "destination port" in rows["rules[].dport"]
    assert "required" in rows["rules[].label"]
    assert "list[" in rows["rules"]          # the type shows, not eaten as rich markup
    assert "next" in result.output


def test_functions_counter_shows_its_parameter_and_default():
    result = invoke("functions", "counter")
    assert result.exit_code == 0, result.output
    assert re.search(r"^\s*verdict\s.*'continue'", result.output, re.MULTILINE), result.output


def test_functions_unknown_type():
    result = invoke("functions", "nope")
    assert_clean_error(result)
    assert "unknown function type 'nope'" in result.output
    assert "classify, counter, dpi, firewall, forward, loadbalancer, nat" in result.output


# -- validate -------------------------------------------------------------------------------

def test_validate_ok():
    result = invoke("validate", EXAMPLE)
    assert result.exit_code == 0, result.output
    assert "ok: chain pvp-edge: 4 function(s), entry 'ingress'" in result.output
    assert "longest path 4" in result.output


def test_validate_error_names_file_and_line(tmp_path):
    path = write(tmp_path, BROKEN)
    result = invoke("validate", path)
    assert_clean_error(result)
    assert f"error: {path}:5: function 'a': next names 'nowhere'" in result.output


def test_validate_yaml_syntax_error(tmp_path):
    path = write(tmp_path, BROKEN.replace("    next: nowhere", "   next: nowhere"))
    result = invoke("validate", path)
    assert_clean_error(result)
    assert f"{path}:5: not valid YAML" in result.output


def test_validate_missing_file(tmp_path):
    result = invoke("validate", tmp_path / "absent.yaml")
    assert_clean_error(result)
    assert "does not exist" in result.output


def test_validate_needs_a_file():
    result = invoke("validate")
    assert result.exit_code == 2
    assert "Missing argument" in result.output


# -- render ---------------------------------------------------------------------------------

def test_render_prints_the_c():
    result = invoke("render", EXAMPLE)
    assert result.exit_code == 0, result.output
    assert "int vc_entry(struct xdp_md *ctx)" in result.output
    assert "int vc_fn_steer(struct xdp_md *ctx)" in result.output
    assert "vc_progs.call(ctx, 1);  /* -> steer */" in result.output
    assert "#define VC_TAILCALL 1" in result.output


def test_render_fused():
    result = invoke("render", EXAMPLE, "--mode", "fused")
    assert result.exit_code == 0, result.output
    assert "#define VC_TAILCALL 0" in result.output
    assert "goto fn_steer;" in result.output
    assert "vc_progs.call(" not in result.output


def test_render_writes_files(tmp_path):
    out = tmp_path / "c"
    result = invoke("render", EXAMPLE, "-o", out)
    assert result.exit_code == 0, result.output
    source = (out / "chain.bpf.c").read_text()
    assert "int vc_entry(struct xdp_md *ctx)" in source
    assert (out / "lib" / "vc_chain.h").is_file()
    assert str(out / "chain.bpf.c") in result.output


def test_render_fused_override_lifts_the_tail_call_limit(tmp_path):
    path = write(tmp_path, long_chain(34))
    refused = invoke("render", path)
    assert_clean_error(refused)
    assert f"{path}:2:" in refused.output and "needs 34 tail calls" in refused.output
    fused = invoke("render", path, "--mode", "fused")
    assert fused.exit_code == 0, fused.output
    assert "goto fn_c33;" in fused.output


def test_render_of_an_invalid_chain(tmp_path):
    result = invoke("render", write(tmp_path, BROKEN))
    assert_clean_error(result)
    assert ":5:" in result.output


# -- graph ----------------------------------------------------------------------------------

def test_graph_dot_source(tmp_path):
    out = tmp_path / "chain.dot"
    result = invoke("graph", EXAMPLE, "-o", out)
    assert result.exit_code == 0, result.output
    dot = out.read_text()
    assert dot.startswith('digraph "pvp-edge" {')
    for edge in ('"(in)" -> "ingress";', '"ingress" -> "steer";', '"steer" -> "web" [label="web"];',
                 '"steer" -> "out";', '"web" -> "out";'):
        assert edge in dot, dot
    assert dot.count("->") == 5
    assert '"steer" [label="steer\\n(classify)"];' in dot


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz (dot) is not installed")
@pytest.mark.parametrize("suffix,magic", [("png", b"\x89PNG"), ("svg", b"<svg")])
def test_graph_picture(tmp_path, suffix, magic):
    out = tmp_path / f"chain.{suffix}"
    result = invoke("graph", EXAMPLE, "-o", out)
    assert result.exit_code == 0, result.output
    assert magic in out.read_bytes()[:400]


def test_graph_without_graphviz_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(vnfchain.cli.commands.shutil, "which", lambda name: None)
    out = tmp_path / "chain.png"
    result = invoke("graph", EXAMPLE, "-o", out)
    assert_clean_error(result, code=1)
    assert "apt-get install graphviz" in result.output and "chain.dot" in result.output
    assert not out.exists()


def test_graph_needs_an_output():
    result = invoke("graph", EXAMPLE)
    assert result.exit_code == 2
    assert "-o" in result.output


# -- deploy of an invalid chain touches nothing ----------------------------------------------

def test_deploy_of_an_invalid_chain_touches_nothing(tmp_path):
    bpffs, run = tmp_path / "bpffs", tmp_path / "run"
    path = write(tmp_path, BROKEN)
    result = invoke("deploy", path, env={"VNFCHAIN_BPFFS": str(bpffs), "VNFCHAIN_RUN": str(run)})
    assert_clean_error(result)
    assert f"{path}:5:" in result.output
    assert not bpffs.exists() and not run.exists()
    assert not os.path.exists("/sys/fs/bpf/vnfchain/vcunit-broken")
    assert not os.path.exists("/run/vnfchain/vcunit-broken.json")



@pytest.mark.parametrize("example", sorted(EXAMPLE.parent.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_validates(example):
    result = invoke("validate", str(example))
    assert result.exit_code == 0 and result.output.startswith("ok: chain"), result.output
