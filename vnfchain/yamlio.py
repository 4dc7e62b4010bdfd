"""YAML loading that remembers where every key came from.

``load(path)`` returns plain Python data plus a ``Locator`` that maps a key path
such as ``("functions", "fw", "rules", 2, "dport")`` to its line, so that
validation errors can say ``chain.yaml:17``.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError

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


def _plain(node: Any, path: Path_, lines: dict[Path_, int]) -> Any:
    if isinstance(node, CommentedMap):
        out = {}
        for key, value in node.items():
            pos = node.lc.key(key)
            lines[path + (key,)] = pos[0] + 1
            out[key] = _plain(value, path + (key,), lines)
        return out
    if isinstance(node, CommentedSeq):
        out_list = []
        for i, value in enumerate(node):
            lines[path + (i,)] = node.lc.item(i)[0] + 1
            out_list.append(_plain(value, path + (i,), lines))
        return out_list
    if isinstance(node, str):
        return str(node)
    return node


def loads(text: str, file: str | None = None) -> tuple[Any, Locator]:
    yaml = YAML(typ="rt")
    try:
        doc = yaml.load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = mark.line + 1 if mark else None
        raise SpecError(f"not valid YAML: {exc.problem}; fix the syntax", file=file, line=line) from None
    lines: dict[Path_, int] = {(): 1}
    return _plain(doc, (), lines), Locator(file, lines)


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
    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = None
    yaml.sort_base_mapping_type_on_output = False
    buf = io.StringIO()
    yaml.dump(data, buf)
    return buf.getvalue()


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
