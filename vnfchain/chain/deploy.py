"""Deploy a chain: a new one, or a live change of the running one of that name.

A deployed chain lives in the kernel, not in this process; each job on it has
its module:

    record.py      where it lives (pins, record), the typed ``Record``, the lock
    build.py       render + compile + load + fill maps + pin one generation
    attach.py      XDP attach, swap and detach; whose program a busy hook runs
    change.py      live change: config (maps), code (slots), topology (generation)
    teardown.py    undeploy, also of what a crash or an unreadable record left
    deployment.py  ``Deployment`` (stats, state, health, test runs) and ``listing``
    maps.py        the map readers function types and stats use

The record is written before anything is made, so ``undeploy`` can finish a
deploy that crashed half-way. A failed deploy rolls back everything it made and
touches nothing it did not make.
"""
from __future__ import annotations

import contextlib
import os
import time

from ..errors import DeployError, EnvironmentError_
from . import attach
from .build import Progress, build_generation, quiet
from .change import change
from .deployment import Deployment, listing
from .model import AttachPoint, ChainSpec
from .record import Record, locked, own_pin_root, pin_root
from .render import counter_layout
from .teardown import teardown, undeploy

__all__ = ["deploy", "undeploy", "listing", "Deployment", "pin_root"]


def check_environment() -> None:
    if os.geteuid() != 0:
        raise EnvironmentError_("deploying needs root (BPF, XDP, pins); run it as root")
    if not os.path.ismount("/sys/fs/bpf"):
        raise EnvironmentError_("bpffs is not mounted; run `mount -t bpf bpf /sys/fs/bpf` "
                                "(scripts/setup.sh does)")


def deploy(spec: ChainSpec, *, attach: list[AttachPoint] | None = None,
           progress: Progress | None = None) -> Deployment:
    """Deploy ``spec``, or change the running chain of that name to it."""
    check_environment()
    if attach is not None:
        spec = spec.with_changes(attach=tuple(attach))
    with locked(spec.name):
        record = Record.read(spec.name)
        if record is not None:
            record, kind = change(record, spec, progress or quiet)
            return Deployment(record, last_change=kind)
        return Deployment(_fresh(spec, progress or quiet), last_change="new")


def _fresh(spec: ChainSpec, say: Progress) -> Record:
    pin_dir = own_pin_root(create=True) / spec.name
    if pin_dir.exists():
        raise DeployError(f"{pin_dir} is left over from an earlier deploy of '{spec.name}' that "
                          f"did not finish; `vnfchain undeploy {spec.name}` removes it")
    targets = attach.resolve(spec)
    record = Record(name=spec.name, state="deploying", pin_dir=pin_dir, pid=os.getpid(), created=time.time(),
                    mode=spec.mode, generation=1, counters=tuple(counter_layout().names))
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
