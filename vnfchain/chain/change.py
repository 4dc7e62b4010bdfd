"""Change a running chain live, as little as covers the difference.

``plan_change`` picks the kind:

- ``config``: only map contents differ: maps are updated in place;
- ``code``: some functions' code differs (tail-call mode): their programs are
  replaced in their prog-array slots, one atomic update each;
- ``topology``: anything else: a new generation (prog array, entry) is built
  beside the running one and swapped in with ``XDP_FLAGS_REPLACE``; what the
  old one counted is carried over by name in the record (``Record.carried``),
  read once it runs no more.

Function maps whose definition did not change are reused in every case, so
state survives. What could fail half-way is checked first; a change that fails
anyway puts back what it switched and leaves the record as it was.
"""
from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import replace
from pathlib import Path

from .. import bpfsys
from ..errors import DeployError
from . import attach
from .build import Progress, build_generation, contexts, fill, load_functions
from .maps import MapReader, chain_counters
from .model import ChainSpec, spec_from_dict, spec_to_dict
from .record import Record
from .render import ENTRY, PRELUDE, Unit, generation_dir, render


def plan_change(record: Record, new: Unit, spec: ChainSpec) -> tuple[str, list[str]]:
    """("config" | "code" | "topology", functions whose code changed)."""
    old = record.sections
    same_frame = (record.mode == spec.mode
                  and [f.name for f in record.functions] == [f.name for f in spec.functions]
                  and old.get(PRELUDE) == new.sections[PRELUDE]
                  and old.get(ENTRY) == new.sections[ENTRY])
    changed = [f.name for f in spec.functions if old.get(f.name) != new.sections.get(f.name)]
    if same_frame and not changed:
        return "config", []
    if same_frame and spec.mode == "tailcall":
        return "code", changed
    return "topology", changed


def change(record: Record, spec: ChainSpec, say: Progress) -> tuple[Record, str]:
    """Make the running chain of ``record`` run ``spec``; the new record (saved)
    and the kind of change it took."""
    if record.state != "running":
        raise DeployError(f"chain '{spec.name}' did not finish deploying; `vnfchain undeploy "
                          f"{spec.name}` first")
    targets = attach.resolve(spec)
    _preflight(record, spec, targets)
    (unit,) = render(spec, str(record.pin_dir), generation=record.generation)
    kind, changed = plan_change(record, unit, spec)
    say(f"live change of chain '{spec.name}': {kind}" + (f" ({', '.join(changed)})" if changed else ""))
    old_maps = set(record.maps.values())
    try:
        if kind == "topology":
            new = _new_generation(record, spec, targets, say)
        else:
            new = _same_generation(record, spec, unit, changed, say)
            new = attach.reattach(new, spec, targets, say)
    except BaseException:
        forget_maps(set(map_files(record.pin_dir)) - old_maps)
        raise
    forget_maps(set(map_files(record.pin_dir)) - set(new.maps.values()))
    new = new.replace(changes=new.changes + 1)
    new.save()
    return new, kind


def _preflight(record: Record, spec: ChainSpec, targets: attach.Targets) -> None:
    """What could fail half-way through a live change, checked before it starts:
    the functions' interfaces, and that interfaces to add are free."""
    preflight_functions(spec)
    attach.check_free(record, targets)


def preflight_functions(spec: ChainSpec) -> None:
    """The interfaces and addresses the functions' config names are there."""
    for f, ctx in contexts(spec):
        f.ftype.preflight(f.params, ctx)


def params_changed(record: Record, spec: ChainSpec) -> list:
    """The functions whose parameters differ from the running chain's."""
    old = record.spec["functions"]
    return [f for f in spec.functions if old.get(f.name) != spec_to_dict(spec)["functions"][f.name]]


def populate_pinned(spec: ChainSpec, edited: list, pins: dict[str, str], record: Record) -> None:
    """Write the edited functions' config into their pinned maps; if that fails
    half-way, write the running config back (best effort) before the error
    goes up, so the maps and the record keep telling the same story."""
    ctx_of = {f.name: ctx for f, ctx in contexts(spec, record.spec)}
    try:
        for f in edited:
            fill(spec, f, MapReader(pins, f.name), ctx_of[f.name])
    except BaseException:
        running = spec_from_dict(record.spec)
        old = {f.name: (f, ctx) for f, ctx in contexts(running)}
        for f in edited:
            with contextlib.suppress(Exception):
                was, ctx = old[f.name]
                was.ftype.populate(MapReader(record.maps, f.name), was.params, ctx)
        raise


def _same_generation(record: Record, spec: ChainSpec, unit: Unit, changed: list[str],
                     say: Progress) -> Record:
    """Update maps in place and replace changed functions' programs in their slots."""
    new = record.replace(spec=spec_to_dict(spec), sections=unit.sections, maps=unit.map_pins)
    if not changed:
        # map updates only: the functions write their pinned maps, nothing compiles
        populate_pinned(spec, params_changed(record, spec), unit.map_pins, record)
        return new
    loaded = load_functions(spec, unit, changed, running=record.spec)
    try:
        slots = loaded.bpf[b"vc_progs"] if changed else None
        functions = []
        for f in record.functions:
            if f.name in changed:
                prog = loaded.programs[f"vc_fn_{f.name}"]
                say(f"replacing function '{f.name}' in slot {f.slot}")
                slots[slots.Key(f.slot)] = slots.Leaf(prog.fd)  # the atomic switch
                pin = record.gen_dir / f"fn_{f.name}"
                with contextlib.suppress(FileNotFoundError):
                    pin.unlink()
                bpfsys.obj_pin(prog.fd, str(pin))
                f = replace(f, prog_id=bpfsys.prog_id(prog.fd))
            functions.append(f)
        return new.replace(functions=tuple(functions))
    finally:
        loaded.close()


def _new_generation(record: Record, spec: ChainSpec, targets: attach.Targets, say: Progress) -> Record:
    """Build a generation beside the running one, swap XDP atomically, carry counters over."""
    # numbered past every generation pinned: one that a killed change left may
    # still run on an interface, and building into its directory would unpin
    # (and so empty) its prog array under the packets
    generation = max([record.generation] + [int(d.name[1:]) for d in record.pin_dir.glob("g*")
                                            if d.name[1:].isdigit()]) + 1
    built = None
    try:
        built = build_generation(spec, record.pin_dir, generation, say, running=record.spec)
        new = built.adopted_by(record, spec)
        new = new.replace(attachments=attach.swap(record, spec, targets, built.entry_fd, say), pending=())
        new = new.replace(carried=carried_counts(record, spec))
    except BaseException:
        if built:
            built.close()
        shutil.rmtree(generation_dir(record.pin_dir, generation), ignore_errors=True)
        raise
    built.close()
    new.save()   # the record names the attached generation before the old one goes
    shutil.rmtree(record.gen_dir, ignore_errors=True)
    return new


def carried_counts(record: Record, spec: ChainSpec) -> dict[str, dict[str, int]]:
    """What the functions ``spec`` keeps (by name) and the entry counted up to
    now, read from the old generation once the swap took it off every
    interface. The new generation counts from zero in a map nothing else
    writes: copying counts into it before the swap would miss what the old
    one counted until the swap, and adding them after it would race the
    packets the new one counts meanwhile."""
    keep = {f.name for f in spec.functions} | {ENTRY}
    return {row: {name: n for name, n in counters.items() if n}
            for row, counters in chain_counters(record).items() if row in keep and any(counters.values())}


def map_files(pin_dir: Path) -> list[str]:
    maps = pin_dir / "maps"
    return [str(p) for p in maps.iterdir()] if maps.is_dir() else []


def forget_maps(paths) -> None:
    """Unpin maps nothing uses any more (their programs hold them until replaced)."""
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
