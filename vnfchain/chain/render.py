"""Render: a chain spec becomes C sources (pure; no root, no BCC).

Tail-call mode renders one unit per function plus the entry program; fused mode
renders one unit holding the whole graph. Both wrap the same function bodies.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import jinja2

from ..errors import RenderError
from ..functions import REGISTRY, RenderContext
from .model import ChainSpec, FunctionSpec
from .verdicts import CounterLayout, all_reasons

ENTRY_PROGRAM = "vc_entry"
UNIT_NAME = "chain.bpf.c"
XDP_ACTIONS = {"drop": "XDP_DROP", "pass": "XDP_PASS", "tx": "XDP_TX"}


def templates_dir() -> Path:
    """templates/bpf, inside the installed package or next to it in a checkout."""
    packaged = Path(str(resources.files("vnfchain"))) / "templates" / "bpf"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "templates" / "bpf"


def lib_dir() -> Path:
    return templates_dir() / "lib"


@dataclass(frozen=True)
class Unit:
    """One C translation unit and the XDP programs to load from it."""

    name: str                               # file name, e.g. "fw.bpf.c"
    source: str
    programs: tuple[tuple[str, str], ...]   # (C function, chain function or "" for the entry)


def counter_layout() -> CounterLayout:
    """The same layout for every chain: all known reasons (stats rows stay comparable)."""
    return CounterLayout(all_reasons(t.reasons for t in REGISTRY.values()))


_env: jinja2.Environment | None = None


def _environment() -> jinja2.Environment:
    global _env
    if _env is None:
        _env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(templates_dir())),
            undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
            keep_trailing_newline=True)
    return _env


def render(spec: ChainSpec, pin_dir: str, mode: str | None = None) -> list[Unit]:
    """One unit per chain: in tail-call mode it holds every function as its own
    XDP program plus the entry; in fused mode one program runs the whole graph.
    (One compile per chain: BCC spends ~0.4 s per unit whatever its size.)"""
    mode = mode or spec.mode
    common = _common_vars(spec, pin_dir)
    bodies = [(f, _body(spec, f)) for f in spec.functions]
    if mode == "fused":
        source = _template("chain/fused.bpf.c.j2").render(
            unit="fused program", bodies=bodies, tailcall=0, **common)
        return [Unit(UNIT_NAME, _mark_sections(source), ((ENTRY_PROGRAM, ""),))]
    source = _template("chain/tailcall.bpf.c.j2").render(
        unit="tail-call programs", bodies=bodies, tailcall=1, **common)
    programs = tuple((f"vc_fn_{f.name}", f.name) for f in spec.functions) + ((ENTRY_PROGRAM, ""),)
    return [Unit(UNIT_NAME, _mark_sections(source), programs)]


_SECTION = re.compile(r"^/\* ---- (function \S+ \(\S+\)|entry) ---- \*/$")


def _mark_sections(source: str) -> str:
    """Turn each section comment into a #line directive naming the section, so that
    clang's errors and the verifier's source notes say which function they are in
    ("chain.bpf.c (function fw (firewall)):57") with the rendered file's line numbers."""
    lines = source.splitlines()
    for i, text in enumerate(lines):
        m = _SECTION.match(text)
        if m:
            lines[i] = f'#line {i + 2} "{UNIT_NAME} ({m.group(1)})"'
    return "\n".join(lines) + "\n"


def _common_vars(spec: ChainSpec, pin_dir: str) -> dict:
    return dict(
        chain=spec.name, pin_dir=pin_dir, nfuncs=len(spec.functions),
        defines=counter_layout().c_defines(), slots=spec.slots, labels=spec.labels,
        entry=spec.entry, on_miss=XDP_ACTIONS[spec.on_miss], exit=XDP_ACTIONS[spec.exit])


def context_for(spec: ChainSpec, f: FunctionSpec, **extra) -> RenderContext:
    netns = spec.attach[0].netns if spec.attach else None
    return RenderContext(chain=spec.name, function=f.name, prefix=f.name,
                         label_ids=spec.labels, netns=netns, **extra)


def _body(spec: ChainSpec, f: FunctionSpec) -> str:
    ftype = f.ftype
    ctx = context_for(spec, f)
    variables = dict(ftype.template_vars(f.params, ctx))
    variables.update(p=f.name, maps={m.name: m.max_entries for m in ftype.maps(f.params)},
                     labels=spec.labels, params=f.params)
    return _template(ftype.template).render(**variables).rstrip() + "\n"


def _template(name: str) -> jinja2.Template:
    try:
        return _environment().get_template(name)
    except jinja2.TemplateNotFound:
        raise RenderError(f"template {name} is missing from {templates_dir()}; "
                          f"reinstall vnfchain or add the template") from None
    except jinja2.TemplateSyntaxError as exc:
        raise RenderError(f"template {name}:{exc.lineno}: {exc.message}") from None


def write(units: list[Unit], out: Path) -> list[Path]:
    """Write the units and the shared headers they include, ready for clang."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "lib").mkdir(exist_ok=True)
    written = []
    for header in sorted(lib_dir().glob("*.h")):
        target = out / "lib" / header.name
        target.write_text(header.read_text())
        written.append(target)
    for unit in units:
        target = out / unit.name
        target.write_text(unit.source)
        written.append(target)
    return written
