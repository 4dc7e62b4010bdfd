"""Build a generation: render, compile, load, fill the maps, pin.

A generation is one prog array with the functions' programs in their slots
(tail-call mode), the entry program and the ``state`` map (metadata and
counters), pinned under ``<pin dir>/g<N>/``. Function maps are pinned once
under ``<pin dir>/maps/`` and shared by every generation whose definition of
them is the same (see render.py). Nothing here attaches or records anything.
"""
from __future__ import annotations

import contextlib
import errno
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .. import bpfsys, netlink
from ..errors import DeployError
from .compile import LoadedUnit, compile_unit
from .maps import MapReader
from .model import ChainSpec, spec_to_dict
from .record import FunctionSlot, Record
from .render import Unit, context_for, counter_layout, generation_dir, render

Progress = Callable[[str], None]


def quiet(_msg: str) -> None:
    pass


@dataclass
class Built:
    """A compiled and loaded generation, before or after it is swapped in."""

    unit: Unit
    loaded: LoadedUnit
    generation: int
    entry_fd: int
    prog_ids: dict[str, int]

    def close(self) -> None:
        self.loaded.close()
        with contextlib.suppress(OSError):
            os.close(self.entry_fd)

    def adopted_by(self, record: Record, spec: ChainSpec) -> Record:
        """``record`` describing this as the running generation of ``spec``."""
        return record.replace(
            counters=tuple(counter_layout().names), mode=spec.mode, spec=spec_to_dict(spec), generation=self.generation,
            gen_dir=generation_dir(record.pin_dir, self.generation),
            sections=self.unit.sections, maps=self.unit.map_pins, entry_prog_id=self.prog_ids[""],
            functions=tuple(FunctionSlot(f.name, f.type, i, self.prog_ids.get(f.name))
                            for i, f in enumerate(spec.functions)))


def build_generation(spec: ChainSpec, pin_dir: Path, generation: int, say: Progress,
                     running: dict | None = None) -> Built:
    """Compile a whole generation, fill its maps and slots, pin its programs
    (``running``: the spec of the chain it replaces, see ``contexts``)."""
    gen_dir = generation_dir(pin_dir, generation)
    gen_dir.mkdir(parents=True, exist_ok=True)
    (unit,) = render(spec, str(pin_dir), generation=generation)
    say(f"compiling chain '{spec.name}' ({len(spec.functions)} functions, {spec.mode})")
    loaded = compile_unit(unit, label=f"chain '{spec.name}'")
    try:
        programs = {fname: loaded.programs[cname] for cname, fname in unit.programs}
        populate(spec, loaded, running)
        prog_ids = {}
        if spec.mode == "tailcall":
            slots = loaded.bpf[b"vc_progs"]
            for i, f in enumerate(spec.functions):
                slots[slots.Key(i)] = slots.Leaf(programs[f.name].fd)
                bpfsys.obj_pin(programs[f.name].fd, str(gen_dir / f"fn_{f.name}"))
                prog_ids[f.name] = bpfsys.prog_id(programs[f.name].fd)
        entry = programs[""]
        bpfsys.obj_pin(entry.fd, str(gen_dir / "entry"))
        prog_ids[""] = bpfsys.prog_id(entry.fd)
        return Built(unit, loaded, generation, os.dup(entry.fd), prog_ids)
    except BaseException:
        loaded.close()
        raise


def load_functions(spec: ChainSpec, unit: Unit, names: list[str], running: dict | None = None) -> LoadedUnit:
    """Load ``unit`` with only the programs of the functions ``names`` (none: the
    maps alone) and fill every function's maps; the caller closes it."""
    loaded = compile_unit(unit, label=f"chain '{spec.name}'", load=[f"vc_fn_{n}" for n in names])
    try:
        populate(spec, loaded, running)
    except BaseException:
        loaded.close()
        raise
    return loaded


def contexts(spec: ChainSpec, running: dict | None = None):
    """(function, its RenderContext) for every function of ``spec``;
    ``running``: the spec of the chain being changed (as the record holds it),
    whose definition of a function of the same name and type its context gets."""
    netns = spec.attach[0].netns if spec.attach else None
    before = (running or {}).get("functions", {})
    for f in spec.functions:
        was = before.get(f.name)
        yield f, context_for(spec, f, resolve_ifindex=lambda ifname: netlink.ifindex(ifname, netns),
                             resolve_ipv4=lambda ifname: netlink.ipv4_addresses(ifname, netns),
                             running=was if was and was.get("type") == f.type else None)


def populate(spec: ChainSpec, loaded: LoadedUnit, running: dict | None = None) -> None:
    for f, ctx in contexts(spec, running):
        fill(spec, f, MapReader(loaded.unit.map_pins, f.name), ctx)


def fill(spec: ChainSpec, f, tables, ctx) -> None:
    """``f``'s config into its maps; a map that refuses it (full, most often)
    is said in words rather than as the syscall's OSError."""
    try:
        f.ftype.populate(tables, f.params, ctx)
    except OSError as exc:
        where = f"function '{f.name}' of chain '{spec.name}'"
        if exc.errno in (errno.E2BIG, errno.ENOSPC):
            raise DeployError(f"{where} cannot hold its config: {exc.strerror} (the map is full); "
                              f"give it fewer entries") from None
        raise DeployError(f"{where} could not write its config into its maps: {exc.strerror}; "
                          f"deploy again once that is fixed") from None
