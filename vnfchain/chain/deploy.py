"""Deploy a chain: a new one, or a live change of the running one of that name.

A deployed chain lives in the kernel, not in this process; each job on it has
its module:

    record.py      where it lives (pins, record), the typed ``Record``, the lock
    build.py       render + compile + load + fill maps + pin one generation
    attach.py      XDP attach, swap and detach; whose program a busy hook runs
    change.py      live change: config (maps), code (slots), topology (generation)
    converge.py    what drifted in the kernel since, the plan, repairs, verification
    teardown.py    undeploy, also of what a crash or an unreadable record left
    deployment.py  ``Deployment`` (stats, state, health, test runs) and ``listing``
    maps.py        the map readers function types and stats use

Deploy is declarative: deploying a file makes the kernel match it, whatever
drifted since the last deploy (converge.py), and succeeds only when every
attach point runs the chain. The record is written before anything is made,
so that a deploy or an ``undeploy`` can finish one that crashed half-way. A
failed deploy rolls back everything it made and touches nothing it did not make.
"""
from __future__ import annotations

import contextlib
import os
import time

from ..errors import DeployError, EnvironmentError_, NotDeployedError
from . import attach, converge
from .build import Progress, build_generation, quiet
from .deployment import Deployment, listing
from .model import AttachPoint, ChainSpec, spec_from_dict
from .record import Record, locked, own_pin_root, pin_root
from .render import counter_layout
from .teardown import teardown, undeploy

__all__ = ["deploy", "plan", "rollback", "plan_rollback", "undeploy", "listing", "Deployment", "pin_root"]


def check_environment() -> None:
    if os.geteuid() != 0:
        raise EnvironmentError_("deploying needs root (BPF, XDP, pins); run it as root")
    if not os.path.ismount("/sys/fs/bpf"):
        raise EnvironmentError_("bpffs is not mounted; run `mount -t bpf bpf /sys/fs/bpf` "
                                "(scripts/setup.sh does)")


def deploy(spec: ChainSpec, *, attach: list[AttachPoint] | None = None,
           progress: Progress | None = None, report: Progress | None = None) -> Deployment:
    """Make the kernel run ``spec``: deploy it, change the running chain of that
    name to it, and repair whatever drifted; ``report`` hears each repair as it
    is made. Raises when, afterwards, the chain does not run as ``spec`` says."""
    check_environment()
    if attach is not None:
        spec = spec.with_changes(attach=tuple(attach))
    with locked(spec.name):
        return _converge(spec, progress or quiet, report or quiet)


def plan(spec: ChainSpec, *, attach: list[AttachPoint] | None = None) -> converge.Plan:
    """What ``deploy`` would do; changes nothing (not even the lock file)."""
    check_environment()
    if attach is not None:
        spec = spec.with_changes(attach=tuple(attach))
    return converge.plan(spec)


def rollback(name: str, *, progress: Progress | None = None, report: Progress | None = None) -> Deployment:
    """Deploy the definition that ran before the running one (a live change like
    any other), and take it out of the history: rolling back again goes further back."""
    check_environment()
    with locked(name):
        record = _with_history(name)
        return _converge(spec_from_dict(record.history[-1].spec), progress or quiet, report or quiet,
                         history=record.history[:-1])


def plan_rollback(name: str) -> converge.Plan:
    """What ``rollback`` would do; changes nothing."""
    check_environment()
    return converge.plan(spec_from_dict(_with_history(name).history[-1].spec))


def _with_history(name: str) -> Record:
    record = Record.read(name)
    if record is None:
        raise NotDeployedError(f"chain '{name}' is not deployed; `vnfchain ls` lists the running ones")
    if not record.history:
        raise DeployError(f"chain '{name}' has no earlier definition to roll back to (a deploy that "
                          f"changes the definition keeps the one before it, up to {converge.HISTORY}); "
                          f"deploy the file you want instead")
    return record


def _converge(spec: ChainSpec, say: Progress, tell: Progress, history=None) -> Deployment:
    p = converge.plan(spec)
    if p.change != "new":
        outcome = converge.apply(p, say, tell, history=history)
        return Deployment(outcome.record, last_change=outcome.kind, repairs=tuple(outcome.repairs))
    repairs = []
    if p.record is not None:     # a deploy that stopped before it recorded its programs
        teardown(p.record, search=True)
        repairs = [d.done for d in p.drift]
        for line in repairs:
            tell(line)
    record = converge.settle(_fresh(spec, say), spec, None, ())
    converge.verify(record)
    return Deployment(record, last_change="new", repairs=tuple(repairs))


def _fresh(spec: ChainSpec, say: Progress) -> Record:
    pin_dir = own_pin_root(create=True) / spec.name
    if pin_dir.exists():
        raise DeployError(f"{pin_dir} is left over from an earlier deploy of '{spec.name}' that "
                          f"did not finish; `vnfchain undeploy {spec.name}` removes it")
    targets = attach.resolve(spec)
    now = time.time()
    record = Record(name=spec.name, state="deploying", pin_dir=pin_dir, pid=os.getpid(), created=now,
                    deployed=now, mode=spec.mode, generation=1, counters=tuple(counter_layout().names))
    record.save()
    built = None
    try:
        (pin_dir / "maps").mkdir(parents=True)
        built = build_generation(spec, pin_dir, 1, say)
        record = built.adopted_by(record, spec)
        record.save()
        for point, index in targets:
            say(f"attaching to {point}")
            # noted on disk first: if this process dies right after attaching,
            # undeploy still finds (and detaches) this interface
            record = record.replace(pending=(attach.noted(point, index),))
            record.save()
            mode = attach.attach(built.entry_fd, point, index, spec.xdp_mode)
            record = record.replace(attachments=record.attachments + (attach.noted(point, index, mode),),
                                    pending=())
            record.save()
        record = record.replace(state="running")
        record.save()
    except BaseException:
        with contextlib.suppress(Exception):
            teardown(record)
        raise
    finally:
        if built:
            built.close()
    return record
