"""The JSON record of a test bed: what ``up`` made, written *before* making it.

``/run/vnfchain/testbeds/<name>.json`` holds the topology, the namespaces,
the temporary root-namespace veth names and the service processes (PID and
start time). ``up`` claims the file with O_EXCL (two ``up`` of one name cannot
race) and rewrites it atomically after every step, so ``down`` can remove
exactly what was made even after a crash. Service logs go to
``/run/vnfchain/testbeds/<name>/``.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import TestbedError

RECORD_DIR = Path("/run/vnfchain/testbeds")


def record_path(name: str) -> Path:
    return RECORD_DIR / f"{name}.json"


def log_dir(name: str) -> Path:
    return RECORD_DIR / name


@dataclass
class Record:
    name: str
    topology: dict
    source: str | None = None
    state: str = "building"  # building | up
    created: float = field(default_factory=time.time)
    owner_pid: int = field(default_factory=os.getpid)
    namespaces: list[str] = field(default_factory=list)
    temp_links: list[str] = field(default_factory=list)
    processes: list[dict] = field(default_factory=list)

    @classmethod
    def claim(cls, name: str, topology: dict, source: str | None) -> "Record":
        """Create the record of a new bed; an existing one means the bed is up."""
        RECORD_DIR.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(record_path(name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            raise TestbedError(f"test bed '{name}' is already up (record {record_path(name)}); "
                               f"run `vnfchain testbed down {name}` first") from None
        os.close(fd)
        record = cls(name=name, topology=topology, source=source)
        record.save()
        return record

    @classmethod
    def read(cls, name: str) -> "Record | None":
        path = record_path(name)
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        if not text.strip():  # claimed, first write not done yet (or crashed right there)
            return cls(name=name, topology={})
        try:
            return cls(**json.loads(text))
        except (ValueError, TypeError) as exc:
            raise TestbedError(f"record {path} is damaged ({exc}); remove it and the namespaces "
                               f"vc-{name}-* by hand (`ip netns del`)") from None

    def save(self) -> None:
        path = record_path(self.name)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        os.replace(tmp, path)

    def forget(self) -> None:
        for path in (record_path(self.name), record_path(self.name).with_suffix(".json.tmp")):
            path.unlink(missing_ok=True)


def recorded_names() -> list[str]:
    if not RECORD_DIR.is_dir():
        return []
    return sorted(p.stem for p in RECORD_DIR.glob("*.json"))
