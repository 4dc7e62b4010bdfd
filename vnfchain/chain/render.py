"""Render: a chain spec becomes C sources (pure; no root, no BCC).

One unit per chain: in tail-call mode it holds every function as its own XDP
program plus the entry; in fused mode one program runs the whole graph. Both
wrap the same function bodies. (BCC spends ~0.4 s per unit whatever its size,
so one compile per chain.)

Pins are laid out for live change:

    <chain>/g<N>/      progs, state, entry, fn_<name>  (one generation)
    <chain>/maps/      <fn>_<map>-<fingerprint>  (function state, kept across
                       generations while the map's definition stays the same)

A map's fingerprint hashes its kind, size and the layouts of its key and value
(vnfchain/layout.py: fields, types and nested structs, not comments), so an
upgrade that keeps a map's layout keeps the map (and the flows in it), and one
that changes it gets a fresh map instead of a mismatched one.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import jinja2

from ..contract import RenderContext
from ..errors import RenderError
from ..functions import REGISTRY
from .model import ChainSpec, FunctionSpec
from .verdicts import CounterLayout, all_reasons

ENTRY_PROGRAM = "vc_entry"
UNIT_NAME = "chain.bpf.c"
XDP_ACTIONS = {"drop": "XDP_DROP", "pass": "XDP_PASS", "tx": "XDP_TX"}
PRELUDE, ENTRY = "(prelude)", "(entry)"   # section names besides the functions'


def templates_dir() -> Path:
    """templates/bpf, inside the installed package or next to it in a checkout."""
    packaged = Path(str(resources.files("vnfchain"))) / "templates" / "bpf"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "templates" / "bpf"


def lib_dir() -> Path:
    return templates_dir() / "lib"


def generation_dir(pin_dir: str | Path, generation: int) -> Path:
    return Path(pin_dir) / f"g{generation}"


@dataclass(frozen=True)
class Unit:
    """One C translation unit and the XDP programs to load from it."""

    name: str                               # file name, e.g. "chain.bpf.c"
    source: str
    programs: tuple[tuple[str, str], ...]   # (C function, chain function or "" for the entry)
    sections: dict[str, str] = field(default_factory=dict)   # section -> hash of its code
    map_pins: dict[str, str] = field(default_factory=dict)   # C map name -> pin path


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


def render(spec: ChainSpec, pin_dir: str, mode: str | None = None, generation: int = 1) -> list[Unit]:
    mode = mode or spec.mode
    common = _common_vars(spec, pin_dir, generation)
    map_pins: dict[str, str] = {}
    bodies = [(f, _body(spec, f, pin_dir, map_pins)) for f in spec.functions]
    if mode == "fused":
        source = _template("chain/fused.bpf.c.j2").render(
            unit="fused program", bodies=bodies, tailcall=0, **common)
        programs: tuple = ((ENTRY_PROGRAM, ""),)
    else:
        source = _template("chain/tailcall.bpf.c.j2").render(
            unit="tail-call programs", bodies=bodies, tailcall=1, **common)
        programs = tuple((f"vc_fn_{f.name}", f.name) for f in spec.functions) + ((ENTRY_PROGRAM, ""),)
    source, sections = _mark_sections(source)
    return [Unit(UNIT_NAME, source, programs, sections, map_pins)]


_SECTION = re.compile(r"^/\* ---- (?:function (\S+) \((\S+)\)|entry) ---- \*/$")


def _mark_sections(source: str) -> tuple[str, dict[str, str]]:
    """Turn each section comment into a #line directive naming the section, so that
    clang's errors and the verifier's source notes say which function they are in
    ("chain.bpf.c (function fw (firewall)):57") with the rendered file's line numbers.
    Also returns a hash of each section's code, to tell what a live change touches."""
    lines = source.splitlines()
    texts: dict[str, list[str]] = {PRELUDE: [_lib_fingerprint()]}
    current = PRELUDE
    for i, text in enumerate(lines):
        m = _SECTION.match(text)
        if m:
            current = m.group(1) or ENTRY
            name = f"function {m.group(1)} ({m.group(2)})" if m.group(1) else "entry"
            lines[i] = f'#line {i + 2} "{UNIT_NAME} ({name})"'
            texts[current] = []
        else:
            texts[current].append(text)
    sections = {name: _digest("\n".join(body)) for name, body in texts.items()}
    return "\n".join(lines) + "\n", sections


def _lib_fingerprint() -> str:
    return "".join(_digest(p.read_text()) for p in sorted(lib_dir().glob("*.h")))


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _common_vars(spec: ChainSpec, pin_dir: str, generation: int) -> dict:
    return dict(
        chain=spec.name, gen_dir=str(generation_dir(pin_dir, generation)),
        nfuncs=len(spec.functions), defines=counter_layout().c_defines(), slots=spec.slots,
        labels=spec.labels, entry=spec.entry, on_miss=XDP_ACTIONS[spec.on_miss],
        exit=XDP_ACTIONS[spec.exit], exit_verdict=f"VC_{spec.exit.upper()}")


def context_for(spec: ChainSpec, f: FunctionSpec, **extra) -> RenderContext:
    netns = spec.attach[0].netns if spec.attach else None
    return RenderContext(chain=spec.name, function=f.name, prefix=f.name,
                         label_ids=spec.labels, netns=netns, **extra)


def _body(spec: ChainSpec, f: FunctionSpec, pin_dir: str, map_pins: dict[str, str]) -> str:
    ftype = f.ftype
    ctx = context_for(spec, f)
    variables = dict(ftype.template_vars(f.params, ctx))
    variables.update(p=f.name, maps={m.name: m.max_entries for m in ftype.maps(f.params)},
                     structs=ftype.c_structs(f.params, f.name), labels=spec.labels, params=f.params)
    body = _template(ftype.template).render(**variables).rstrip() + "\n"
    pins = _map_pins(body, pin_dir, _definitions(ftype.structs(f.params), f.name))
    map_pins.update(pins)
    defines = "".join(f'#define VC_PIN_{name} "{path}"\n' for name, path in pins.items())
    return defines + body


_VC_MAP = re.compile(r'VC_MAP(?:_F)?\(\s*"(\w+)"\s*,\s*([^,]+?)\s*,\s*([^,]+?)\s*,\s*(\w+)\s*,\s*([^)]+?)\s*\)')
_VC_RINGBUF = re.compile(r"VC_RINGBUF\(\s*(\w+)\s*,\s*([^)]+?)\s*\)")


def _definitions(layouts, prefix: str) -> dict[str, str]:
    """C type as the template spells it -> the layout's definition."""
    return {s.c_type(prefix): s.definition() for layout in layouts for s in layout.structs()}


def _map_pins(body: str, pin_dir: str, definitions: dict[str, str]) -> dict[str, str]:
    """Pin path of every map the body declares, named by its definition's fingerprint."""
    pins = {}
    macros = dict(re.findall(r"^#define\s+(\w+)\s+(.+?)\s*$", body, re.M))
    for kind, key, value, name, size in _VC_MAP.findall(body):
        definition = "|".join([kind, _type_text(key, definitions, name), _type_text(value, definitions, name), size])
        pins[name] = f"{pin_dir}/maps/{name}-{_digest(_expand(definition, macros))[:8]}"
    for name, size in _VC_RINGBUF.findall(body):
        pins[name] = f"{pin_dir}/maps/{name}-{_digest(_expand(f'ringbuf|{size}', macros))[:8]}"
    return pins


def _expand(text: str, macros: dict[str, str]) -> str:
    """The body's own #define constants substituted (twice, for one level of
    nesting): a struct sized by FW_WORDS changes when FW_WORDS does."""
    for _ in range(2):
        text = re.sub(r"\b\w+\b", lambda m: macros.get(m.group(0), m.group(0)), text)
    return text


def _type_text(ctype: str, definitions: dict[str, str], map_name: str) -> str:
    """A struct's layout (its definition), or the scalar type's name itself."""
    if not ctype.startswith("struct"):
        return ctype
    ctype = re.sub(r"\s+", " ", ctype)
    if ctype not in definitions:
        raise RenderError(f"map {map_name} is declared with {ctype}, which is not a layout of the function "
                          f"type's maps(); declare it there (vnfchain/layout.py)")
    return definitions[ctype]


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
