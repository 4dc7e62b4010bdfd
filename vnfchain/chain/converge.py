"""Converge: compare a chain's record with the kernel, and make the kernel match.

Between two deploys anything may happen to what a chain is made of: a
container restart recreates its interfaces (a new ifindex, no XDP program),
someone runs `ip link set dev X xdp off`, removes a pin (a prog array loses
every slot with its last pin), empties a slot, or a vnfchain dies half-way.
``observe`` compares the record with the kernel, reading only, and returns a
``Drift`` per difference. `vnfchain status` shows them and deploy repairs
them, in the same words:

    status: dut-lan@vc-pvp-dut (recreated: ifindex 12 -> 57): does not run the chain
    deploy: re-attached to dut-lan@vc-pvp-dut (recreated: ifindex 12 -> 57)

``plan`` adds what the file changes (change.plan_change: config, code,
topology) and refuses, before anything is touched, what deploy must not do:
an interface that runs someone else's program is never taken over. ``apply``
carries the plan out. What still lives is taken back as it is (a map pinned
again keeps its flows, a program its counters); when a program or map the
chain needs is gone, a new generation is built and swapped in. ``verify``
then observes again: a deploy succeeds only when nothing differs any more.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel

from .. import bpfsys, netlink
from ..errors import AttachError, DeployError
from ..names import InterfaceName
from . import attach
from .build import Progress, build_generation
from .change import (carried_counts, change, forget_maps, map_files, params_changed, plan_change,
                     populate_pinned, preflight_functions)
from .model import AttachPoint, ChainSpec, spec_from_dict, spec_to_dict
from .record import HISTORY, Attachment, MapIdentity, Record, Revision, pin_root
from .render import Unit, generation_dir, render

# what deploy does about a drift: (what --dry-run says it will do, what deploy says it did)
REPAIRS = {
    "attach": ("re-attach to {}", "re-attached to {}"),
    "attach-new": ("attach to {}", "attached to {}"),
    "switch": ("switch {} to the running programs", "switched {} to the running programs"),
    "detach": ("detach the chain from {}", "detached the chain from {}"),
    "record": ("update the record of {}", "updated the record of {}"),
    "forget": ("drop {} from the record", "dropped {} from the record"),
    "repin": ("re-pin {}", "re-pinned {}"),
    "refill": ("refill {}", "refilled {}"),
    "refresh": ("rewrite the maps of {}", "rewrote the maps of {}"),
    "remove": ("remove {}", "removed {}"),
    "resume": ("resume: {}", "resumed: {}"),
    "restart": ("remove what is left and deploy anew: {}", "removed what was left and deployed anew: {}"),
    "rebuild": ("build a new generation for {}", "built a new generation for {}"),
}
NOT_RUNNING = "does not run the chain"
UNREACHABLE = "the chain's programs still use it, but vnfchain cannot reach it"
GONE = "the chain cannot run as recorded"


@dataclass(frozen=True)
class Hook:
    """An attach point as the kernel has it now."""

    interface: str
    netns: str | None
    recorded: int | None            # the ifindex the record has (None: never attached)
    ifindex: int | None             # the ifindex now (None: the interface or its namespace is gone)
    program: tuple[int, str] | None = None   # (id, mode) of the XDP program there

    @property
    def key(self) -> tuple[str, str | None]:
        return self.interface, self.netns

    @property
    def point(self) -> AttachPoint:
        return AttachPoint(interface=self.interface, netns=self.netns)


@dataclass(frozen=True)
class Drift:
    """One way the kernel no longer matches the record."""

    problem: str          # what differs, in the words both status and deploy use
    effect: str           # what that does to the chain (status)
    action: str           # a key of REPAIRS, or "" when deploy cannot repair it
    fix: str = ""         # what the user does instead, when deploy cannot
    target: object = field(default=None, compare=False)   # what the repair acts on

    def status_line(self) -> str:
        return f"{self.problem}: {self.effect}" + (f"; {self.fix}" if self.fix and not self.action else "")

    @property
    def planned(self) -> str:
        return REPAIRS[self.action][0].format(self.problem)

    @property
    def done(self) -> str:
        return REPAIRS[self.action][1].format(self.problem)


# -- observe ----------------------------------------------------------------------------

def observe(record: Record) -> list[Drift]:
    """What differs between ``record`` and the kernel; reads only."""
    if record.state != "running":
        where = "after loading its programs" if record.built else "before it recorded its programs"
        unfinished = [Drift(f"deploy stopped {where} (state {record.state}, pid {record.pid})",
                            "the chain is not finished", "resume" if record.built else "restart")]
    else:
        unfinished = []
    if not record.built:
        return unfinished + [Drift(f"{a.where} (was being attached when vnfchain stopped)",
                                   "the chain's programs may run there", "restart") for a in record.pending]
    ours = entry_programs(record)
    return (unfinished + _hook_drift(record, ours) + _pin_drift(record) + _slot_drift(record)
            + _config_drift(record) + _stale_generations(record))


def entry_programs(record: Record) -> dict[int, int]:
    """{program id: generation} of the chain's entry programs: the recorded one,
    and any other generation's still pinned (a change that stopped half-way)."""
    found = {record.entry_prog_id: record.generation} if record.entry_prog_id else {}
    for pin in record.pin_dir.glob("g*/entry"):
        with contextlib.suppress(OSError, ValueError):
            found.setdefault(_pinned_id(pin, bpfsys.prog_id), int(pin.parent.name[1:]))
    found.pop(None, None)
    return found


def _hook(interface: str, netns: str | None, recorded: int | None) -> Hook:
    if not netlink.netns_exists(netns):
        return Hook(interface, netns, recorded, None)
    index = netlink.ifindex(interface, netns)
    return Hook(interface, netns, recorded, index, netlink.xdp_state(index, netns) if index else None)


def _hook_drift(record: Record, ours: dict[int, int]) -> list[Drift]:
    out = []
    for a in record.attachments:
        hook = _hook(a.interface, a.netns, a.ifindex)
        drift = _attachment_drift(hook, a.mode, record, ours)
        if drift:
            out.append(drift)
    for a in record.pending:
        hook = _hook(a.interface, a.netns, None)
        problem = f"{a.where} (was being attached when vnfchain stopped)"
        if hook.program and hook.program[0] in ours:
            out.append(Drift(problem, "the record does not list it", "record", target=hook))
        elif _named(record, hook.key):
            out.append(Drift(problem, NOT_RUNNING, "attach-new", target=hook))
        else:
            out.append(Drift(problem, "the record lists an attachment that was never made", "forget",
                             target=hook))
    listed = {a.key for a in record.attachments + record.pending}
    for point in (record.spec or {}).get("attach", []):
        key = (point["interface"], point.get("netns"))
        if key not in listed:
            hook = _hook(*key, None)
            out.append(_absent(hook) or Drift(f"{_where(key)} (not attached yet)", NOT_RUNNING, "attach-new",
                                              target=hook))
    return out


def _named(record: Record, key) -> bool:
    return any((p["interface"], p.get("netns")) == key for p in (record.spec or {}).get("attach", []))


def _where(key) -> str:
    return f"{key[0]}@{key[1] or 'root'}"


def _absent(hook: Hook) -> Drift | None:
    """The hook's interface or namespace is gone: nothing deploy can do about it."""
    fix = "create it, or remove it from 'attach:' and deploy again"
    if hook.ifindex is not None:
        return None
    if not netlink.netns_exists(hook.netns):
        return Drift(f"{_where(hook.key)} (network namespace '{hook.netns}' is gone)", NOT_RUNNING, "",
                     fix=fix, target=hook)
    return Drift(f"{_where(hook.key)} (interface gone)", NOT_RUNNING, "", fix=fix, target=hook)


def _attachment_drift(hook: Hook, mode: str | None, record: Record, ours: dict[int, int]) -> Drift | None:
    absent = _absent(hook)
    if absent:
        return absent
    where = _where(hook.key)
    recreated = f"recreated: ifindex {hook.recorded} -> {hook.ifindex}" if hook.ifindex != hook.recorded else ""
    if hook.program is None:
        return Drift(f"{where} ({recreated or 'its XDP program was detached'})", NOT_RUNNING, "attach",
                     target=hook)
    prog_id, running_mode = hook.program
    if prog_id == record.entry_prog_id:
        stale = [recreated, f"runs in {running_mode} mode, recorded {mode}" if running_mode != mode else ""]
        if any(stale):
            return Drift(f"{where} ({', '.join(filter(None, stale))}, runs the chain)",
                         "the record is out of date (undeploy would miss it)", "record", target=hook)
        return None
    if prog_id in ours:
        return Drift(f"{where} (runs generation {ours[prog_id]}'s entry program, id {prog_id})",
                     f"runs a stale generation of the chain, not generation {record.generation}", "switch",
                     target=hook)
    owner, fix = attach.owner_and_fix(hook.point, prog_id)
    return Drift(f"{where} (runs another program, id {prog_id}{f', of {owner}' if owner else ''})", NOT_RUNNING,
                 "", fix=f"deploy never replaces it: {fix}", target=hook)


@dataclass(frozen=True)
class Pin:
    """A pin the chain needs, and the object that belongs there."""

    path: Path
    kind: str                  # "program" | "map"
    id: int | None             # the object's id (None: an older vnfchain did not record it)
    layout: MapIdentity | None = None


def _pins(record: Record) -> list[Pin]:
    gen = record.gen_dir
    programs = [Pin(gen / "entry", "program", record.entry_prog_id)]
    programs += [Pin(gen / f"fn_{f.name}", "program", f.prog_id) for f in record.functions if f.prog_id]
    maps = [gen / "state"] + ([gen / "progs"] if record.mode == "tailcall" else []) \
        + [Path(p) for p in record.maps.values()]
    known = [(p, record.map_ids.get(str(p))) for p in maps]
    return programs + [Pin(p, "map", m.id if m else None, m) for p, m in known]


def _pin_drift(record: Record) -> list[Drift]:
    out = []
    for pin in _pins(record):
        try:
            held = _pinned_id(pin.path, bpfsys.prog_id if pin.kind == "program" else _map_identity)
        except FileNotFoundError:
            held = None
        if pin.id is None:       # an older record: what is pinned is taken for the chain's
            if held is None:
                out.append(Drift(f"{pin.path} (pin missing; vnfchain did not record which map it held)", GONE,
                                 "rebuild", target=pin))
            continue
        held_id = held.id if isinstance(held, MapIdentity) else held
        if held_id == pin.id:
            continue
        if held is None:
            what = "pin missing"
        elif pin.kind == "program":
            what = f"holds program id {held}, not the chain's id {pin.id}"
        else:
            layout = f" of another layout ({held.layout}; the chain's: {pin.layout.layout})" \
                if held.layout != pin.layout.layout else ""
            what = f"holds another map{layout}, id {held.id}, not the chain's id {pin.id}"
        if _alive(pin):
            effect = UNREACHABLE
            if pin.path.name == "progs":
                effect = "the kernel emptied the prog array when it lost its pin: tail calls fail"
            out.append(Drift(f"{pin.path} ({what})", effect, "repin", target=pin))
        else:
            out.append(Drift(f"{pin.path} ({what}; the {pin.kind} is gone)", GONE, "rebuild", target=pin))
    return out


def _pinned_id(path: Path, identify):
    fd = bpfsys.obj_get(str(path))
    try:
        return identify(fd)
    finally:
        os.close(fd)


def _map_identity(fd: int) -> MapIdentity:
    return MapIdentity.of(bpfsys.map_info(fd))


def _open(pin: Pin) -> int | None:
    """An fd of the object that belongs at ``pin``, None when it is gone."""
    if pin.kind == "program":
        return bpfsys.prog_by_id(pin.id)
    fd = bpfsys.map_by_id(pin.id)
    if fd is not None and _map_identity(fd) != pin.layout:    # the id was given to another map since
        os.close(fd)
        return None
    return fd


def _alive(pin: Pin) -> bool:
    fd = _open(pin)
    if fd is not None:
        os.close(fd)
    return fd is not None


def _slot_drift(record: Record) -> list[Drift]:
    if record.mode != "tailcall":
        return []
    progs = _prog_array(record)
    if progs is None:
        return []        # the array is gone: the pin's drift rebuilds the chain
    out = []
    with progs:
        for f in record.functions:
            slot = progs.lookup(f.slot.to_bytes(4, "little"))
            held = int.from_bytes(slot[0], "little") if slot else None
            if held == f.prog_id:
                continue
            what = "empty" if held is None else f"holds program id {held}, not the function's id {f.prog_id}"
            effect = f"packets bound for it get on_miss ({(record.spec or {}).get('on_miss', 'drop')})" \
                if held is None else "packets bound for it run another program"
            out.append(Drift(f"prog-array slot {f.slot} of function '{f.name}' ({what})", effect, "refill",
                             target=f))
    return out


def _prog_array(record: Record) -> bpfsys.PinnedMap | None:
    """The chain's prog array, by its pin or (pin lost) by its id; None when gone."""
    path = record.gen_dir / "progs"
    identity = record.map_ids.get(str(path))
    try:
        fd = bpfsys.obj_get(str(path))
        if identity and _map_identity(fd).id != identity.id:
            os.close(fd)
            raise FileNotFoundError(str(path))
    except FileNotFoundError:
        fd = _open(Pin(path, "map", identity.id, identity)) if identity else None
    return None if fd is None else bpfsys.PinnedMap(str(path), fd)


def _config_drift(record: Record) -> list[Drift]:
    """Interfaces the functions' config names whose ifindex changed since their
    maps were written (forward's interface, NAT's outside, a firewall's iif)."""
    out = []
    netns = _config_netns(record.spec or {})
    for function, named in record.config_ifindexes.items():
        for ifname, old in named.items():
            now = (netlink.ifindex(ifname, netns) or 0) if netlink.netns_exists(netns) else 0
            if now == old:
                continue
            what = (f"interface '{ifname}' gone" if not now else f"interface '{ifname}' appeared" if not old
                    else f"interface '{ifname}' recreated: ifindex {old} -> {now}")
            out.append(Drift(f"function '{function}' ({what})", "its maps hold the interface's old ifindex",
                             "refresh", target=function))
    return out


def _stale_generations(record: Record) -> list[Drift]:
    return [Drift(f"{d} (a generation left by a change that stopped half-way)", "its pins hold programs and maps "
                  "nothing should run", "remove", target=d) for d in _generation_dirs(record)
            if d != record.gen_dir]


def _generation_dirs(record: Record) -> list[Path]:
    return sorted(d for d in record.pin_dir.glob("g*") if d.is_dir() and d.name[1:].isdigit())


# -- the interfaces a config names ------------------------------------------------------

_INTERFACE = typing.get_args(InterfaceName)[1]   # the validator that marks an interface name


def config_interfaces(spec: ChainSpec) -> dict[str, set[str]]:
    """{function: the interfaces its parameters name}, found by type (InterfaceName)."""
    out = {}
    for f in spec.functions:
        names: set[str] = set()
        _walk(f.params, names)
        if names:
            out[f.name] = names
    return out


def _walk(model: BaseModel, names: set[str]) -> None:
    interfaces, nested = _fields_of(type(model))
    names.update(v for v in (getattr(model, f) for f in interfaces) if isinstance(v, str))
    for name in nested:
        value = getattr(model, name)
        for item in value if isinstance(value, (list, tuple)) else (value,):
            if isinstance(item, BaseModel):
                _walk(item, names)


@functools.cache
def _fields_of(model: type[BaseModel]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(fields that hold an interface name, fields that may hold models): a
    firewall's 100,000 rules are walked once each, not type-checked each."""
    interfaces = tuple(n for n, info in model.model_fields.items()
                       if _INTERFACE in info.metadata or _INTERFACE in _args(info.annotation))
    nested = tuple(n for n, info in model.model_fields.items()
                   if any(isinstance(a, type) and issubclass(a, BaseModel) for a in _args(info.annotation)))
    return interfaces, nested


def _args(annotation) -> list:
    """Every type and marker inside an annotation (list[Rule] | None -> list, Rule, None, ...)."""
    out = [annotation]
    for arg in typing.get_args(annotation):
        out += _args(arg)
    return out


def _config_netns(spec_dict: dict) -> str | None:
    """Where the functions' interfaces are looked up (render.context_for: the first attach point's netns)."""
    points = spec_dict.get("attach") or [{}]
    return points[0].get("netns")


def resolve_config_interfaces(spec: ChainSpec) -> dict[str, dict[str, int]]:
    netns = spec.attach[0].netns if spec.attach else None
    if not netlink.netns_exists(netns):
        return {}
    return {fn: {ifname: netlink.ifindex(ifname, netns) or 0 for ifname in sorted(names)}
            for fn, names in config_interfaces(spec).items()}


# -- plan -------------------------------------------------------------------------------

@dataclass
class Plan:
    """What deploying ``spec`` does: the drift it repairs and the change it makes."""

    spec: ChainSpec
    record: Record | None          # the running chain, None: a new one
    targets: attach.Targets
    drift: list[Drift]
    change: str                    # "" (the definition is the running one) | new | config | code | topology
    changed: list[str]             # functions whose code changed
    unit: Unit
    redefines: bool = True         # the file is not the running definition (a vnfchain upgrade can
                                   # change code under the same definition)

    @property
    def kind(self) -> str:
        return self.change or ("repairs" if self.drift else "unchanged")

    @property
    def rebuild(self) -> bool:
        return any(d.action == "rebuild" for d in self.drift)

    def lines(self) -> list[str]:
        """The plan in words, one step a line (what `deploy --dry-run` prints)."""
        out = [f"repair: {d.planned}" for d in self.drift]
        record, spec, unit = self.record, self.spec, self.unit
        old_maps = record.maps if record and self.change != "new" else {}
        for cname, path in unit.map_pins.items():
            if cname not in old_maps:
                out.append(f"map: create {Path(path).name}")
            elif old_maps[cname] != path:
                out.append(f"map: replace {Path(old_maps[cname]).name} by {Path(path).name} (its definition "
                           f"changed: the new map starts empty)")
        out += [f"map: remove {Path(p).name}" for c, p in old_maps.items() if c not in unit.map_pins]
        if self.change in ("new", "topology") or self.rebuild:
            out.append("maps: write every function's config")
        elif self.change:
            out += [f"maps: write the config of function '{f.name}'" for f in params_changed(record, spec)]
        if self.change == "code":
            slots = {f.name: f.slot for f in record.functions}
            out += [f"slot: replace function '{name}' in prog-array slot {slots[name]}" for name in self.changed]
        kept = {a.key for a in record.attachments} if record and self.change != "new" else set()
        repaired = {d.target.key for d in self.drift if isinstance(d.target, Hook)}
        wanted = {(point.interface, point.netns): point for point, _ in self.targets}
        if self.change in ("new", "topology") or self.rebuild:
            generation = 1 if self.change == "new" else _next_generation(record) if self.rebuild \
                else record.generation + 1     # a stale generation is removed first
            out.append(f"programs: build generation {generation} (entry, prog array, "
                       f"{len(spec.functions)} functions, {spec.mode})")
            out += [f"attachment: switch {wanted[key]} to generation {generation} (XDP_FLAGS_REPLACE)"
                    for key in wanted if key in kept - repaired]
        out += [f"attachment: attach to {wanted[key]}" for key in wanted if key not in kept | repaired]
        out += [f"attachment: detach from {a.where}" for a in (record.attachments if kept else ())
                if a.key not in wanted and a.key not in repaired]
        return out


def same_definition(record: Record, spec: ChainSpec) -> bool:
    return record.spec == json.loads(json.dumps(spec_to_dict(spec)))


def plan(spec: ChainSpec) -> Plan:
    """What deploying ``spec`` would do; changes nothing. Raises what would stop
    the deploy before it touches anything: a missing interface, someone else's
    program on one of the file's interfaces, a function's missing interface."""
    record = Record.read(spec.name)
    if record is None and (pin_root() / spec.name).exists():   # its record removed by hand, or never written
        record = Record(name=spec.name, state="no record", pin_dir=pin_root() / spec.name)
    targets = attach.resolve(spec)
    ours = entry_programs(record) if record else {}
    for point, index in targets:
        running = netlink.xdp_state(index, point.netns)
        if running and running[0] not in ours:
            raise AttachError(attach.busy_message(point, index))
    preflight_functions(spec)
    if record is None or not record.built:
        (unit,) = render(spec, str(record.pin_dir if record else pin_root() / spec.name), generation=1)
        drift = [] if record is None else observe(record) if record.state != "no record" else \
            [Drift(f"no record, only pins under {record.pin_dir}", "vnfchain cannot tell what they are", "restart")]
        return Plan(spec, record, targets, drift, "new", [], unit)
    wanted = {(p.interface, p.netns) for p, _ in targets}
    drift = [d for d in (_for_file(d, wanted) for d in observe(record)) if d]
    (unit,) = render(spec, str(record.pin_dir), generation=record.generation)
    kind, changed = plan_change(record, unit, spec)
    redefines = not same_definition(record, spec)
    if not redefines and kind == "config":
        kind = ""
    return Plan(spec, record, targets, drift, kind, changed, unit, redefines)


def _for_file(drift: Drift, wanted: set) -> Drift | None:
    """A hook's drift as the file sees it: one the file does not attach to is
    dropped from the record, or detached if one of the chain's programs runs there."""
    hook = drift.target
    if not isinstance(hook, Hook) or hook.key in wanted:
        return drift
    if drift.action == "attach-new":
        return None
    action = "detach" if drift.action in ("switch", "record") else "forget"
    return Drift(drift.problem, drift.effect, action, target=hook)


def _next_generation(record: Record) -> int:
    return max([record.generation] + [int(d.name[1:]) for d in _generation_dirs(record)]) + 1


# -- apply ------------------------------------------------------------------------------

@dataclass
class Outcome:
    record: Record
    kind: str
    repairs: list[str]


def apply(p: Plan, say: Progress, tell: Progress, *, history: tuple[Revision, ...] | None = None) -> Outcome:
    """Carry out a plan of a chain that has a built record (``plan.change`` is not
    "new"); ``history``: what the record keeps of earlier definitions afterwards
    (None: the running definition joins it, if the file changes it)."""
    done: list[str] = []

    def did(drift: Drift) -> None:
        done.append(drift.done)
        tell(drift.done)

    record = p.record
    if p.rebuild:
        record = _rebuild(p, say, did)
        if p.change:
            record = record.replace(changes=record.changes + 1)
    else:
        record = _repair(p, say, did)
        if p.change:
            record, _kind = change(record, p.spec, say)
    record = settle(record, p.spec, p.record if p.redefines else None, history)
    # map pins the record does not name are what a killed change or a rebuild left
    forget_maps(set(map_files(record.pin_dir)) - set(record.maps.values()))
    verify(record)
    return Outcome(record, p.kind, done)


def settle(record: Record, spec: ChainSpec, replaced: Record | None, history=None) -> Record:
    """Record what the kernel now holds: each map's identity, the interfaces the
    config names; and, when ``replaced`` (the record before) ran another
    definition, that definition in the history (or ``history`` as given: a
    rollback takes its definition out of it). Saved."""
    updates = dict(map_ids=_map_identities(record), config_ifindexes=resolve_config_interfaces(spec))
    if replaced is not None and history is None:
        history = (replaced.history + (Revision(replaced.since, replaced.spec),))[-HISTORY:]
    if replaced is not None:
        updates["deployed"] = time.time()
    if history is not None:
        updates["history"] = history
    record = record.replace(**updates)
    record.save()
    return record


def verify(record: Record) -> None:
    """Every attach point runs the chain and nothing else differs, or a DeployError
    naming what still does."""
    left = observe(record)
    if left:
        raise DeployError(f"chain '{record.name}' does not run as its file says after the deploy: "
                          f"{'; '.join(d.status_line() for d in left)}")


def _map_identities(record: Record) -> dict[str, MapIdentity]:
    out = {}
    for pin in _pins(record):
        if pin.kind == "map":
            with contextlib.suppress(FileNotFoundError):
                out[str(pin.path)] = _pinned_id(pin.path, _map_identity)
    return out


def _repair(p: Plan, say: Progress, did) -> Record:
    """Repairs that keep the running generation: the record finished, pins put
    back, slots refilled, hooks re-attached, stale generations removed, maps
    that name a recreated interface rewritten."""
    record = p.record
    by_action: dict[str, list[Drift]] = {}
    for d in p.drift:
        by_action.setdefault(d.action, []).append(d)
    for d in by_action.get("resume", []):
        record = record.replace(state="running")
        did(d)
    for d in by_action.get("repin", []):
        _repin(d.target)
        did(d)
    for d in by_action.get("refill", []):
        _refill(record, d.target)
        did(d)
    record = _rehook(record, p, say, did)
    for d in by_action.get("remove", []):
        _remove_generation(d.target)
        did(d)
    refresh = by_action.get("refresh", [])
    if refresh:
        _refresh(record, sorted({d.target for d in refresh}))
        for d in refresh:
            did(d)
    record.save()
    return record


def _repin(pin: Pin) -> None:
    fd = _open(pin)
    if fd is None:
        raise DeployError(f"the {pin.kind} of {pin.path} went away while vnfchain repaired the chain; "
                          f"deploy again, which builds a new generation")
    try:
        pin.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            pin.path.unlink()          # someone else's object: the pin is the chain's
        bpfsys.obj_pin(fd, str(pin.path))
    finally:
        os.close(fd)


def _refill(record: Record, slot) -> None:
    fd = bpfsys.prog_by_id(slot.prog_id)
    if fd is None:
        raise DeployError(f"function '{slot.name}''s program went away while vnfchain repaired the chain; "
                          f"deploy again, which builds a new generation")
    try:
        with bpfsys.PinnedMap(str(record.gen_dir / "progs")) as progs:
            progs.update(slot.slot.to_bytes(4, "little"), fd.to_bytes(4, "little"))
    finally:
        os.close(fd)


def _rehook(record: Record, p: Plan, say: Progress, did) -> Record:
    """Put the running entry program back on every hook of the file that lost it,
    switch hooks that run a stale generation, and bring the record up to date.
    Hooks the file adds are the live change's (and a pending one never made
    is one of them)."""
    hooks = [d for d in p.drift if isinstance(d.target, Hook)]
    if not hooks:
        return record
    drift_of = {d.target.key: d for d in hooks}
    adopted = [Attachment(h.interface, h.netns, h.ifindex, h.program[1]) for h in   # pending, and ours
               (d.target for d in hooks if d.action in ("record", "detach") and d.target.recorded is None)]
    recorded = {a.key: a for a in record.attachments + tuple(adopted)}
    known = set(recorded) | {(pt["interface"], pt.get("netns")) for pt in record.spec["attach"]}
    targets = [(point, index) for point, index in p.targets if (point.interface, point.netns) in known]
    here = {(point.interface, point.netns) for point, _ in targets}
    keep, running, detach, others, opened = {}, {}, [], [], []
    try:
        for point, index in targets:
            key = (point.interface, point.netns)
            d = drift_of.get(key)
            if d is None:
                keep[key] = recorded[key]
            elif d.action == "record":
                keep[key] = attach.noted(point, index, d.target.program[1])
            elif d.action == "switch":
                running[key] = (_opened(opened, d.target.program[0]), d.target.program[1])
        for a in recorded.values():      # hooks the file no longer names: the live change detaches them
            d = drift_of.get(a.key)
            if a.key in here or (d and d.action == "forget"):
                continue
            now = Attachment(a.interface, a.netns, d.target.ifindex, d.target.program[1]) if d else a
            if d and d.action == "detach":
                detach.append((now, _opened(opened, d.target.program[0])))
            else:
                others.append(now)
        opened.append(bpfsys.obj_get(str(record.gen_dir / "entry")))
        attachments = attach.retarget(record, p.spec, targets, opened[-1], running, say, keep=keep, detach=detach)
    finally:
        for fd in opened:
            os.close(fd)
    for d in hooks:
        did(d)
    return record.replace(attachments=attachments + tuple(others), pending=())


def _opened(opened: list[int], prog_id: int) -> int:
    fd = bpfsys.prog_by_id(prog_id)
    if fd is None:
        raise DeployError(f"program id {prog_id} went away while vnfchain repaired the chain; deploy again")
    opened.append(fd)
    return fd


def _remove_generation(gen_dir: Path) -> None:
    """Remove a stale generation's pins once no interface runs its entry program
    (removing the pins of a generation still attached would empty its prog array)."""
    fd = None
    with contextlib.suppress(OSError):
        fd = bpfsys.obj_get(str(gen_dir / "entry"))
    if fd is not None:
        try:
            for found in netlink.find_xdp({bpfsys.prog_id(fd)}):
                netlink.xdp_detach(found["ifindex"], found["mode"], found["netns"], expected_fd=fd)
        finally:
            os.close(fd)
    shutil.rmtree(gen_dir)


def _refresh(record: Record, functions: list[str]) -> None:
    """Write the running config again into the maps of ``functions``, whose
    interfaces were recreated: the same path a config change takes."""
    running = spec_from_dict(record.spec)
    populate_pinned(running, [f for f in running.functions if f.name in functions], record.maps, record)


def _rebuild(p: Plan, say: Progress, did) -> Record:
    """A program or map the chain needs is gone: build a new generation of the
    file's chain beside whatever is left and put it on every hook. Maps that
    still live are pinned again first, so that the new programs keep their state."""
    record, spec = p.record, p.spec
    for d in p.drift:
        if d.action == "repin" and d.target.kind == "map":
            _repin(d.target)
        elif d.action == "rebuild":
            with contextlib.suppress(FileNotFoundError):
                d.target.path.unlink()      # another's object there: the new generation makes its own
    ours = entry_programs(record)
    generation = _next_generation(record)
    wanted = {(point.interface, point.netns) for point, _ in p.targets}
    running, detach, opened = {}, [], []
    built = None
    try:
        for point, index in p.targets:
            program = netlink.xdp_state(index, point.netns)
            if program and program[0] in ours:
                running[(point.interface, point.netns)] = (_opened(opened, program[0]), program[1])
        for a in record.attachments + record.pending:
            hook = _hook(a.interface, a.netns, a.ifindex)
            if a.key not in wanted and hook.program and hook.program[0] in ours:
                detach.append((Attachment(a.interface, a.netns, hook.ifindex, hook.program[1]),
                               _opened(opened, hook.program[0])))
        built = build_generation(spec, record.pin_dir, generation, say, running=record.spec)
        attachments = attach.retarget(record, spec, p.targets, built.entry_fd, running, say, detach=detach)
        # what the old generation counted, read once it is off every hook (if its state still lives)
        carried = carried_counts(record, spec) if (record.gen_dir / "state").exists() else record.carried
    except BaseException:
        if built:
            built.close()
        shutil.rmtree(generation_dir(record.pin_dir, generation), ignore_errors=True)
        raise
    finally:
        for fd in opened:
            os.close(fd)
    new = built.adopted_by(record, spec).replace(attachments=attachments, pending=(), state="running",
                                                 carried=carried)
    built.close()
    new.save()
    for d in _generation_dirs(record):
        if d != new.gen_dir:
            _remove_generation(d)
    for d in p.drift:     # what was pinned again or refilled in the old generation went with it
        if not (d.action == "refill" or d.action == "repin" and record.gen_dir in d.target.path.parents):
            did(d)
    return new
