"""The chain model: YAML and networkx graphs become one validated, frozen spec.

``spec_from_dict`` is the only way in; everything after it trusts the spec.
Errors name the file:line (when the input was YAML) and the key.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import networkx as nx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .. import functions, pitfalls
from ..contract import FunctionType
from ..errors import SpecError, SpecErrors
from ..names import InterfaceName, NetnsName
from ..spec_errors import spec_errors
from ..yamlio import Locator

MAX_TAIL_CALLS = 33          # the kernel's MAX_TAIL_CALL_CNT
DEFAULT = "default"          # the branch a plain `next: fn` names
CHAIN_NAME = r"^[a-z][a-z0-9-]{0,22}$"
FUNCTION_NAME = r"^[a-z_][a-z0-9_]{0,23}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AttachPoint(_Strict):
    interface: InterfaceName
    netns: NetnsName | None = None

    def __str__(self) -> str:
        return f"{self.interface}@{self.netns}" if self.netns else self.interface


class _RawChain(_Strict):
    """The top level of a chain definition, functions still unparsed."""

    name: str = Field(pattern=CHAIN_NAME)
    description: str = ""
    attach: list[AttachPoint] = []
    xdp_mode: Literal["auto", "native", "generic"] = "auto"
    mode: Literal["tailcall", "fused"] = "tailcall"
    on_miss: Literal["drop", "pass"] = "drop"
    exit: Literal["pass", "drop", "tx"] = "pass"
    entry: str | None = None
    functions: dict[Any, Any] = Field(min_length=1)   # names and bodies: checked in _function


@dataclass(frozen=True)
class FunctionSpec:
    name: str
    type: str
    params: Any                          # the type's Params instance
    next: tuple[tuple[str, str], ...]    # (label, successor); label "default" for plain next

    @property
    def ftype(self) -> FunctionType:
        return functions.get(self.type)

    @property
    def default_next(self) -> str | None:
        return dict(self.next).get(DEFAULT)

    @property
    def branches(self) -> tuple[tuple[str, str], ...]:
        return tuple((label, t) for label, t in self.next if label != DEFAULT)


@dataclass(frozen=True)
class ChainSpec:
    name: str
    description: str
    attach: tuple[AttachPoint, ...]
    xdp_mode: str
    mode: str
    on_miss: str
    exit: str
    entry: str
    functions: tuple[FunctionSpec, ...]   # in slot order: topological, YAML order breaks ties
    warnings: tuple[str, ...] = field(default=(), compare=False)   # legal but suspicious (file:line)

    def function(self, name: str) -> FunctionSpec:
        return next(f for f in self.functions if f.name == name)

    @property
    def slots(self) -> dict[str, int]:
        return {f.name: i for i, f in enumerate(self.functions)}

    @property
    def labels(self) -> dict[str, int]:
        """Chain-wide label ids: every label any function can emit or branch on."""
        names: set[str] = set()
        for f in self.functions:
            names |= f.ftype.labels(f.params)
            names |= {label for label, _ in f.branches}
        return {label: i for i, label in enumerate(sorted(names))}

    def with_changes(self, **changes) -> "ChainSpec":
        """A copy with some keys changed, validated again: an override (mode, attach,
        name) must pass the same checks as the YAML (tail-call depth, duplicates)."""
        return spec_from_dict(spec_to_dict(replace(self, **changes)))


def spec_from_dict(data: Any, locator: Locator | None = None) -> ChainSpec:
    """Every mistake of the definition at once (SpecErrors), or the spec."""
    loc = locator or Locator(None, {})
    if not isinstance(data, dict):
        raise loc.error("a chain definition must be a mapping with name, functions, ...")
    errors: list[SpecError] = []
    try:
        raw = _RawChain.model_validate(data)
    except ValidationError as exc:
        raw = None
        errors += _chain_errors(exc, loc)
    bodies = raw.functions if raw else data.get("functions")
    fns: dict[str, FunctionSpec] = {}
    for name, body in (bodies.items() if isinstance(bodies, dict) else ()):
        try:
            fns[name] = _function(name, body, loc)
        except SpecError as exc:
            errors += getattr(exc, "errors", [exc])
    SpecErrors.raise_if(errors)
    _check_next(fns, loc)
    graph = _graph(fns)
    entry = _entry(raw.entry, graph, loc)
    _check_graph(graph, entry, raw.mode, loc)
    _check_attach(raw.attach, loc)
    order = list(nx.lexicographical_topological_sort(graph, key=list(fns).index))
    spec = ChainSpec(
        name=raw.name, description=raw.description, attach=tuple(raw.attach),
        xdp_mode=raw.xdp_mode, mode=raw.mode, on_miss=raw.on_miss, exit=raw.exit,
        entry=entry, functions=tuple(fns[n] for n in order), warnings=_warnings(fns, loc))
    return replace(spec, warnings=spec.warnings + _pitfalls(spec, loc))


def _pitfalls(spec: ChainSpec, loc: Locator) -> tuple[str, ...]:
    """What the kernel would do to the chain's packets (see vnfchain.pitfalls)."""
    out = []
    for p in pitfalls.chain_pitfalls(spec):
        line = loc.line(("functions", p.where.split("'")[1])) if "'" in p.where else None
        out.append((f"{loc.file}:{line}: " if loc.file and line else "") + str(p))
    return tuple(out)


def _warnings(fns: dict[str, FunctionSpec], loc: Locator) -> tuple[str, ...]:
    """What each function type finds legal but suspicious, e.g. a shadowed rule."""
    out = []
    for f in fns.values():
        for path, text, related in f.ftype.warnings(f.params):
            where = ("functions", f.name) + tuple(path)
            line = loc.line(where)
            prefix = f"{loc.file}:{line}: " if loc.file and line else ""
            other = loc.line(("functions", f.name) + tuple(related)) if related else None
            suffix = f" (line {other})" if other and loc.file else ""
            out.append(f"{prefix}function '{f.name}': {text}{suffix}")
    return tuple(out)


def _chain_errors(exc: ValidationError, loc: Locator) -> list[SpecError]:
    out = []
    for err in spec_errors(exc, loc, model=_RawChain):
        if err.key == "name" and not err.reason.startswith("missing"):
            err = loc.error(f"chain name {_value(exc, 'name')!r} must match [a-z][a-z0-9-]{{0,22}} (it is "
                            f"used in pin paths and interface records); rename it", ("name",))
        elif err.key == "functions" and not err.reason.startswith("unknown"):
            err = loc.error("a chain needs at least one function under 'functions:', e.g. "
                            "functions: {count: {type: counter}} (see `vnfchain functions`)", ("functions",))
        out.append(err)
    return out


def _value(exc: ValidationError, key: str):
    return next((e.get("input") for e in exc.errors() if e["loc"][:1] == (key,)), None)


def _function(name: str, body: dict[str, Any], loc: Locator) -> FunctionSpec:
    path = ("functions", name)
    if not re.fullmatch(FUNCTION_NAME, str(name)):
        raise loc.error(f"function name {str(name)!r} must be a lower-case identifier of at most 24 "
                        f"characters ([a-z_][a-z0-9_]*); rename it", path)
    if not isinstance(body, dict):
        raise loc.error(f"function '{name}' must be a mapping with at least 'type:'", path)
    body = dict(body)
    type_name = body.pop("type", None)
    if type_name is None:
        raise loc.error(f"function '{name}' has no 'type:'; known types: "
                        f"{', '.join(sorted(functions.REGISTRY))}", path)
    ftype = functions.get(type_name) if isinstance(type_name, str) else None
    if ftype is None:
        raise loc.error(f"function '{name}': unknown type '{type_name}'; known types: "
                        f"{', '.join(sorted(functions.REGISTRY))} (see `vnfchain functions`)",
                        path + ("type",))
    nxt = _next(name, body.pop("next", None), loc)
    try:
        # the context lets a parameter name a file relative to the chain file
        params = ftype.Params.model_validate(body, context={"chain_file": loc.file})
    except ValidationError as exc:
        errors = [SpecError(f"function '{name}' ({type_name}): {err.reason}", file=err.file,
                            line=err.line, key=err.key)
                  for err in spec_errors(exc, loc, model=ftype.Params, prefix=path)]
        SpecErrors.raise_if(errors)
    return FunctionSpec(name=name, type=type_name, params=params, next=nxt)


def _next(name: str, value: Any, loc: Locator) -> tuple[tuple[str, str], ...]:
    path = ("functions", name, "next")
    if value is None:
        return ()
    if isinstance(value, str):
        return ((DEFAULT, value),)
    if isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        return tuple(value.items())
    raise loc.error(f"function '{name}': 'next' must name one function or map labels to "
                    f"functions, e.g. next: {{http: lb, default: out}}", path)


def _graph(fns: dict[str, FunctionSpec]) -> nx.MultiDiGraph:
    g = nx.MultiDiGraph()
    g.add_nodes_from(fns)
    for f in fns.values():
        for label, target in f.next:
            g.add_edge(f.name, target, branch=label)
    return g


def _entry(entry: str | None, g: nx.MultiDiGraph, loc: Locator) -> str:
    if entry is not None:
        if entry not in g:
            raise loc.error(f"entry '{entry}' is not a function; functions are: {', '.join(g)}", ("entry",))
        return entry
    roots = [n for n in g if g.in_degree(n) == 0]
    if len(roots) == 1:
        return roots[0]
    if not roots:
        return next(iter(g))  # every node has a predecessor: the cycle check reports it
    raise loc.error(f"ambiguous entry: {', '.join(roots)} have no predecessor; "
                    f"set 'entry:' to the function packets enter first", ("functions",))


def _check_next(fns: dict[str, FunctionSpec], loc: Locator) -> None:
    """Before the graph is built: a missing target would otherwise become a node."""
    for f in fns.values():
        emits = f.ftype.labels(f.params)
        for label, target in f.next:
            where = ("functions", f.name, "next") + (() if label == DEFAULT else (label,))
            if target not in fns:
                raise loc.error(f"function '{f.name}': next names '{target}', which is not a "
                                f"function; functions are: {', '.join(fns)}", where)
            if label != DEFAULT and label not in emits:
                can = ", ".join(sorted(emits)) or "none"
                raise loc.error(f"function '{f.name}' ({f.type}) never emits label '{label}' "
                                f"(its labels: {can}); use one of them or 'default'", where)


def _check_graph(g, entry, mode, loc: Locator) -> None:
    try:
        cycle = nx.find_cycle(g)
    except nx.NetworkXNoCycle:
        cycle = None
    if cycle:
        names = [u for u, *_ in cycle] + [cycle[0][0]]
        raise loc.error(f"functions form a cycle: {' -> '.join(names)}; a chain must be a DAG",
                        ("functions", cycle[0][0], "next"))
    unreachable = [n for n in g if n != entry and n not in nx.descendants(g, entry)]
    if unreachable:
        raise loc.error(f"function(s) {', '.join(unreachable)} cannot be reached from entry "
                        f"'{entry}'; connect them with 'next' or remove them",
                        ("functions", unreachable[0]))
    longest = nx.dag_longest_path(g)
    if mode == "tailcall" and len(longest) > MAX_TAIL_CALLS:
        raise loc.error(f"path {' -> '.join(longest)} needs {len(longest)} tail calls; the kernel "
                        f"allows {MAX_TAIL_CALLS}: shorten it or use mode: fused", ("functions",))


def _check_attach(attach, loc: Locator) -> None:
    seen = set()
    for i, a in enumerate(attach):
        if (a.interface, a.netns) in seen:
            raise loc.error(f"interface {a} is listed twice under attach; remove one", ("attach", i))
        seen.add((a.interface, a.netns))


# -- the other spellings: plain dicts (YAML) and networkx graphs -----------------------

def spec_to_dict(spec: ChainSpec) -> dict[str, Any]:
    out: dict[str, Any] = {"name": spec.name}
    if spec.description:
        out["description"] = spec.description
    if spec.attach:
        out["attach"] = [a.model_dump(exclude_none=True) for a in spec.attach]
    out.update(xdp_mode=spec.xdp_mode, mode=spec.mode, on_miss=spec.on_miss, exit=spec.exit,
               entry=spec.entry)
    out["functions"] = {f.name: _function_dict(f) for f in spec.functions}
    return out


def _function_dict(f: FunctionSpec) -> dict[str, Any]:
    body: dict[str, Any] = {"type": f.type}
    body.update(f.params.model_dump(mode="json", exclude_defaults=True, exclude_none=True))
    if f.next == ((DEFAULT, f.default_next),) and f.default_next:
        body["next"] = f.default_next
    elif f.next:
        body["next"] = dict(f.next)
    return body


def spec_to_graph(spec: ChainSpec) -> nx.DiGraph:
    g = nx.DiGraph(**{k: v for k, v in spec_to_dict(spec).items() if k != "functions"})
    for f in spec.functions:
        g.add_node(f.name, type=f.type, **f.params.model_dump(mode="json", exclude_defaults=True, exclude_none=True))
    edges: dict[tuple[str, str], list[str | None]] = {}
    for f in spec.functions:
        for label, target in f.next:
            edges.setdefault((f.name, target), []).append(None if label == DEFAULT else label)
    for (u, v), labels in edges.items():
        g.add_edge(u, v, branch=labels[0] if len(labels) == 1 else labels)
    return g


def dict_from_graph(g: nx.DiGraph) -> dict[str, Any]:
    """A networkx graph in the YAML's shape: graph attributes are the chain's keys,
    nodes are functions (attribute ``type`` plus parameters), an edge without
    ``branch`` (or ``branch=None``) is the default successor, ``branch="http"`` a
    labelled one (a list for several labels to the same successor)."""
    data: dict[str, Any] = dict(g.graph)
    fns: dict[str, dict[str, Any]] = {}
    for node, attrs in g.nodes(data=True):
        fns[str(node)] = dict(attrs)
    for u, v, attrs in g.edges(data=True):
        labels = attrs.get("branch")
        for label in (labels if isinstance(labels, list) else [labels]):
            nxt = fns[str(u)].setdefault("next", {})
            nxt[label or DEFAULT] = str(v)
    data["functions"] = fns
    return data
