"""``vnfchain doctor``: the real machine (root) and forced failures (anywhere)."""
from __future__ import annotations

import json
import os
import sys
import types

import pytest
from click.testing import CliRunner

import vnfchain.cli.doctor  # noqa: F401  (registers the command)
from vnfchain import doctor
from vnfchain.cli import cli

WIDE = {"COLUMNS": "200"}  # keep rich from wrapping fix text in the middle


def _netns_names() -> list[str]:
    return os.listdir("/run/netns") if os.path.isdir("/run/netns") else []


def invoke(*args):
    return CliRunner().invoke(cli, ["doctor", *args], env=WIDE)


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="the full doctor run needs root")
def test_every_check_passes_on_a_set_up_machine():
    result = invoke()
    assert result.exit_code == 0, result.output
    assert f"all {len(doctor.CHECKS)} checks passed" in result.output
    assert "✗" not in result.output
    assert not [ns for ns in _netns_names() if ns.startswith("vcdoc-")]  # cleaned up


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="the full doctor run needs root")
def test_json_lists_every_check():
    result = invoke("--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ok"] is True
    names = [check["name"] for check in report["checks"]]
    assert len(names) == len(set(names)) == len(doctor.CHECKS)
    assert {"bpffs", "BCC", "XDP attach (veth)", "BPF_PROG_TEST_RUN"} <= set(names)


@pytest.fixture
def jit_disabled(tmp_path, monkeypatch):
    """Only the JIT check runs, and it reads a sysctl file that says 0."""
    sysctl = tmp_path / "bpf_jit_enable"
    sysctl.write_text("0\n")
    monkeypatch.setattr(doctor, "JIT_ENABLE_PATH", str(sysctl))
    monkeypatch.setattr(doctor, "CHECKS", (doctor.check_jit,))


def test_failing_check_exits_1_and_shows_the_fix(jit_disabled):
    result = invoke()
    assert result.exit_code == 1
    assert "✗" in result.output
    assert "fix: sysctl -w net.core.bpf_jit_enable=1" in result.output
    assert "1 of 1 checks failed" in result.output


def test_failing_check_in_json(jit_disabled):
    result = invoke("--json")
    assert result.exit_code == 1
    (check,) = json.loads(result.stdout)["checks"]
    assert check == {"name": "BPF JIT", "ok": False,
                     "detail": f"disabled ({doctor.JIT_ENABLE_PATH} = 0)",
                     "fix": "sysctl -w net.core.bpf_jit_enable=1"}


def test_bpffs_not_mounted(tmp_path, monkeypatch):
    mounts = tmp_path / "mounts"
    mounts.write_text("proc /proc proc rw 0 0\nsysfs /sys sysfs rw 0 0\n")
    monkeypatch.setattr(doctor, "MOUNTS_PATH", str(mounts))
    (check,) = doctor.run_checks((doctor.check_bpffs,))
    assert not check.ok
    assert "mount -t bpf bpf /sys/fs/bpf" in check.fix


def test_pypi_bcc_is_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "bcc", types.ModuleType("bcc"))  # no BPF class: not BCC
    (check,) = doctor.run_checks((doctor.check_bcc,))
    assert not check.ok
    assert "unrelated PyPI package" in check.detail
    assert "--system-site-packages" in check.fix


def test_a_broken_check_is_reported_not_raised():
    def check_something(probe):
        raise RuntimeError("boom")

    (check,) = doctor.run_checks((check_something,))
    assert (check.name, check.ok) == ("something", False)
    assert "RuntimeError: boom" in check.detail
