"""The JSON record of a test bed: what ``up`` made, written *before* making it.

``/run/vnfchain/testbeds/<name>.json`` holds the topology, the namespaces,
the temporary root-namespace veth names and the service processes (PID and
start time). ``up`` claims the file with O_EXCL (two ``up`` of one name cannot
race) and rewrites it atomically after every step, so ``down`` can remove
exactly what was made even after a crash. Service logs go to
``/run/vnfchain/testbeds/<name>/``. Records and logs are root's alone
(``vnfchain.statedir``); a bed name is checked before it becomes a path.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import statedir
from ..errors import TestbedError, TestbedSpecError
from .model import BED_NAME


def record_dir(*, create: bool = True) -> Path | None:
    run = statedir.private_dir(statedir.run_dir(), create=create)
    return run and statedir.private_dir(run / "testbeds", create=create)


def check_bed_name(name: str) -> None:
    if not BED_NAME.fullmatch(name or ""):
        raise TestbedSpecError(f"test bed name {name!r} must match [a-z][a-z0-9-]{{0,7}}; "
                               f"`vnfchain testbed ls` lists the beds that are up", key="name")


def record_path(name: str) -> Path:
    check_bed_name(name)
    return statedir.run_dir() / "testbeds" / f"{name}.json"


def log_dir(name: str) -> Path:
    check_bed_name(name)
    return statedir.run_dir() / "testbeds" / name


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
        record_dir()
        try:
            statedir.create_private(record_path(name))
        except FileExistsError:
            raise TestbedError(f"test bed '{name}' is already up (record {record_path(name)}); "
                               f"run `vnfchain testbed down {name}` first") from None
        record = cls(name=name, topology=topology, source=source)
        record.save()
        return record

    @classmethod
    def read(cls, name: str) -> "Record | None":
        path = record_path(name)
        if record_dir(create=False) is None:
            return None
        try:
            raw = statedir.read_private(path)
        except OSError as exc:
            raise TestbedError(f"record {path} is unreadable ({exc.strerror}); remove it and the "
                               f"namespaces vc-{name}-* by hand (`ip netns del`)") from None
        if raw is None:
            return None
        text = raw.decode("utf-8", "replace")
        if not text.strip():  # claimed, first write not done yet (or crashed right there)
            return cls(name=name, topology={})
        try:
            return cls(**json.loads(text))
        except (ValueError, TypeError) as exc:
            raise TestbedError(f"record {path} is damaged ({exc}); remove it and the namespaces "
                               f"vc-{name}-* by hand (`ip netns del`)") from None

    def save(self) -> None:
        statedir.write_private(record_path(self.name), json.dumps(asdict(self), indent=1).encode())

    def forget(self) -> None:
        statedir.remove_private(record_path(self.name))


def recorded_names() -> list[str]:
    beds = record_dir(create=False)
    return sorted(p.stem for p in beds.glob("*.json") if BED_NAME.fullmatch(p.stem)) if beds else []
