"""Where a deployed chain lives, what deploy made of it, and the lock.

    /sys/fs/bpf/vnfchain/<chain>/g<N>/  entry, fn_<name>, progs, state (``pin_root()``)
    /sys/fs/bpf/vnfchain/<chain>/maps/  <fn>_<map>-<fingerprint> (function state)
    /run/vnfchain/<chain>.json          the ``Record``: attachments, pins, spec, history

A ``Record`` says what deploy made: pin directory, generation, programs, the
identity of every pinned map, attachments (and ``pending`` ones, noted before
they are made), the spec and the definitions that ran before it (``history``,
what ``rollback`` returns to).
It is written before anything is made, so that ``undeploy`` can finish a
deploy that died half-way. Like the lock it lives in vnfchain's private state
directory (``vnfchain.statedir``): the spec holds the rules.

A record that is there but cannot be read (damaged, truncated, a link, not
ours, JSON of another shape) is a ``RecordError`` naming the file and the
reason: listed, never hidden. One that is read is a frozen ``Record``: every
later reader trusts its attributes; a change is a new record (``replace``)
saved whole.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Iterator

from .. import statedir
from ..errors import NotDeployedError, RecordError
from .model import CHAIN_NAME

# -- where --------------------------------------------------------------------------


def pin_root() -> Path:
    return Path(os.environ.get("VNFCHAIN_BPFFS", "/sys/fs/bpf/vnfchain"))


def own_pin_root(create: bool = False) -> Path | None:
    """The pin root, refused when someone else made it (see statedir); None when
    it is not there (and not to be made)."""
    return statedir.owned_dir(pin_root(), create=create)


def check_name(name: str) -> None:
    """A chain name is a path component here: never let one reach another's pins."""
    if not re.fullmatch(CHAIN_NAME, name or ""):
        raise NotDeployedError(f"'{name}' is not a chain name ([a-z][a-z0-9-]{{0,22}}); "
                               f"`vnfchain ls` lists the deployed chains")


def record_path(name: str) -> Path:
    check_name(name)
    return statedir.run_dir() / f"{name}.json"


# -- what -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Attachment:
    """The chain's entry program on one interface's XDP hook."""

    interface: str
    netns: str | None
    ifindex: int
    mode: str | None      # native | generic; None while it is pending (being made)

    @property
    def key(self) -> tuple[str, str | None]:
        return self.interface, self.netns

    @property
    def where(self) -> str:
        return f"{self.interface}@{self.netns or 'root'}"


@dataclass(frozen=True)
class FunctionSlot:
    """A function of the running generation: its prog-array slot (tail-call
    mode) and its program id (None when fused into the entry)."""

    name: str
    type: str
    slot: int
    prog_id: int | None


@dataclass(frozen=True)
class MapIdentity:
    """A pinned map as the chain's programs use it: the map's id, and the layout
    the spec rendered (a map's layout never changes, so another layout at the
    pin is another map)."""

    id: int
    type: int
    key_size: int
    value_size: int
    max_entries: int

    @classmethod
    def of(cls, info: dict[str, int]) -> "MapIdentity":
        return cls(*(info[f.name] for f in fields(cls)))

    @property
    def layout(self) -> str:
        return f"type {self.type}, key {self.key_size} B, value {self.value_size} B, {self.max_entries} entries"


@dataclass(frozen=True)
class Revision:
    """A definition that ran before the current one, and since when it ran."""

    deployed: float
    spec: dict


HISTORY = 5   # earlier definitions a record keeps for rollback


@dataclass(frozen=True)
class Record:
    """A chain as deploy made it. ``state`` is deploying or running on disk;
    a chain seen only by its pins is ``no record``, one whose record cannot be
    read ``unreadable`` (never saved)."""

    name: str
    state: str
    pin_dir: Path
    attachments: tuple[Attachment, ...] = ()
    pending: tuple[Attachment, ...] = ()   # attached (or about to be) but not yet recorded as such
    pid: int | None = None                 # of the vnfchain that wrote it
    created: float | None = None
    changes: int = 0                       # live changes since the deploy
    counters: tuple[str, ...] = ()         # the counter names of each stats row, in order
    # written once the programs are pinned (a running record has them all):
    mode: str | None = None
    generation: int | None = None
    gen_dir: Path | None = None
    entry_prog_id: int | None = None
    functions: tuple[FunctionSlot, ...] = ()
    maps: dict[str, str] = field(default_factory=dict)       # C map name -> pin path
    sections: dict[str, str] = field(default_factory=dict)   # section -> hash of its code
    spec: dict | None = None               # the running chain (spec_to_dict)
    deployed: float | None = None          # when the running definition was deployed
    history: tuple[Revision, ...] = ()     # earlier definitions, oldest first, at most HISTORY
    map_ids: dict[str, MapIdentity] = field(default_factory=dict)   # pin path -> the map there
    config_ifindexes: dict[str, dict[str, int]] = field(default_factory=dict)  # function -> {interface: ifindex}
    # {function or "(entry)": {counter: n}}: what generations before the running
    # one counted, which stats adds to the running generation's own counters
    carried: dict[str, dict[str, int]] = field(default_factory=dict)

    def replace(self, **changes) -> "Record":
        return replace(self, **changes)

    @property
    def finished(self) -> bool:
        """Its last deploy or change ran to the end."""
        return self.state == "running" and not self.pending

    @property
    def built(self) -> bool:
        """Its programs are pinned and recorded (a deploy may have stopped before)."""
        return self.gen_dir is not None

    @property
    def since(self) -> float | None:
        """When the running definition was deployed (records of older versions: the first deploy)."""
        return self.deployed or self.created

    def pins(self) -> list[Path]:
        """Every pin a running generation has: entry, state, function maps, and
        each tail-call function's program."""
        if self.gen_dir is None:
            return []
        return ([self.gen_dir / "entry", self.gen_dir / "state"] + [Path(p) for p in self.maps.values()]
                + [self.gen_dir / f"fn_{f.name}" for f in self.functions if f.prog_id])

    # -- on disk --

    @classmethod
    def read(cls, name: str) -> "Record | None":
        """The record of ``name``, None when there is none; RecordError when it is unreadable."""
        path = record_path(name)
        if statedir.private_dir(path.parent, create=False) is None:
            return None
        try:
            raw = statedir.read_private(path)
            if raw is None:
                return None
            data = json.loads(raw)
        except OSError as exc:
            raise RecordError(name, path, exc.strerror) from None
        except ValueError as exc:      # bad JSON, bad UTF-8, cut short
            raise RecordError(name, path, f"not JSON ({exc})") from None
        missing = [key for key in _KEYS if key not in data] if isinstance(data, dict) else list(_KEYS)
        if missing:
            raise RecordError(name, path, f"not a deployment record (no {', '.join(missing)})")
        problem = _shape_problem(data)
        if problem:
            raise RecordError(name, path, f"not a deployment record ({problem})")
        if data["name"] != name:
            raise RecordError(name, path, f"it is the record of chain '{data['name']}'")
        return cls._from_json(data)

    def save(self) -> None:
        path = record_path(self.name)
        statedir.private_dir(path.parent)
        statedir.write_private(path, json.dumps(self._to_json(), indent=2).encode())

    def forget(self) -> None:
        statedir.remove_private(record_path(self.name))

    @classmethod
    def _from_json(cls, data: dict) -> "Record":
        known = {f.name for f in fields(cls)}
        values = {key: value for key, value in data.items() if key in known}
        for key in ("attachments", "pending"):
            values[key] = tuple(Attachment(**a) for a in data.get(key, ()))
        values["functions"] = tuple(FunctionSlot(**f) for f in data.get("functions", ()))
        values["history"] = tuple(Revision(**r) for r in data.get("history", ()))
        values["map_ids"] = {path: MapIdentity(**m) for path, m in data.get("map_ids", {}).items()}
        values["counters"] = tuple(data.get("counters", ()))
        values["pin_dir"] = Path(data["pin_dir"])
        if "gen_dir" in data:
            values["gen_dir"] = Path(data["gen_dir"])
        return cls(**values)

    def _to_json(self) -> dict:
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None or (f.name in _OMITTED_EMPTY and not value):
                continue
            if isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = [asdict(v) if isinstance(v, (Attachment, FunctionSlot, Revision)) else v for v in value]
            elif f.name == "map_ids":
                value = {path: asdict(m) for path, m in value.items()}
            out[f.name] = value
        return out


_KEYS = ("name", "state", "pin_dir", "attachments")   # what undeploy needs
# written only when they hold something: a record of an older vnfchain saves back as it was
_OMITTED_EMPTY = ("pending", "history", "map_ids", "config_ifindexes", "carried")
# what a finished deploy wrote, and what `status` and `stats` read of it
_RUNNING = ("mode", "generation", "gen_dir", "entry_prog_id", "functions", "maps", "spec", "counters")
_MAYBE = (str, type(None))
# the shape of every key a record may have: a type, or (list, the shape of each item)
_SHAPES = {
    "name": str, "state": str, "pin_dir": str, "gen_dir": str, "mode": str, "generation": int,
    "entry_prog_id": int, "spec": dict, "counters": (list, str), "maps": dict, "sections": dict,
    "changes": int, "pid": int, "created": (int, float), "deployed": (int, float),
    "history": (list, {"deployed": (int, float), "spec": dict}),
    "map_ids": (dict, {"id": int, "type": int, "key_size": int, "value_size": int, "max_entries": int}),
    "config_ifindexes": (dict, (dict, int)),
    "attachments": (list, {"interface": str, "netns": _MAYBE, "ifindex": int, "mode": _MAYBE}),
    "pending": (list, {"interface": str, "netns": _MAYBE, "ifindex": int, "mode": _MAYBE}),
    "functions": (list, {"name": str, "type": str, "slot": int, "prog_id": (int, type(None))}),
    "carried": (dict, (dict, int)),
}
_NAMES = {str: "a string", int: "a number", float: "a number", dict: "a mapping", list: "a list"}


def _shape_problem(data: dict) -> str | None:
    """What in a record (JSON with the keys undeploy needs) is not shaped as
    vnfchain writes it: a Record is then made of it without further checks."""
    if data["state"] == "running":
        missing = [key for key in _RUNNING if key not in data]
        if missing:
            return f"no {', '.join(missing)}"
    for key, shape in _SHAPES.items():
        if key in data:
            problem = _misfit(key, data[key], shape)
            if problem:
                return problem
    return None


def _misfit(where: str, value, shape) -> str | None:
    if isinstance(shape, tuple) and shape[0] is list:
        if not isinstance(value, list):
            return f"{where} is not a list"
        return next(filter(None, (_misfit(f"{where}[{i}]", v, shape[1]) for i, v in enumerate(value))), None)
    if isinstance(shape, tuple) and shape[0] is dict:    # a mapping of names to values of one shape
        if not isinstance(value, dict):
            return f"{where} is not a mapping"
        return next(filter(None, (_misfit(f"{where}[{k!r}]", v, shape[1]) for k, v in value.items())), None)
    if isinstance(shape, dict):
        if not isinstance(value, dict):
            return f"{where} is not a mapping"
        for key, inner in shape.items():
            if key not in value:
                return f"{where} has no {key}"
            problem = _misfit(f"{where}.{key}", value[key], inner)
            if problem:
                return problem
        return None
    if not isinstance(value, shape) or isinstance(value, bool):
        kinds = shape if isinstance(shape, tuple) else (shape,)
        return f"{where} is not {' or '.join(_NAMES.get(k, 'null') for k in kinds)}"
    return None


def recorded_names() -> list[str]:
    """Chains that have a record, readable or not."""
    run = statedir.private_dir(statedir.run_dir(), create=False)
    if run is None:
        return []
    return sorted(p.stem for p in run.glob("*.json") if re.fullmatch(CHAIN_NAME, p.stem))


def readable_records() -> Iterator[Record]:
    """The record of every chain whose record can be read."""
    for name in recorded_names():
        try:
            record = Record.read(name)
        except RecordError:
            continue
        if record is not None:
            yield record


# -- the lock -------------------------------------------------------------------------

def _lock_path() -> Path:
    return statedir.private_dir(statedir.run_dir()) / "vnfchain.lock"


def locked(name: str):
    """One deploy, change or undeploy at a time (a second one waits). One lock
    file for all chains, never removed: removing a lock file others wait on
    would let two holders in."""
    check_name(name)
    return statedir.locked(_lock_path())


def busy() -> bool:
    """A deploy, change or undeploy is running right now (in another process)."""
    run = statedir.private_dir(statedir.run_dir(), create=False)
    return run is not None and statedir.held(run / "vnfchain.lock")
