"""Deployment records, the lock and test-bed records are root's alone: a local user
(here `nobody`, through setpriv) can neither read a chain's rules nor hold the lock
that every deploy waits for, and links planted in the state directory lead nowhere."""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

import vnfchain.cli.commands  # noqa: F401  (registers the commands)
from vnfchain import RecordError, statedir
from vnfchain.chain.record import Record, locked, record_path
from vnfchain.cli import cli
from vnfchain.errors import EnvironmentError_
from vnfchain.testbed.record import Record as BedRecord
from vnfchain.testbed.record import record_path as bed_record_path

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[2]
NOBODY = 65534
RULES = "name: x\nfunctions:\n  steer: {type: classify, rules: [{proto: tcp, dport: 4711, label: secret}]}\n"

# tries to read each path and to take its lock; prints errno or "open"
PROBE = """
import fcntl, os, sys
for path in sys.argv[1:]:
    try:
        fd = os.open(path, os.O_RDONLY)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        print("open")
    except OSError as exc:
        print(exc.errno)
"""


def as_nobody(*argv, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *argv],
                          capture_output=True, text=True, timeout=60, **kwargs)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def run(monkeypatch):
    """A run dir of this test's own that `nobody` could reach if it were open (under
    /tmp, not under pytest's 0700 tmp_path); removed after."""
    top = Path(tempfile.mkdtemp(prefix=f"vct{os.getpid()}-", dir="/tmp"))
    top.chmod(0o755)
    monkeypatch.setenv("VNFCHAIN_RUN", str(top / "run"))
    try:
        yield top / "run"
    finally:
        shutil.rmtree(top, ignore_errors=True)


def test_a_deployed_chain_is_unreadable_and_unlockable_for_others(deployed):
    dep = deployed(RULES, "tailcall")
    run, record, lock = statedir.run_dir(), record_path(dep.name), statedir.run_dir() / "vnfchain.lock"
    assert "4711" in record.read_text()                          # the rules are in there
    assert (mode(run), mode(record), mode(lock)) == (0o700, 0o600, 0o600)
    assert os.stat(run).st_uid == os.stat(record).st_uid == os.stat(lock).st_uid == 0

    probe = as_nobody("/usr/bin/python3", "-c", PROBE, record, lock, run)
    assert probe.stdout.split() == ["13", "13", "13"], probe.stderr  # EACCES, each of them

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for command in (["ls"], ["status", dep.name], ["undeploy", dep.name]):
        cli = as_nobody(sys.executable, "-m", "vnfchain", *command, cwd=REPO, env=env)
        assert cli.returncode == 1, cli.stderr
        assert cli.stderr == f"error: {run} holds vnfchain's state, which only root may read; run it as root\n"
    assert dep.run(b"\x00" * 14).action == "XDP_PASS"            # still deployed


def test_an_old_open_state_dir_is_closed_and_its_lock_replaced(run):
    """An older vnfchain left a 0755 directory, 0644 records and a 0644 lock that
    anyone could open: a user holding that lock must not block the next deploy."""
    run.mkdir(mode=0o755)
    run.chmod(0o755)
    (run / "old.json").write_text('{"name": "old", "state": "deploying", "pin_dir": "/x", "attachments": []}')
    (run / "old.json").chmod(0o644)
    lock = run / "vnfchain.lock"
    lock.touch()
    lock.chmod(0o644)
    old_lock = os.stat(lock).st_ino
    holder = subprocess.Popen(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                               "/usr/bin/python3", "-c",
                               "import fcntl, sys; f = open(sys.argv[1]); fcntl.flock(f, fcntl.LOCK_EX); "
                               "print('held', flush=True); sys.stdin.read()", str(lock)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        acquired = threading.Event()

        def deploy_lock():
            with locked("new"):
                acquired.set()
        worker = threading.Thread(target=deploy_lock, daemon=True)
        worker.start()
        assert acquired.wait(10), "the lock a local user holds blocked vnfchain"
        worker.join(10)
    finally:
        holder.kill()
        holder.wait()
    assert (mode(run), mode(run / "old.json"), mode(lock)) == (0o700, 0o600, 0o600)
    assert os.stat(lock).st_ino != old_lock
    assert Record.read("old").state == "deploying"
    probe = as_nobody("/usr/bin/python3", "-c", PROBE, run / "old.json", lock)
    assert probe.stdout.split() == ["13", "13"], probe.stderr


def test_a_state_dir_someone_else_owns_is_refused(run):
    run.mkdir(mode=0o700)
    os.chown(run, NOBODY, NOBODY)
    with pytest.raises(EnvironmentError_) as info:
        Record(name="x", state="deploying", pin_dir=Path("/x")).save()
    assert info.value.message == (f"{run} belongs to uid {NOBODY}, not to uid 0: someone else made it, so "
                                  f"vnfchain keeps no state there; check what it holds and remove it")
    assert list(run.iterdir()) == []
    result = CliRunner().invoke(cli, ["ls"])
    assert result.exit_code == 1 and result.output.startswith(f"error: {run} belongs to uid {NOBODY}")


def test_a_state_dir_that_is_a_link_is_refused(run):
    elsewhere = run.parent / "elsewhere"
    elsewhere.mkdir()
    run.symlink_to(elsewhere)
    with pytest.raises(EnvironmentError_, match="is not a directory but a link or a file"):
        Record(name="x", state="deploying", pin_dir=Path("/x")).save()
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize("planted", ["x.json", ".x.json.tmp", "vnfchain.lock"])
@pytest.mark.parametrize("how", ["symlink", "hardlink"])
def test_links_planted_in_the_state_dir_lead_nowhere(run, planted, how):
    """Written when the directory was open to all: vnfchain must not write through them."""
    statedir.private_dir(run)
    victim = run.parent / "victim"
    victim.write_text("precious")
    victim.chmod(0o644)
    (run / planted).symlink_to(victim) if how == "symlink" else os.link(victim, run / planted)
    Record(name="x", state="deploying", pin_dir=Path("/x")).save()
    with locked("x"):
        pass
    assert victim.read_text() == "precious" and mode(victim) == 0o644
    for name in ("x.json", "vnfchain.lock"):
        assert stat.S_ISREG(os.lstat(run / name).st_mode) and os.stat(run / name).st_nlink == 1
        assert mode(run / name) == 0o600
    assert Record.read("x").state == "deploying"


def test_a_record_that_is_a_link_is_not_read(run):
    statedir.private_dir(run)
    (run / "x.json").symlink_to(REPO / "README.md")
    with pytest.raises(RecordError) as info:
        Record.read("x")
    assert info.value.reason == "is a symbolic link"


def test_test_bed_records_are_private(run):
    record = BedRecord.claim("t-priv", {"name": "t-priv"}, None)
    try:
        path = bed_record_path("t-priv")
        assert (mode(run), mode(path.parent), mode(path)) == (0o700, 0o700, 0o600)
        record.save()
        assert mode(path) == 0o600 and BedRecord.read("t-priv").topology == {"name": "t-priv"}
        probe = as_nobody("/usr/bin/python3", "-c", PROBE, path)
        assert probe.stdout.split() == ["13"], probe.stderr
    finally:
        record.forget()
    assert not path.exists()


@pytest.fixture
def pins(monkeypatch):
    """A pin root of this test's own on bpffs, whose top (/sys/fs/bpf) is
    world-writable with the sticky bit, like /tmp: anyone may make it first."""
    from vnfchain.chain import deploy as deploy_mod
    root = Path(f"{deploy_mod.pin_root()}-o{os.getpid()}")
    monkeypatch.setenv("VNFCHAIN_BPFFS", str(root))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_a_pin_root_a_local_user_made_first_is_refused(run, pins):
    """After a boot bpffs is empty: a user who makes /sys/fs/bpf/vnfchain before
    root's first deploy owns the directory every chain is pinned in, and could
    move a chain's pins away so that undeploy leaves its programs attached."""
    from vnfchain import Chain
    made = as_nobody("mkdir", str(pins))
    assert made.returncode == 0, made.stderr        # bpffs lets anyone do that
    chain = Chain.from_yaml_text("name: vctpins\nfunctions: {c: {type: counter}}\n")
    with pytest.raises(EnvironmentError_) as info:
        chain.deploy(attach=[])
    assert info.value.message == (f"{pins} belongs to uid {NOBODY}, not to uid 0: someone else made it, so "
                                  f"vnfchain keeps no state there; check what it holds and remove it")
    assert list(pins.iterdir()) == []               # nothing pinned in it
    for argv in (["ls"], ["undeploy", "--all"], ["undeploy", "vctpins"]):
        result = CliRunner().invoke(cli, argv)
        assert result.exit_code == 1 and result.output.startswith(f"error: {pins} belongs to uid {NOBODY}"), \
            (argv, result.output)
    os.rmdir(pins)
    dep = chain.deploy(attach=[])                   # made by vnfchain: root's, and no one else may write in it
    try:
        assert os.stat(pins).st_uid == 0 and mode(pins) & 0o022 == 0
        assert as_nobody("mkdir", str(pins / "vctother")).returncode != 0
    finally:
        dep.undeploy()
