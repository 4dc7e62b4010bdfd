"""pydantic's validation errors, worded for people and placed at file:line.

    errors = spec_errors(exc, locator, model=FirewallParams, prefix=("functions", "fw"))

gives one ``SpecError`` per wrong key (not one per union member pydantic
tried), each saying what is wrong with the value the user wrote, in words:

    xdp_mode: 'turbo' is not one of auto, native, generic
    unknown key 'defualt' (did you mean 'default'?)
    rules.1.dport: 99999 is more than 65535

A misspelt required key makes pydantic report both the unknown key and a
missing one; the missing one is left out when the unknown key looks like it.
"""
from __future__ import annotations

import difflib
import re
import types
import typing
from typing import Any

from pydantic import BaseModel

from .errors import SpecError

Path_ = tuple

_TYPE_TAGS = {"int", "str", "float", "bool", "list", "dict", "tuple", "none",
              "IPv4Network", "IPv6Network"}
_BOUNDS = {"less_than_equal": ("more than", "le"), "less_than": ("not less than", "lt"),
           "greater_than_equal": ("less than", "ge"), "greater_than": ("not more than", "gt")}


def is_type_tag(part) -> bool:
    """pydantic puts union members and validators in an error's location
    ("dport", "list[...]", "function-after[...]"); a user's key never looks like that."""
    return isinstance(part, str) and ("[" in part or part in _TYPE_TAGS or part.startswith("function-"))


def spec_errors(exc, locator, *, model: type[BaseModel] | None = None, prefix: Path_ = ()) -> list[SpecError]:
    """Every error of a pydantic ValidationError, one per location, worded."""
    seen: dict[Path_, dict] = {}
    for err in exc.errors():
        path = tuple(p for p in err["loc"] if not is_type_tag(p))
        seen.setdefault(path, err)      # a union reports each member: the first says enough
    unknown = {path[:-1] + (path[-1],) for path, err in seen.items() if err["type"] == "extra_forbidden"}
    out = []
    for path, err in seen.items():
        if err["type"] == "missing" and _misspelt(path, unknown):
            continue
        out.append(locator.error(_words(err, path, model), prefix + path))
    return out


def _misspelt(path: Path_, unknown: set[Path_]) -> bool:
    """Is the missing key at ``path`` one an unknown key beside it was meant to be?"""
    siblings = [str(u[-1]) for u in unknown if u[:-1] == path[:-1]]
    return bool(difflib.get_close_matches(str(path[-1]), siblings, n=1, cutoff=0.6))


def _words(err: dict, path: Path_, model) -> str:
    kind, value, ctx = err["type"], err.get("input"), err.get("ctx") or {}
    key = ".".join(str(p) for p in path)
    name = path[-1] if path else ""
    if kind == "extra_forbidden":
        fields = _fields_at(model, path[:-1])
        near = difflib.get_close_matches(str(name), fields, n=1, cutoff=0.6)
        hint = f" (did you mean '{near[0]}'?)" if near else (
            f"; known keys: {', '.join(sorted(fields))}" if fields else "; remove it or check its spelling")
        return f"unknown key '{name}'{hint}"
    if kind == "missing":
        return f"missing required key '{name}'"
    if kind == "literal_error":
        allowed = _plain(ctx.get("expected", ""))
        near = difflib.get_close_matches(str(value), allowed.split(", "), n=1, cutoff=0.6)
        hint = f" (did you mean '{near[0]}'?)" if near else ""
        return f"{key}: {value!r} is not one of {allowed}{hint}"
    if kind == "string_pattern_mismatch":
        return f"{key}: {value!r} does not match {ctx.get('pattern')}"
    if kind in _BOUNDS:
        words, bound = _BOUNDS[kind]
        return f"{key}: {value!r} is {words} {ctx.get(bound)}"
    message = err["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if kind in ("value_error", "assertion_error") or not _scalar(value):
        return f"{key}: {message}" if key else message
    return f"{key}: {message[:1].lower()}{message[1:]}, not {value!r}" if key else message


def _plain(expected: str) -> str:
    """pydantic's "'auto', 'native' or 'generic'" as "auto, native, generic"."""
    return ", ".join(re.findall(r"'([^']*)'", expected)) or expected


def _scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool)) and len(repr(value)) <= 80


def _fields_at(model, path: Path_) -> list[str]:
    """The keys a mapping at ``path`` inside ``model`` may have (for suggestions)."""
    current: Any = model
    for part in path:
        current = _step(current, part)
        if current is None:
            return []
    current = _model_of(current)
    return list(current.model_fields) if current else []


def _step(annotation, part):
    model = _model_of(annotation)
    if model is not None and isinstance(part, str):
        field = model.model_fields.get(part)
        return field.annotation if field else None
    for arg in _members(annotation):
        origin = typing.get_origin(arg)
        if origin in (list, tuple) and isinstance(part, int):
            return typing.get_args(arg)[0]
        if origin is dict:
            return typing.get_args(arg)[1]
    return None


def _model_of(annotation):
    for arg in _members(annotation):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def _members(annotation) -> list:
    """A union's members (an Annotated type's base), or the annotation itself."""
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [m for a in typing.get_args(annotation) for m in _members(a)]
    return [annotation]
