"""The deployment record on disk: what earlier vnfchain versions wrote reads into
a typed Record and is written back unchanged; a record of another shape is a
RecordError that names the key."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from vnfchain import RecordError
from vnfchain.chain.record import Attachment, FunctionSlot, Record, record_path

# a running chain's record as the single-module deploy wrote it (keys in its order)
WRITTEN_BEFORE = {
    "name": "edge", "state": "running", "pid": 4242, "created": 1700000000.5, "mode": "tailcall",
    "pin_dir": "/sys/fs/bpf/vnfchain/edge", "generation": 3, "changes": 2,
    "counters": ["rx_packets", "rx_bytes", "drop"],
    "attachments": [{"interface": "dut-lan", "netns": "vc-pvp-dut", "ifindex": 7, "mode": "native"},
                    {"interface": "eth0", "netns": None, "ifindex": 2, "mode": "generic"}],
    "spec": {"name": "edge", "functions": {"c": {"type": "counter"}}},
    "gen_dir": "/sys/fs/bpf/vnfchain/edge/g3", "sections": {"(prelude)": "ab12", "c": "cd34"},
    "maps": {"c_by_proto": "/sys/fs/bpf/vnfchain/edge/maps/c_by_proto-0123"},
    "entry_prog_id": 91, "functions": [{"name": "c", "type": "counter", "slot": 0, "prog_id": 92}],
}


@pytest.fixture
def run(tmp_path, monkeypatch):
    monkeypatch.setenv("VNFCHAIN_RUN", str(tmp_path / "run"))
    return tmp_path / "run"


def plant(data) -> Path:
    path = record_path("edge")
    path.parent.mkdir(mode=0o700, exist_ok=True)
    path.write_text(json.dumps(data))
    path.chmod(0o600)
    return path


def test_a_record_an_earlier_version_wrote_reads_as_attributes_and_saves_back_the_same(run):
    path = plant(WRITTEN_BEFORE)
    record = Record.read("edge")
    assert record.attachments[0] == Attachment("dut-lan", "vc-pvp-dut", 7, "native")
    assert [a.where for a in record.attachments] == ["dut-lan@vc-pvp-dut", "eth0@root"]
    assert record.functions == (FunctionSlot("c", "counter", 0, 92),)
    assert (record.generation, record.changes, record.entry_prog_id) == (3, 2, 91)
    assert record.finished and record.gen_dir == Path("/sys/fs/bpf/vnfchain/edge/g3")
    assert record.pins() == [Path("/sys/fs/bpf/vnfchain/edge/g3/entry"), Path("/sys/fs/bpf/vnfchain/edge/g3/state"),
                             Path("/sys/fs/bpf/vnfchain/edge/maps/c_by_proto-0123"),
                             Path("/sys/fs/bpf/vnfchain/edge/g3/fn_c")]
    record.save()
    assert json.loads(path.read_text()) == WRITTEN_BEFORE


def test_a_deploy_that_stopped_early_has_no_programs_and_keeps_its_pending_interface(run):
    pending = {"interface": "a0", "netns": None, "ifindex": 4, "mode": None}
    plant({"name": "edge", "state": "deploying", "pin_dir": "/p/edge", "attachments": [], "pending": [pending]})
    record = Record.read("edge")
    assert not record.finished and not record.built and record.pins() == []
    assert record.pending == (Attachment("a0", None, 4, None),)
    record.replace(pending=()).save()
    assert "pending" not in json.loads(record_path("edge").read_text())


@pytest.mark.parametrize("key,value,reason", [
    ("changes", "2", "changes is not a number"),
    ("sections", [], "sections is not a mapping"),
    ("functions", [{"name": "c", "type": "counter", "slot": 0}], "functions[0] has no prog_id"),
    ("gen_dir", None, "no gen_dir"),
])
def test_a_record_of_another_shape_is_unreadable_and_says_which_key(run, key, value, reason):
    data = dict(WRITTEN_BEFORE, **{key: value})
    if value is None:
        del data[key]
    plant(data)
    with pytest.raises(RecordError) as info:
        Record.read("edge")
    assert info.value.reason == f"not a deployment record ({reason})"
