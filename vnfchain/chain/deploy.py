"""Load, pin, attach, record — and undo all of it.

A deployed chain lives in the kernel, not in this process:

    /sys/fs/bpf/vnfchain/<chain>/   entry, fn_<name> (programs), progs, scratch,
                                    stats (chain maps), <fn>_<map> (function maps)
    /run/vnfchain/<chain>.json      what deploy made: attachments, pins, spec

The record is written before anything is made, so ``undeploy`` can finish a
deploy that crashed half-way. A failed deploy rolls back everything it made and
touches nothing it did not make.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from pyroute2.netlink.exceptions import NetlinkError

from .. import bpfsys, netlink
from ..errors import AttachError, DeployError, EnvironmentError_, NotDeployedError, VnfchainError
from ..functions import RenderContext
from ..yamlio import Locator
from .compile import LoadedUnit, compile_unit
from .model import AttachPoint, ChainSpec, spec_from_dict, spec_to_dict
from .render import context_for, counter_layout, render


def pin_root() -> Path:
    return Path(os.environ.get("VNFCHAIN_BPFFS", "/sys/fs/bpf/vnfchain"))


def run_dir() -> Path:
    return Path(os.environ.get("VNFCHAIN_RUN", "/run/vnfchain"))


def record_path(name: str) -> Path:
    return run_dir() / f"{name}.json"


Progress = Callable[[str], None]


# -- the record ---------------------------------------------------------------------

def _write_record(record: dict) -> None:
    path = record_path(record["name"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(path)


def _read_record(name: str) -> dict | None:
    try:
        return json.loads(record_path(name).read_text())
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as exc:
        raise DeployError(f"the record of chain '{name}' ({record_path(name)}) is unreadable "
                          f"({exc}); `vnfchain undeploy {name}` removes what it can") from None


# -- deploy -------------------------------------------------------------------------

def check_environment() -> None:
    if os.geteuid() != 0:
        raise EnvironmentError_("deploying needs root (BPF, XDP, pins); run it with sudo")
    if not os.path.ismount("/sys/fs/bpf"):
        raise EnvironmentError_("bpffs is not mounted; run `mount -t bpf bpf /sys/fs/bpf` "
                                "(scripts/setup.sh does)")


def deploy(spec: ChainSpec, *, attach: list[AttachPoint] | None = None,
           progress: Progress | None = None) -> "Deployment":
    """Load the chain, pin it, attach it; all or nothing."""
    check_environment()
    if attach is not None:
        spec = spec.with_changes(attach=tuple(attach))
    say = progress or (lambda _msg: None)
    if _read_record(spec.name) is not None:
        raise DeployError(f"chain '{spec.name}' is already deployed; `vnfchain undeploy "
                          f"{spec.name}` first (live update of a running chain is not built yet)")
    pin_dir = pin_root() / spec.name
    if pin_dir.exists():
        raise DeployError(f"{pin_dir} is left over from an earlier deploy of '{spec.name}' that "
                          f"did not finish; `vnfchain undeploy {spec.name}` removes it")
    targets = _resolve_attach(spec)

    record = {
        "name": spec.name, "state": "deploying", "pid": os.getpid(), "created": time.time(),
        "mode": spec.mode, "pin_dir": str(pin_dir), "spec": spec_to_dict(spec),
        "counters": list(counter_layout().names),
        "functions": [{"name": f.name, "type": f.type, "slot": i}
                      for i, f in enumerate(spec.functions)],
        "attachments": [], "entry_prog_id": None,
    }
    _write_record(record)
    loaded: list[LoadedUnit] = []
    try:
        pin_dir.mkdir(parents=True)
        entry_fd = _load(spec, pin_dir, record, loaded, say)
        for point, index in targets:
            say(f"attaching to {point}")
            mode = _attach(entry_fd, point, index, spec.xdp_mode)
            record["attachments"].append({"interface": point.interface, "netns": point.netns,
                                          "ifindex": index, "mode": mode})
            _write_record(record)
        record["state"] = "running"
        _write_record(record)
    except BaseException:
        _rollback(record)
        raise
    finally:
        for unit in loaded:
            unit.close()
    return Deployment(record)


def _resolve_attach(spec: ChainSpec) -> list[tuple[AttachPoint, int]]:
    out = []
    for point in spec.attach:
        index = netlink.ifindex(point.interface, point.netns)
        if not index:
            raise AttachError(f"interface '{point.interface}' does not exist in "
                              f"{netlink.where(point.netns)}; create it or fix 'attach:'")
        out.append((point, index))
    return out


def _load(spec: ChainSpec, pin_dir: Path, record: dict, loaded: list, say: Progress) -> int:
    """Compile the chain, fill maps and slots, pin programs; returns the entry fd."""
    (unit,) = render(spec, str(pin_dir))
    say(f"compiling chain '{spec.name}' ({len(spec.functions)} functions, {spec.mode})")
    lu = compile_unit(unit, label=f"chain '{spec.name}'")
    loaded.append(lu)
    programs = {fname: lu.programs[cname] for cname, fname in unit.programs}
    for f in spec.functions:
        ctx = context_for(spec, f, resolve_ifindex=_resolver(spec))
        f.ftype.populate(_FunctionTables(lu.bpf, f.name), f.params, ctx)
    if spec.mode == "tailcall":
        slots = lu.bpf[b"vc_progs"]
        for i, f in enumerate(spec.functions):
            prog = programs[f.name]
            slots[slots.Key(i)] = slots.Leaf(prog.fd)
            bpfsys.obj_pin(prog.fd, str(pin_dir / f"fn_{f.name}"))
            record["functions"][i]["prog_id"] = bpfsys.prog_id(prog.fd)
    entry = programs[""]
    bpfsys.obj_pin(entry.fd, str(pin_dir / "entry"))
    record["entry_prog_id"] = bpfsys.prog_id(entry.fd)
    _write_record(record)
    return os.dup(entry.fd)


def _resolver(spec: ChainSpec):
    netns = spec.attach[0].netns if spec.attach else None
    return lambda ifname: netlink.ifindex(ifname, netns)


class _FunctionTables:
    """A function's maps by short name: tables["rules"] is the BCC table <fn>_rules."""

    def __init__(self, bpf, prefix: str):
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


def _rollback(record: dict) -> None:
    with contextlib.suppress(Exception):
        _teardown(record)


# -- undeploy -----------------------------------------------------------------------

def _teardown(record: dict) -> list[str]:
    """Remove attachments, pins and record; returns warnings about what was skipped."""
    warnings = []
    pin_dir = Path(record["pin_dir"])
    entry_fd = None
    with contextlib.suppress(OSError):
        entry_fd = bpfsys.obj_get(str(pin_dir / "entry"))
    try:
        for a in record.get("attachments", []):
            if not _detach(a, entry_fd):
                warnings.append(f"{a['interface']}@{a['netns'] or 'root'}: no program of this "
                                f"chain was attached any more; left as is")
    finally:
        if entry_fd is not None:
            os.close(entry_fd)
    _remove_pins(pin_dir)
    with contextlib.suppress(FileNotFoundError):
        record_path(record["name"]).unlink()
    return warnings


def _detach(attachment: dict, entry_fd: int | None) -> bool:
    if entry_fd is None:
        return False
    netns, index = attachment["netns"], attachment["ifindex"]
    if not netlink.netns_exists(netns):
        return False
    return netlink.xdp_detach(index, attachment["mode"], netns, expected_fd=entry_fd)


def _remove_pins(pin_dir: Path) -> None:
    if not pin_dir.exists():
        return
    root = pin_root().resolve()
    if root not in pin_dir.resolve().parents:
        raise DeployError(f"refusing to remove {pin_dir}: it is not under {root}")
    shutil.rmtree(pin_dir)


def undeploy(name: str) -> list[str]:
    """Remove what deploy made for ``name``; idempotent. Returns warnings."""
    record = _read_record(name)
    if record is None:
        pin_dir = pin_root() / name
        if pin_dir.exists():  # a deploy that died before its record: only pins to remove
            _remove_pins(pin_dir)
            return [f"chain '{name}' had no record; removed its pins {pin_dir}"]
        raise NotDeployedError(f"chain '{name}' is not deployed; `vnfchain ls` lists the running ones")
    return _teardown(record)


# -- a running chain ----------------------------------------------------------------

@dataclass
class Deployment:
    """A chain running in the kernel, seen through its record and pins."""

    record: dict

    @property
    def name(self) -> str:
        return self.record["name"]

    @property
    def pin_dir(self) -> Path:
        return Path(self.record["pin_dir"])

    @property
    def spec(self) -> ChainSpec:
        return spec_from_dict(self.record["spec"], Locator(str(record_path(self.name)), {}))

    @classmethod
    def get(cls, name: str) -> "Deployment":
        record = _read_record(name)
        if record is None:
            raise NotDeployedError(f"chain '{name}' is not deployed; `vnfchain ls` lists the running ones")
        return cls(record)

    @classmethod
    def all(cls) -> list["Deployment"]:
        if not run_dir().is_dir():
            return []
        out = []
        for path in sorted(run_dir().glob("*.json")):
            with contextlib.suppress(VnfchainError):
                record = _read_record(path.stem)
                if record:
                    out.append(cls(record))
        return out

    def entry_fd(self) -> int:
        """An fd of the entry program (the caller closes it)."""
        return bpfsys.obj_get(str(self.pin_dir / "entry"))

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

    def health(self) -> list[str]:
        """What is wrong with the running chain, if anything."""
        problems = []
        if self.record["state"] != "running":
            problems.append(f"deploy did not finish (state {self.record['state']}); undeploy it")
        if not (self.pin_dir / "entry").exists():
            problems.append(f"pins missing under {self.pin_dir}")
        for a in self.record["attachments"]:
            state = None
            with contextlib.suppress(Exception):
                state = netlink.xdp_state(a["ifindex"], a["netns"])
            if not state or state[0] != self.record["entry_prog_id"]:
                problems.append(f"{a['interface']}@{a['netns'] or 'root'} no longer runs the chain")
        return problems

    def undeploy(self) -> list[str]:
        return undeploy(self.name)

    def stats(self) -> dict[str, dict[str, int]]:
        """Counters per function (and 'entry'), summed over CPUs."""
        names = self.record["counters"]
        out: dict[str, dict[str, int]] = {}
        with bpfsys.PinnedMap(str(self.pin_dir / "stats")) as stats:
            rows = [("(entry)", len(self.record["functions"]))] + \
                   [(f["name"], f["slot"]) for f in self.record["functions"]]
            for fname, row in rows:
                values = stats.sum_u64(row.to_bytes(4, "little"))
                out[fname] = dict(zip(names, values))
        spec = self.spec
        for f in spec.functions:
            reader = MapReader(self.pin_dir, f.name)
            out[f.name].update(f.ftype.read_counters(reader, f.params))
        return out


class MapReader:
    """A function's pinned maps, for its read_counters()."""

    def __init__(self, pin_dir: Path, prefix: str):
        self.pin_dir, self.prefix = pin_dir, prefix

    def items_percpu(self, name: str, fields: tuple[str, ...]):
        """(index, {field: sum over CPUs}) for every entry of an array of u64 fields."""
        with bpfsys.PinnedMap(str(self.pin_dir / f"{self.prefix}_{name}")) as m:
            for index in range(m.max_entries):
                totals = m.sum_u64(index.to_bytes(4, "little"))
                yield index, dict(zip(fields, totals))
