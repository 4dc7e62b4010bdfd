"""The record of a deployed chain, and the lock every deploy, change and undeploy holds.

``<run dir>/<chain>.json`` says what deploy made: pin directory, generation,
programs, attachments (and ``pending`` ones, noted before they are made) and
the spec. It is written before anything is made, so that ``undeploy`` can
finish a deploy that died half-way. Like the lock it lives in vnfchain's
private state directory (``vnfchain.statedir``): the spec holds the rules.

A record that is there but cannot be read (damaged, truncated, a link, not
ours) is a ``RecordError`` naming the file and the reason: listed, never hidden.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from .. import statedir
from ..errors import NotDeployedError, RecordError
from .model import CHAIN_NAME

_KEYS = ("name", "state", "pin_dir", "attachments")   # what undeploy needs
# what a finished deploy wrote, and what `status` and `stats` read of it
_RUNNING = ("mode", "generation", "gen_dir", "entry_prog_id", "functions", "maps", "spec", "counters")
_MAYBE = (str, type(None))
# the shape of every key a record may have: a type, or (list, the shape of each item)
_SHAPES = {
    "name": str, "state": str, "pin_dir": str, "gen_dir": str, "mode": str, "generation": int,
    "entry_prog_id": int, "spec": dict, "counters": (list, str), "maps": dict,
    "attachments": (list, {"interface": str, "netns": _MAYBE, "ifindex": int, "mode": _MAYBE}),
    "pending": (list, {"interface": str, "netns": _MAYBE, "ifindex": int, "mode": _MAYBE}),
    "functions": (list, {"name": str, "type": str, "slot": int, "prog_id": (int, type(None))}),
}
_NAMES = {str: "a string", int: "a number", dict: "a mapping", list: "a list"}


def check_name(name: str) -> None:
    """A chain name is a path component here: never let one reach another's pins."""
    if not re.fullmatch(CHAIN_NAME, name or ""):
        raise NotDeployedError(f"'{name}' is not a chain name ([a-z][a-z0-9-]{{0,22}}); "
                               f"`vnfchain ls` lists the deployed chains")


def record_path(name: str) -> Path:
    check_name(name)
    return statedir.run_dir() / f"{name}.json"


def write_record(record: dict) -> None:
    path = record_path(record["name"])
    statedir.private_dir(path.parent)
    statedir.write_private(path, json.dumps(record, indent=2).encode())


def read_record(name: str) -> dict | None:
    """The record of ``name``, None when there is none; RecordError when it is unreadable."""
    path = record_path(name)
    if statedir.private_dir(path.parent, create=False) is None:
        return None
    try:
        raw = statedir.read_private(path)
        if raw is None:
            return None
        record = json.loads(raw)
    except OSError as exc:
        raise RecordError(name, path, exc.strerror) from None
    except ValueError as exc:      # bad JSON, bad UTF-8, cut short
        raise RecordError(name, path, f"not JSON ({exc})") from None
    missing = [key for key in _KEYS if key not in record] if isinstance(record, dict) else list(_KEYS)
    if missing:
        raise RecordError(name, path, f"not a deployment record (no {', '.join(missing)})")
    problem = _shape_problem(record)
    if problem:
        raise RecordError(name, path, f"not a deployment record ({problem})")
    if record["name"] != name:
        raise RecordError(name, path, f"it is the record of chain '{record['name']}'")
    return record


def _shape_problem(record: dict) -> str | None:
    """What in a record (JSON with the keys undeploy needs) is not shaped as
    vnfchain writes it: every later reader may then index it freely."""
    if record["state"] == "running":
        missing = [key for key in _RUNNING if key not in record]
        if missing:
            return f"no {', '.join(missing)}"
    for key, shape in _SHAPES.items():
        if key in record:
            problem = _misfit(key, record[key], shape)
            if problem:
                return problem
    return None


def _misfit(where: str, value, shape) -> str | None:
    if isinstance(shape, tuple) and shape[0] is list:
        if not isinstance(value, list):
            return f"{where} is not a list"
        return next(filter(None, (_misfit(f"{where}[{i}]", v, shape[1]) for i, v in enumerate(value))), None)
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
