"""YAML loading that remembers where every key came from.

``load(path)`` returns plain Python data plus a ``Locator`` that maps a key path
such as ``("functions", "fw", "rules", 2, "dport")`` to its line, so that
validation errors can say ``chain.yaml:17``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .errors import SpecError

Path_ = tuple[Any, ...]


class Locator:
    """Line numbers (1-based) of every mapping key and sequence item."""

    def __init__(self, file: str | None, lines: dict[Path_, int]):
        self.file = file
        self._lines = lines

    def line(self, path: Path_) -> int | None:
        """Line of ``path``, or of its nearest ancestor that has one."""
        path = tuple(path)
        while path:
            if path in self._lines:
                return self._lines[path]
            path = path[:-1]
        return self._lines.get((), None)

    def error(self, message: str, path: Path_ = (), *, cls=SpecError) -> SpecError:
        key = ".".join(str(p) for p in path) or None
        return cls(message, file=self.file, line=self.line(path), key=key)


# libyaml's parser when present: a 10,000-rule firewall parses in a second
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _DuplicateKey(Exception):
    def __init__(self, key, line):
        self.key, self.line = key, line


def _plain(loader, node, path: Path_, lines: dict[Path_, int]) -> Any:
    """Data from a composed node, noting the line of every key and item."""
    if isinstance(node, yaml.MappingNode):
        out = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if key in out:
                raise _DuplicateKey(key, key_node.start_mark.line + 1)
            lines[path + (key,)] = key_node.start_mark.line + 1
            out[key] = _plain(loader, value_node, path + (key,), lines)
        return out
    if isinstance(node, yaml.SequenceNode):
        out_list = []
        for i, item in enumerate(node.value):
            lines[path + (i,)] = item.start_mark.line + 1
            out_list.append(_plain(loader, item, path + (i,), lines))
        return out_list
    return loader.construct_object(node, deep=True)


def loads(text: str, file: str | None = None) -> tuple[Any, Locator]:
    loader = _Loader(text)
    lines: dict[Path_, int] = {(): 1}
    try:
        node = loader.get_single_node()
        data = _plain(loader, node, (), lines) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        raise SpecError(f"not valid YAML: {exc.problem}; fix the syntax", file=file, line=line) from None
    except _DuplicateKey as dup:
        raise SpecError(f"not valid YAML: duplicate key '{dup.key}'; keep one of them",
                        file=file, line=dup.line) from None
    finally:
        loader.dispose()
    return data, Locator(file, lines)


def load(path: str | Path) -> tuple[Any, Locator]:
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise SpecError(f"file {p} does not exist; check the path", file=None) from None
    except OSError as exc:
        raise SpecError(f"cannot read {p}: {exc.strerror}") from None
    return loads(text, file=str(p))


def dumps(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None)


_TYPE_TAGS = {"int", "str", "float", "bool", "list", "dict", "tuple", "none",
              "IPv4Network", "IPv6Network"}


def _is_type_tag(part) -> bool:
    """pydantic puts union members and validators in an error's location
    ("dport", "list[...]", "function-after[...]"); a user's key never looks like that."""
    return isinstance(part, str) and ("[" in part or part in _TYPE_TAGS or part.startswith("function-"))


def pydantic_to_spec_error(exc, locator: Locator, prefix: Path_ = ()) -> SpecError:
    """First error of a pydantic ValidationError as a SpecError with file:line; an
    unknown key comes first, as a misspelt key ("rulez") also makes one missing."""
    errors = exc.errors()
    err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = prefix + tuple(p for p in err["loc"] if not _is_type_tag(p))
    key = ".".join(str(p) for p in loc)
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = f"unknown key '{loc[-1]}'; remove it or check its spelling"
    elif err["type"] == "missing":
        msg = f"missing required key '{loc[-1]}'"
    else:
        msg = f"{key}: {msg}"
    return locator.error(msg, loc)
