"""Load, pin, attach, record, change live — and undo all of it.

A deployed chain lives in the kernel, not in this process:

    /sys/fs/bpf/vnfchain/<chain>/g<N>/  entry, fn_<name>, progs, state (metadata + counters)
    /sys/fs/bpf/vnfchain/<chain>/maps/  <fn>_<map>-<fingerprint> (function state)
    /run/vnfchain/<chain>.json          what deploy made: attachments, pins, spec (record.py)

The record is written before anything is made, so ``undeploy`` can finish a
deploy that crashed half-way. A failed deploy rolls back everything it made and
touches nothing it did not make.

Deploying a name that is running is a live change, the least disruptive that
covers the difference (see ``plan_change``):

- ``config``: only map contents differ: maps are updated in place;
- ``code``: some functions' code differs (tail-call mode): their programs are
  replaced in their prog-array slots, one atomic update each;
- ``topology``: anything else: a new generation (prog array, entry) is built
  beside the running one and swapped in with ``XDP_FLAGS_REPLACE``.

Function maps whose definition did not change are reused in every case, so
state survives; counters are carried over to a new generation.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

from pyroute2.netlink.exceptions import NetlinkError

from .. import bpfsys, netlink, statedir
from ..errors import AttachError, DeployError, EnvironmentError_, NotDeployedError, RecordError
from ..yamlio import Locator
from .compile import LoadedUnit, compile_unit
from .model import CHAIN_NAME, AttachPoint, ChainSpec, spec_from_dict, spec_to_dict
from .record import busy, locked, read_record, record_path, recorded_names, write_record
from .render import ENTRY, PRELUDE, Unit, context_for, counter_layout, generation_dir, render


def pin_root() -> Path:
    return Path(os.environ.get("VNFCHAIN_BPFFS", "/sys/fs/bpf/vnfchain"))


def _own_pin_root(create: bool = False) -> Path | None:
    """The pin root, refused when someone else made it (see statedir); None when
    it is not there (and not to be made)."""
    return statedir.owned_dir(pin_root(), create=create)


Progress = Callable[[str], None]


def _quiet(_msg: str) -> None:
    pass


# -- deploy -------------------------------------------------------------------------

def check_environment() -> None:
    if os.geteuid() != 0:
        raise EnvironmentError_("deploying needs root (BPF, XDP, pins); run it with sudo")
    if not os.path.ismount("/sys/fs/bpf"):
        raise EnvironmentError_("bpffs is not mounted; run `mount -t bpf bpf /sys/fs/bpf` "
                                "(scripts/setup.sh does)")


def deploy(spec: ChainSpec, *, attach: list[AttachPoint] | None = None,
           progress: Progress | None = None) -> "Deployment":
    """Deploy ``spec``, or change the running chain of that name to it."""
    check_environment()
    if attach is not None:
        spec = spec.with_changes(attach=tuple(attach))
    with locked(spec.name):
        record = read_record(spec.name)
        if record is not None:
            return _change(record, spec, progress or _quiet)
        return _fresh(spec, progress or _quiet)


def _fresh(spec: ChainSpec, say: Progress) -> "Deployment":
    pin_dir = _own_pin_root(create=True) / spec.name
    if pin_dir.exists():
        raise DeployError(f"{pin_dir} is left over from an earlier deploy of '{spec.name}' that "
                          f"did not finish; `vnfchain undeploy {spec.name}` removes it")
    targets = _resolve_attach(spec)
    record = {
        "name": spec.name, "state": "deploying", "pid": os.getpid(), "created": time.time(),
        "mode": spec.mode, "pin_dir": str(pin_dir), "generation": 1, "changes": 0,
        "counters": list(counter_layout().names), "attachments": [],
    }
    write_record(record)
    built = None
    try:
        (pin_dir / "maps").mkdir(parents=True)
        built = _build(spec, pin_dir, 1, say)
        _adopt(record, spec, built)
        write_record(record)
        for point, index in targets:
            say(f"attaching to {point}")
            # noted on disk first: if this process dies right after attaching,
            # undeploy still finds (and detaches) this interface
            record["pending"] = [_attachment(point, index, None)]
            write_record(record)
            mode = _attach(built.entry_fd, point, index, spec.xdp_mode)
            record["attachments"].append(_attachment(point, index, mode))
            del record["pending"]
            write_record(record)
        record["state"] = "running"
        write_record(record)
    except BaseException:
        with contextlib.suppress(Exception):
            _teardown(record)
        raise
    finally:
        if built:
            built.close()
    return Deployment(record, last_change="new")


@dataclass
class _Built:
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


def _build(spec: ChainSpec, pin_dir: Path, generation: int, say: Progress) -> _Built:
    """Compile a whole generation, fill its maps and slots, pin its programs."""
    gen_dir = generation_dir(pin_dir, generation)
    gen_dir.mkdir(parents=True, exist_ok=True)
    (unit,) = render(spec, str(pin_dir), generation=generation)
    say(f"compiling chain '{spec.name}' ({len(spec.functions)} functions, {spec.mode})")
    loaded = compile_unit(unit, label=f"chain '{spec.name}'")
    try:
        programs = {fname: loaded.programs[cname] for cname, fname in unit.programs}
        _populate(spec, loaded)
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
        return _Built(unit, loaded, generation, os.dup(entry.fd), prog_ids)
    except BaseException:
        loaded.close()
        raise


def _contexts(spec: ChainSpec):
    resolve = _resolver(spec)
    netns = spec.attach[0].netns if spec.attach else None
    for f in spec.functions:
        yield f, context_for(spec, f, resolve_ifindex=resolve,
                             resolve_ipv4=lambda ifname: netlink.ipv4_addresses(ifname, netns))


def _populate(spec: ChainSpec, loaded: LoadedUnit) -> None:
    for f, ctx in _contexts(spec):
        f.ftype.populate(_FunctionTables(loaded.bpf, loaded.unit.map_pins, f.name), f.params, ctx)


def _params_changed(record: dict, spec: ChainSpec) -> list:
    """The functions whose parameters differ from the running chain's."""
    old = record["spec"]["functions"]
    return [f for f in spec.functions if old.get(f.name) != spec_to_dict(spec)["functions"][f.name]]


def _preflight(record: dict, spec: ChainSpec, targets) -> None:
    """What could fail half-way through a live change, checked before it starts:
    the functions' interfaces, and that interfaces to add are free."""
    for f, ctx in _contexts(spec):
        f.ftype.preflight(f.params, ctx)
    attached = {(a["interface"], a["netns"]) for a in record["attachments"]}
    for point, index in targets:
        if (point.interface, point.netns) not in attached and netlink.xdp_state(index, point.netns):
            raise AttachError(_busy_message(point, index))


def _adopt(record: dict, spec: ChainSpec, built: _Built) -> None:
    """Make the record describe ``built`` as the running generation of ``spec``."""
    record.update(
        mode=spec.mode, spec=spec_to_dict(spec), generation=built.generation,
        gen_dir=str(generation_dir(record["pin_dir"], built.generation)),
        sections=built.unit.sections, maps=built.unit.map_pins,
        entry_prog_id=built.prog_ids[""],
        functions=[{"name": f.name, "type": f.type, "slot": i,
                    "prog_id": built.prog_ids.get(f.name)} for i, f in enumerate(spec.functions)])


def _attachment(point: AttachPoint, index: int, mode: str) -> dict:
    return {"interface": point.interface, "netns": point.netns, "ifindex": index, "mode": mode}


def _resolve_attach(spec: ChainSpec) -> list[tuple[AttachPoint, int]]:
    out = []
    for point in spec.attach:
        index = netlink.ifindex(point.interface, point.netns)
        if not index:
            raise AttachError(f"interface '{point.interface}' does not exist in "
                              f"{netlink.where(point.netns)}; create it or fix 'attach:'")
        out.append((point, index))
    return out


def _resolver(spec: ChainSpec):
    netns = spec.attach[0].netns if spec.attach else None
    return lambda ifname: netlink.ifindex(ifname, netns)


class MapReader:
    """A function's pinned maps, for its read_counters()."""

    def __init__(self, pins: dict[str, str], prefix: str):
        self.pins, self.prefix = pins, prefix

    def open(self, name: str) -> bpfsys.PinnedMap:
        return bpfsys.PinnedMap(self.pins[f"{self.prefix}_{name}"])

    def items_percpu(self, name: str, fields: tuple[str, ...]):
        """(index, {field: sum over CPUs}) for every entry of an array of u64 fields."""
        with self.open(name) as m:
            for index in range(m.max_entries):
                totals = m.sum_u64(index.to_bytes(4, "little"))
                yield index, dict(zip(fields, totals))


class _FunctionTables(MapReader):
    """A function's maps by short name: tables["rules"] is the BCC table <fn>_rules,
    tables.open("rules") the pinned map itself (no BCC types needed)."""

    def __init__(self, bpf, pins: dict[str, str], prefix: str):
        super().__init__(pins, prefix)
        self._bpf, self._prefix = bpf, prefix

    def __getitem__(self, name: str):
        return self._bpf.get_table(f"{self._prefix}_{name}".encode())


def _attach(fd: int, point: AttachPoint, index: int, xdp_mode: str) -> str:
    modes = ["native", "generic"] if xdp_mode == "auto" else [xdp_mode]
    for mode in modes:
        try:
            netlink.xdp_attach(index, fd, mode, point.netns)
            return mode
        except NetlinkError as exc:
            if exc.code == errno.EBUSY or exc.code == errno.EEXIST:
                raise AttachError(_busy_message(point, index)) from None
            if mode == modes[-1] or exc.code not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ERANGE):
                hint = " (native XDP needs driver support: try xdp_mode: generic)" \
                    if mode == "native" else ""
                raise AttachError(f"cannot attach to {point}: {os.strerror(exc.code)}{hint}") from None
    raise AssertionError("unreachable")


def _busy_message(point: AttachPoint, index: int) -> str:
    state = netlink.xdp_state(index, point.netns)
    owner = ""
    for dep in Deployment.all():
        if any(a["ifindex"] == index and a["netns"] == point.netns for a in dep.record["attachments"]):
            owner = f" by chain '{dep.name}'; `vnfchain undeploy {dep.name}` first"
    prog = f" (program id {state[0]})" if state else ""
    fix = owner or f"; detach it first: `ip {'-n ' + point.netns + ' ' if point.netns else ''}" \
                   f"link set dev {point.interface} xdp off`"
    return f"interface {point} already has an XDP program{prog} attached{fix}"


# -- live change --------------------------------------------------------------------

def plan_change(record: dict, new: Unit, spec: ChainSpec) -> tuple[str, list[str]]:
    """("config" | "code" | "topology", functions whose code changed)."""
    old = record["sections"]
    same_frame = (record["mode"] == spec.mode
                  and [f["name"] for f in record["functions"]] == [f.name for f in spec.functions]
                  and old.get(PRELUDE) == new.sections[PRELUDE]
                  and old.get(ENTRY) == new.sections[ENTRY])
    changed = [f.name for f in spec.functions if old.get(f.name) != new.sections.get(f.name)]
    if same_frame and not changed:
        return "config", []
    if same_frame and spec.mode == "tailcall":
        return "code", changed
    return "topology", changed


def _change(record: dict, spec: ChainSpec, say: Progress) -> "Deployment":
    if record.get("state") != "running":
        raise DeployError(f"chain '{spec.name}' did not finish deploying; `vnfchain undeploy "
                          f"{spec.name}` first")
    targets = _resolve_attach(spec)
    _preflight(record, spec, targets)
    pin_dir = Path(record["pin_dir"])
    (unit,) = render(spec, str(pin_dir), generation=record["generation"])
    kind, changed = plan_change(record, unit, spec)
    say(f"live change of chain '{spec.name}': {kind}" + (f" ({', '.join(changed)})" if changed else ""))
    old_maps = set(record["maps"].values())
    try:
        if kind == "topology":
            record = _new_generation(record, spec, targets, say)
        else:
            record = _same_generation(record, spec, unit, changed, say)
            _reattach(record, spec, targets, say)
    except BaseException:
        _forget_maps(set(_map_files(pin_dir)) - old_maps)
        raise
    _forget_maps(set(_map_files(pin_dir)) - set(record["maps"].values()))
    record["changes"] = record.get("changes", 0) + 1
    write_record(record)
    return Deployment(record, last_change=kind)


def _populate_pinned(spec: ChainSpec, edited: list, pins: dict[str, str], record: dict) -> None:
    """Write the edited functions' config into their pinned maps; if that fails
    half-way, write the running config back (best effort) before the error
    goes up, so the maps and the record keep telling the same story."""
    contexts = {f.name: ctx for f, ctx in _contexts(spec)}
    try:
        for f in edited:
            f.ftype.populate(MapReader(pins, f.name), f.params, contexts[f.name])
    except BaseException:
        running = spec_from_dict(record["spec"])
        old = {f.name: (f, ctx) for f, ctx in _contexts(running)}
        for f in edited:
            with contextlib.suppress(Exception):
                was, ctx = old[f.name]
                was.ftype.populate(MapReader(record["maps"], f.name), was.params, ctx)
        raise


def _same_generation(record: dict, spec: ChainSpec, unit: Unit, changed: list[str],
                     say: Progress) -> dict:
    """Update maps in place and replace changed functions' programs in their slots."""
    if not changed:
        edited = _params_changed(record, spec)
        if all(f.ftype.pinned_populate for f in edited):
            # map updates only: the functions write their pinned maps without BCC
            _populate_pinned(spec, edited, unit.map_pins, record)
            return dict(record, spec=spec_to_dict(spec), sections=unit.sections, maps=unit.map_pins)
    loaded = compile_unit(unit, label=f"chain '{spec.name}'", load=[f"vc_fn_{n}" for n in changed])
    try:
        _populate(spec, loaded)
        gen_dir = Path(record["gen_dir"])
        slots = loaded.bpf[b"vc_progs"] if changed else None
        new = dict(record, spec=spec_to_dict(spec), sections=unit.sections, maps=unit.map_pins)
        new["functions"] = [dict(f) for f in record["functions"]]
        for f in new["functions"]:
            if f["name"] not in changed:
                continue
            prog = loaded.programs[f"vc_fn_{f['name']}"]
            say(f"replacing function '{f['name']}' in slot {f['slot']}")
            slots[slots.Key(f["slot"])] = slots.Leaf(prog.fd)  # the atomic switch
            pin = gen_dir / f"fn_{f['name']}"
            with contextlib.suppress(FileNotFoundError):
                pin.unlink()
            bpfsys.obj_pin(prog.fd, str(pin))
            f["prog_id"] = bpfsys.prog_id(prog.fd)
        return new
    finally:
        loaded.close()


def _new_generation(record: dict, spec: ChainSpec, targets, say: Progress) -> dict:
    """Build generation N+1 beside N, carry counters over, swap XDP atomically."""
    pin_dir = Path(record["pin_dir"])
    generation = record["generation"] + 1
    built = None
    try:
        built = _build(spec, pin_dir, generation, say)
        _carry_counters(record, spec, generation_dir(pin_dir, generation))
        new = dict(record, attachments=list(record["attachments"]))
        _adopt(new, spec, built)
        _swap_attachments(record, new, spec, targets, built.entry_fd, say)
    except BaseException:
        if built:
            built.close()
        shutil.rmtree(generation_dir(pin_dir, generation), ignore_errors=True)
        raise
    built.close()
    write_record(new)   # the record names the attached generation before the old one goes
    shutil.rmtree(record["gen_dir"], ignore_errors=True)
    return new


def _swap_attachments(old: dict, new: dict, spec: ChainSpec, targets, new_fd: int,
                      say: Progress, *, replace: bool = True) -> None:
    """Point every kept interface at the new entry (XDP_FLAGS_REPLACE), attach the
    added ones, detach the removed ones; on failure put back what was switched."""
    old_fd = bpfsys.obj_get(str(Path(old["gen_dir"]) / "entry"))
    done: list[tuple[dict, str]] = []   # (attachment, "replaced" | "attached")
    kept = {(a["interface"], a["netns"]): a for a in old["attachments"]}
    try:
        attachments = []
        for point, index in targets:
            current = kept.pop((point.interface, point.netns), None)
            if current and spec.xdp_mode not in ("auto", current["mode"]):
                raise AttachError(f"{point} runs the chain in {current['mode']} mode; changing "
                                  f"xdp_mode of a running chain is not live: undeploy it first")
            if current and not replace:
                attachments.append(current)
            elif current:
                say(f"switching {point} to the new programs")
                netlink.xdp_attach(index, new_fd, current["mode"], point.netns, replace_fd=old_fd)
                done.append((current, "replaced"))
                attachments.append(current)
            else:
                say(f"attaching to {point}")
                # noted on disk first: if this process dies before the change is
                # recorded, undeploy still finds (and detaches) this interface
                old.setdefault("pending", []).append(_attachment(point, index, None))
                write_record(old)
                mode = _attach(new_fd, point, index, spec.xdp_mode)
                a = _attachment(point, index, mode)
                done.append((a, "attached"))
                attachments.append(a)
        for gone in kept.values():
            say(f"detaching from {gone['interface']}@{gone['netns'] or 'root'}")
            netlink.xdp_detach(gone["ifindex"], gone["mode"], gone["netns"], expected_fd=old_fd)
        new["attachments"] = attachments
        new.pop("pending", None)
    except BaseException:
        for a, how in reversed(done):
            with contextlib.suppress(Exception):
                if how == "replaced":
                    netlink.xdp_attach(a["ifindex"], old_fd, a["mode"], a["netns"], replace_fd=new_fd)
                else:
                    netlink.xdp_detach(a["ifindex"], a["mode"], a["netns"], expected_fd=new_fd)
        raise
    finally:
        os.close(old_fd)


def _reattach(record: dict, spec: ChainSpec, targets, say: Progress) -> None:
    """Same programs, possibly a different attach list."""
    entry_fd = bpfsys.obj_get(str(Path(record["gen_dir"]) / "entry"))
    try:
        _swap_attachments(record, record, spec, targets, entry_fd, say, replace=False)
    finally:
        os.close(entry_fd)


def _state_rows(state: bytes, nrows: int, width: int) -> list[list[int]]:
    """The counter rows of one CPU's struct vc_state (metadata first, rows last;
    each row has ``width`` named counters padded to a power of two)."""
    slots = 1
    while slots < width:
        slots *= 2
    start = len(state) - nrows * slots * 8
    return [[int.from_bytes(state[start + 8 * (r * slots + c):start + 8 * (r * slots + c + 1)], "little")
             for c in range(width)] for r in range(nrows)]


def _carry_counters(record: dict, spec: ChainSpec, new_gen_dir: Path) -> None:
    """Copy each function's counters (by name) into the new generation's state."""
    old_rows = {f["name"]: f["slot"] for f in record["functions"]}
    old_rows[ENTRY] = len(record["functions"])
    new_rows = {f.name: i for i, f in enumerate(spec.functions)}
    new_rows[ENTRY] = len(spec.functions)
    width = len(record["counters"])
    zero = (0).to_bytes(4, "little")
    with bpfsys.PinnedMap(str(Path(record["gen_dir"]) / "state")) as old, \
            bpfsys.PinnedMap(str(new_gen_dir / "state")) as new:
        per_cpu = []
        for cpu_state in old.lookup(zero) or []:
            rows = _state_rows(cpu_state, len(old_rows), width)
            layout = counter_layout()   # by name: a newer vnfchain may order reasons otherwise
            where = {counter: i for i, counter in enumerate(layout.names)}
            carried = [[0] * layout.slots for _ in new_rows]
            for name, row in new_rows.items():
                if name in old_rows:
                    for counter, value in zip(record["counters"], rows[old_rows[name]]):
                        if counter in where:
                            carried[row][where[counter]] = value
            body = b"".join(v.to_bytes(8, "little") for r in carried for v in r)
            per_cpu.append(bytes(new.value_size - len(body)) + body)
        if per_cpu:
            new.update(zero, b"".join(per_cpu))


def _map_files(pin_dir: Path) -> list[str]:
    maps = pin_dir / "maps"
    return [str(p) for p in maps.iterdir()] if maps.is_dir() else []


def _forget_maps(paths) -> None:
    """Unpin maps nothing uses any more (their programs hold them until replaced)."""
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


# -- undeploy -----------------------------------------------------------------------

def _teardown(record: dict, *, search: bool = False) -> list[str]:
    """Remove attachments, pins and record; returns warnings about what was skipped.
    Any generation's entry program counts as ours (a crash may leave the record
    naming another generation than the one attached); an interface still running
    one of ours after that keeps the pins, since removing them would empty the
    prog array under it. ``search``: the record may not list every attachment
    (unfinished, unreadable): look for our programs on every interface of the
    root and the named network namespaces too."""
    warnings = []
    pin_dir = Path(record["pin_dir"])
    entries = {}
    for pin in sorted(pin_dir.glob("g*/entry")):
        with contextlib.suppress(OSError):
            fd = bpfsys.obj_get(str(pin))
            try:
                entries[bpfsys.prog_id(fd)] = fd
            except OSError:
                os.close(fd)
    still_ours = []
    try:
        listed = record.get("attachments", [])
        known = {(a["interface"], a["netns"]) for a in listed}
        # pending: interfaces a live change was attaching when it stopped short
        pending = [a for a in record.get("pending", []) if (a["interface"], a["netns"]) not in known]
        known |= {(a["interface"], a["netns"]) for a in pending}
        found = [a for a in netlink.find_xdp(set(entries)) if (a["interface"], a["netns"]) not in known] \
            if search and entries else []
        for a in listed + pending + found:
            where = f"{a['interface']}@{a['netns'] or 'root'}"
            state = _attached(a)
            if state is None or state[0] not in entries:
                if a in listed:
                    warnings.append(f"{where}: no program of this chain was attached any more; left as is")
                continue
            a = dict(a, mode=a["mode"] or state[1])
            if not netlink.xdp_detach(a["ifindex"], a["mode"], a["netns"], expected_fd=entries[state[0]]):
                still_ours.append(where)
    finally:
        for fd in entries.values():
            os.close(fd)
    if still_ours:
        raise DeployError(f"could not detach chain '{record['name']}' from {', '.join(still_ours)}; its "
                          f"pins are kept so the interface keeps working; detach by hand and undeploy again")
    _remove_pins(pin_dir)
    try:
        statedir.remove_private(record_path(record["name"]))
    except OSError as exc:
        warnings.append(f"could not remove {record_path(record['name'])}: {exc.strerror}; remove it by hand")
    return warnings


def _attached(attachment: dict):
    if not netlink.netns_exists(attachment["netns"]):
        return None
    with contextlib.suppress(Exception):
        return netlink.xdp_state(attachment["ifindex"], attachment["netns"])
    return None


def _remove_pins(pin_dir: Path) -> None:
    if not pin_dir.exists():
        return
    root = pin_root().resolve()
    if root not in pin_dir.resolve().parents:
        raise DeployError(f"refusing to remove {pin_dir}: it is not under {root}")
    shutil.rmtree(pin_dir)


def undeploy(name: str) -> list[str]:
    """Remove what deploy made for ``name``; idempotent. Returns warnings."""
    with locked(name):
        return _undeploy(name)


def _undeploy(name: str) -> list[str]:
    _own_pin_root()
    try:
        record = read_record(name)
    except RecordError as exc:
        stub = {"name": name, "state": "unreadable", "pin_dir": str(pin_root() / name), "attachments": []}
        return [f"{exc.path} was unreadable ({exc.reason}); removed the pins under {stub['pin_dir']} and "
                f"detached the chain's programs wherever they were attached"] + _teardown(stub, search=True)
    if record is None:
        pin_dir = pin_root() / name
        if pin_dir.exists():  # a deploy that died before its record: only pins to remove
            _remove_pins(pin_dir)
            return [f"chain '{name}' had no record; removed its pins {pin_dir}"]
        raise NotDeployedError(f"chain '{name}' is not deployed; `vnfchain ls` lists the running ones")
    return _teardown(record, search=record["state"] != "running")


# -- a running chain ----------------------------------------------------------------

@dataclass
class Deployment:
    """A chain running in the kernel, seen through its record and pins."""

    record: dict
    last_change: str = ""   # what the deploy that returned this did: new, config, code, topology

    @property
    def name(self) -> str:
        return self.record["name"]

    @property
    def pin_dir(self) -> Path:
        return Path(self.record["pin_dir"])

    @property
    def gen_dir(self) -> Path:
        if "gen_dir" not in self.record:
            raise DeployError(f"chain '{self.name}' has no programs to show: its deploy stopped before "
                              f"it recorded them; `vnfchain undeploy {self.name}` removes what it made")
        return Path(self.record["gen_dir"])

    @cached_property
    def spec(self) -> ChainSpec:
        """The running chain's spec (validated once per Deployment: a dpi with
        thousands of signatures takes a while to validate)."""
        self.gen_dir   # noqa: B018  (a deploy that stopped before its programs has no spec either)
        return spec_from_dict(self.record["spec"], Locator(str(record_path(self.name)), {}))

    @classmethod
    def get(cls, name: str) -> "Deployment":
        """The chain ``name``; RecordError when its record is unreadable."""
        dep = _known(name)
        if dep is None:
            raise NotDeployedError(f"chain '{name}' is not deployed; `vnfchain ls` lists the running ones")
        return dep

    @classmethod
    def all(cls) -> list["Deployment"]:
        """Every chain with a readable record, finished or not (see ``listing``)."""
        return [d for d in listing() if isinstance(d, Deployment)]

    def entry_fd(self) -> int:
        """An fd of the entry program (the caller closes it)."""
        self._require_pins()
        return bpfsys.obj_get(str(self.gen_dir / "entry"))

    def _require_pins(self) -> None:
        missing = self.missing_pins()
        if missing:
            raise DeployError(f"chain '{self.name}' is broken: {len(missing)} of its pins are gone "
                              f"({missing[0]}, ...); `vnfchain undeploy {self.name}` removes what is left")

    def run(self, packet, *, repeat: int = 1, ingress_ifindex: int | None = None,
            netns: str | None = None):
        """Run one frame through the running chain with BPF_PROG_TEST_RUN (it
        follows the tail calls); returns a testrun.RunResult. The frame is
        counted like real traffic."""
        from ..testrun import run_xdp
        fd = self.entry_fd()
        try:
            return run_xdp(fd, packet, repeat=repeat, ingress_ifindex=ingress_ifindex, netns=netns)
        finally:
            os.close(fd)

    @property
    def finished(self) -> bool:
        """Its last deploy or change ran to the end."""
        return self.record["state"] == "running" and not self.record.get("pending")

    def condition(self) -> str:
        """running; deploying (a vnfchain is at work on the chains now); broken (a
        deploy or change stopped half-way, or pins are gone: undeploy it)."""
        if not self.finished and busy():
            return "deploying"
        return "running" if self.finished and not self.missing_pins() else "broken"

    def missing_pins(self) -> list[str]:
        """Recorded pins that are not there (none recorded: a deploy that stopped early)."""
        r = self.record
        if "gen_dir" not in r:
            return []
        gen = Path(r["gen_dir"])
        wanted = [gen / "entry", gen / "state"] + [Path(p) for p in r.get("maps", {}).values()]
        wanted += [gen / f"fn_{f['name']}" for f in r.get("functions", []) if f.get("prog_id")]
        return [str(p) for p in wanted if not p.exists()]

    def health(self) -> list[str]:
        """What is wrong with the chain, if anything; a broken one's last line is the fix."""
        r = self.record
        if r["state"] == "no record":
            problems = [f"no record, only pins under {self.pin_dir}"]
        else:
            problems = self._unfinished() + [f"pin missing: {p}" for p in self.missing_pins()]
        for a in r["attachments"]:
            state = None
            with contextlib.suppress(Exception):
                state = netlink.xdp_state(a["ifindex"], a["netns"])
            if not state or state[0] != r.get("entry_prog_id"):
                problems.append(f"{a['interface']}@{a['netns'] or 'root'} no longer runs the chain")
        if self.condition() == "broken":
            problems.append(f"fix: `vnfchain undeploy {self.name}` removes what it made")
        return problems

    def _unfinished(self) -> list[str]:
        r = self.record
        problems = []
        if r["state"] != "running":
            where = "before it recorded its programs" if "gen_dir" not in r else "after loading its programs"
            problems.append(f"deploy stopped {where} (state {r['state']}, pid {r.get('pid')})")
        problems += [f"{a['interface']}@{a['netns'] or 'root'} was being attached when vnfchain stopped"
                     for a in r.get("pending", [])]
        return problems

    def undeploy(self) -> list[str]:
        return undeploy(self.name)

    def state(self) -> dict[str, tuple[list[str], list[list[str]]]]:
        """Live state of the functions that keep some (e.g. NAT translations):
        {function: (columns, rows)}."""
        return _function_state(self)

    def stats(self) -> dict[str, dict[str, Any]]:
        """Counters per function (and '(entry)'), summed over CPUs."""
        self._require_pins()
        names = self.record["counters"]
        nrows = len(self.record["functions"]) + 1
        totals = [[0] * len(names) for _ in range(nrows)]
        with bpfsys.PinnedMap(str(self.gen_dir / "state")) as state:
            for cpu_state in state.lookup((0).to_bytes(4, "little")) or []:
                for r, row in enumerate(_state_rows(cpu_state, nrows, len(names))):
                    totals[r] = [a + b for a, b in zip(totals[r], row)]
        out: dict[str, dict[str, Any]] = {ENTRY: dict(zip(names, totals[-1]))}
        for f in self.record["functions"]:
            out[f["name"]] = dict(zip(names, totals[f["slot"]]))
        spec = self.spec
        for f in spec.functions:
            reader = MapReader(self.record["maps"], f.name)
            out[f.name].update(f.ftype.read_counters(reader, f.params))
        return out


def _function_state(dep: "Deployment") -> dict:
    out = {}
    for f in dep.spec.functions:
        rows = f.ftype.state_rows(MapReader(dep.record["maps"], f.name), f.params)
        if rows is not None:
            out[f.name] = rows
    return out


def listing() -> list["Deployment | RecordError"]:
    """Every chain vnfchain knows of, by name: a Deployment for each readable record
    (finished or not) and for pins left without a record, a RecordError for each
    record that cannot be read."""
    recorded = set(recorded_names())
    root = _own_pin_root()
    pinned = [p.name for p in root.iterdir() if p.is_dir()] if root else []
    out: list[Deployment | RecordError] = []
    for name in sorted(recorded | {n for n in pinned if re.fullmatch(CHAIN_NAME, n)}):
        try:
            out.append(_known(name))
        except RecordError as exc:
            out.append(exc)
    return out


def _known(name: str) -> Deployment | None:
    """``name`` from its record, or from pins left without one; None if neither is there."""
    record = read_record(name)
    if record is not None:
        return Deployment(record)
    pin_dir = pin_root() / name
    if pin_dir.is_dir():
        return Deployment({"name": name, "state": "no record", "attachments": [], "pin_dir": str(pin_dir)})
    return None
