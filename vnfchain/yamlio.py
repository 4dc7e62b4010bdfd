"""YAML loading that remembers where every key came from.

``load(path)`` returns plain Python data plus a ``Locator`` that maps a key path
such as ``("functions", "fw", "rules", 2, "dport")`` to its line, so that
validation errors can say ``chain.yaml:17``.

The input may be hostile: a file is refused, with file:line, when it is over
``MAX_BYTES`` or not UTF-8, nests deeper than ``MAX_DEPTH``, or has aliases that
expand to more than ``MAX_ALIAS_VALUES`` values or into themselves, each before
anything big is built.
"""
from __future__ import annotations

import os
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


# libyaml's parser when present: a 100,000-rule firewall (9.4 MiB) reads in 3.4 s, 256 MiB
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

#: a definition file may not be larger: the largest real ones (100,000 firewall
#: rules, 10,000 DPI signatures) take 9.4 MiB and 0.6 MiB; reading takes about
#: 25 times the file's size in memory
MAX_BYTES = 16 << 20
#: collections inside collections: chain files and topologies need fewer than 10
MAX_DEPTH = 64
#: values that aliases may add to the document by repeating their anchor's value;
#: a few hundred bytes of nested aliases would otherwise expand to billions
MAX_ALIAS_VALUES = 100_000

_KEY = object()     # a mapping frame that waits for its next key
_INT = "tag:yaml.org,2002:int"
#: Python's own bound on turning decimal text into an integer; YAML 1.1's base-60
#: integers (1:59:59) escape it, and take a big multiplication per digit
MAX_INT_CHARS = 4300


class _Frame:
    """A collection being built: its value, where it is, and how many values it holds
    (aliases counted at their expanded size)."""

    __slots__ = ("value", "path", "anchor", "size", "key")

    def __init__(self, value, path: Path_, anchor: str | None):
        self.value, self.path, self.anchor, self.size, self.key = value, path, anchor, 1, _KEY


class _Composer:
    """Plain data straight from libyaml's events, with the line of every key and item.

    Not PyYAML's composer: that one recurses in C (a 200 KB file of nested brackets
    crashes the interpreter) and shares an alias's value, which every later walk
    (validation, the deployment record) would expand. Here the depth and what
    aliases expand to are counted as the events come, before anything is built."""

    def __init__(self, loader, file: str | None):
        self.loader, self.file = loader, file
        self.lines: dict[Path_, int] = {(): 1}
        self.anchors: dict[str, tuple[Any, int]] = {}   # anchor -> (value, values it holds)
        self.building: set[str] = set()                 # anchors of unfinished collections
        self.alias_values = 0
        self.stack: list[_Frame] = []

    def fail(self, message: str, event) -> SpecError:
        return SpecError(message, file=self.file, line=event.start_mark.line + 1)

    def document(self) -> Any:
        loader = self.loader
        loader.get_event()                                   # stream start
        if loader.check_event(yaml.StreamEndEvent):
            return None
        loader.get_event()                                   # document start
        while True:
            event = loader.get_event()
            if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
                self._open(event)
                continue
            if isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
                frame = self.stack.pop()
                value, size = frame.value, frame.size
                if frame.anchor is not None:
                    self.anchors[frame.anchor] = (value, size)
                    self.building.discard(frame.anchor)
            elif isinstance(event, yaml.AliasEvent):
                value, size = self._alias(event)
            else:
                value, size = self._scalar(event), 1
                self._anchor(event, value, size)
            if not self.stack:
                break
            self._add(self.stack[-1], value, size, event)
        loader.get_event()                                   # document end
        if not loader.check_event(yaml.StreamEndEvent):
            raise self.fail("not valid YAML: more than one document (a second '---'); "
                            "keep one document per file", loader.peek_event())
        return value

    def _open(self, event) -> None:
        if len(self.stack) >= MAX_DEPTH:
            raise self.fail(f"lists and mappings are nested more than {MAX_DEPTH} deep; a chain "
                            f"or topology needs fewer than 10: check the brackets", event)
        parent = self.stack[-1] if self.stack else None
        if parent is not None and isinstance(parent.value, dict) and parent.key is _KEY:
            raise self.fail("a mapping key must be a plain value, not a list or mapping", event)
        path = self._child_path(parent, event)
        frame = _Frame({} if isinstance(event, yaml.MappingStartEvent) else [], path, event.anchor)
        if event.anchor is not None:
            self._check_new_anchor(event)
            self.building.add(event.anchor)
        self.stack.append(frame)

    def _child_path(self, parent: _Frame | None, event) -> Path_:
        """Where the next value of ``parent`` goes, noting the line of a sequence item."""
        if parent is None:
            return ()
        if isinstance(parent.value, list):
            path = parent.path + (len(parent.value),)
            self.lines[path] = event.start_mark.line + 1
            return path
        return parent.path + (parent.key,)

    def _add(self, parent: _Frame, value, size: int, event) -> None:
        parent.size += size
        if isinstance(parent.value, list):
            # a collection noted its line where it opened; this event is where it closed
            self.lines.setdefault(parent.path + (len(parent.value),), event.start_mark.line + 1)
            parent.value.append(value)
        elif parent.key is _KEY:
            if isinstance(value, (dict, list)):
                raise self.fail("a mapping key must be a plain value, not a list or mapping", event)
            if value in parent.value:
                raise self.fail(f"not valid YAML: duplicate key '{value}'; keep one of them", event)
            self.lines[parent.path + (value,)] = event.start_mark.line + 1
            parent.key = value
        else:
            parent.value[parent.key] = value
            parent.key = _KEY

    def _scalar(self, event) -> Any:
        tag = event.tag
        if tag is None or tag == "!":
            tag = self.loader.resolve(yaml.ScalarNode, event.value, event.implicit)
        if tag == "tag:yaml.org,2002:merge":
            raise self.fail("merge keys (<<: *anchor) are not supported; write the keys out", event)
        if tag == _INT and len(event.value) > MAX_INT_CHARS:
            raise self._unreadable(event, f"an integer of over {MAX_INT_CHARS:,} digits")
        node = yaml.ScalarNode(tag, event.value, event.start_mark, event.end_mark, event.style)
        try:
            return self.loader.construct_object(node, deep=True)
        except ValueError as exc:    # a 13th month
            raise self._unreadable(event, str(exc).split(";")[0]) from None
        except (KeyError, AttributeError, TypeError):   # an explicit tag its value does not fit: !!bool maybe
            raise self._unreadable(event, f"not a {tag.rsplit(':', 1)[-1]}") from None
        finally:
            self.loader.constructed_objects.pop(node, None)

    def _unreadable(self, event, reason: str) -> SpecError:
        return self.fail(f"cannot read the value {event.value[:40]!r} ({reason[:1].lower()}{reason[1:]}); "
                         f"fix it, or quote it to make it a string", event)

    def _check_new_anchor(self, event) -> None:
        if event.anchor in self.anchors or event.anchor in self.building:
            raise self.fail(f"not valid YAML: anchor &{event.anchor} is defined twice; "
                            f"rename one of them", event)

    def _anchor(self, event, value, size: int) -> None:
        if event.anchor is not None:
            self._check_new_anchor(event)
            self.anchors[event.anchor] = (value, size)

    def _alias(self, event) -> tuple[Any, int]:
        name = event.anchor
        if name in self.building:
            raise self.fail(f"alias *{name} is inside the value of its own anchor &{name}; "
                            f"a value cannot contain itself", event)
        if name not in self.anchors:
            raise self.fail(f"not valid YAML: alias *{name} has no anchor &{name} before it; "
                            f"define the anchor first", event)
        value, size = self.anchors[name]
        self.alias_values += size
        if self.alias_values > MAX_ALIAS_VALUES:
            raise self.fail(f"aliases expand to more than {MAX_ALIAS_VALUES:,} values (an alias "
                            f"bomb?); write the values out, or repeat fewer of them", event)
        return value, size     # shared, as PyYAML does: what it holds is bounded above


def loads(text: str, file: str | None = None) -> tuple[Any, Locator]:
    """Data and line numbers from YAML text; raises SpecError with file:line."""
    if len(text) > MAX_BYTES:
        raise _too_large(file)
    loader = _Loader(text)
    composer = _Composer(loader, file)
    try:
        data = composer.document()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        raise SpecError(f"not valid YAML: {exc.problem}; fix the syntax", file=file, line=line) from None
    except yaml.reader.ReaderError as exc:
        raise SpecError(f"not valid YAML: character #x{exc.character:04x}: {exc.reason}; remove it",
                        file=file, line=text.count("\n", 0, exc.position) + 1) from None
    finally:
        loader.dispose()
    return data, Locator(file, composer.lines)


def _read_at_most(f, limit: int) -> bytes:
    chunks, total = [], 0
    while total < limit and (chunk := f.read(min(1 << 20, limit - total))):
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


def _too_large(file: str | None) -> SpecError:
    return SpecError(f"larger than {MAX_BYTES >> 20} MiB, which no chain or topology needs (100,000 "
                     f"firewall rules take 9.4 MiB); check that this is the right file", file=file)


def load(path: str | Path) -> tuple[Any, Locator]:
    """Data and line numbers from a YAML file of at most MAX_BYTES of UTF-8 text."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            if os.fstat(f.fileno()).st_size > MAX_BYTES:
                raise _too_large(str(p))
            raw = _read_at_most(f, MAX_BYTES + 1)   # a pipe or a device has no size
    except FileNotFoundError:
        raise SpecError(f"file {p} does not exist; check the path", file=None) from None
    except OSError as exc:
        raise SpecError(f"cannot read {p}: {exc.strerror}; check the path and its permissions") from None
    if len(raw) > MAX_BYTES:
        raise _too_large(str(p))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise SpecError(f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
                        f"save it as UTF-8", file=str(p), line=line) from None
    return loads(text, file=str(p))


def dumps(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None)


def pydantic_to_spec_error(exc, locator: Locator, prefix: Path_ = (), model=None) -> SpecError:
    """The first error of a pydantic ValidationError, worded (vnfchain.spec_errors),
    with file:line; an unknown key comes first, as a misspelt key also makes one missing."""
    from .spec_errors import spec_errors
    errors = spec_errors(exc, locator, model=model, prefix=prefix)
    return next((e for e in errors if e.reason.startswith("unknown key")), errors[0])
