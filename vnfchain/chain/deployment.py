"""``Deployment``: a chain running in the kernel, seen through its record and pins.

What a user asks of a running chain lives here: stats, state, health (what
drifted since the last deploy, converge.observe), a test run, rollback,
undeploy; and ``listing()``, every chain vnfchain knows of, finished, broken
or with a record it cannot read.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from .. import bpfsys
from ..errors import DeployError, NotDeployedError, RecordError
from ..yamlio import Locator
from .converge import observe
from .maps import MapReader, chain_counters
from .model import CHAIN_NAME, ChainSpec, spec_from_dict
from .record import Record, busy, own_pin_root, pin_root, record_path, recorded_names
from .teardown import undeploy


@dataclass
class Deployment:
    """A chain running in the kernel, seen through its record and pins."""

    record: Record
    # what the deploy that returned this did: new, unchanged, repairs, config, code, topology
    last_change: str = ""
    repairs: tuple[str, ...] = ()   # and each repair it made, in words

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def pin_dir(self) -> Path:
        return self.record.pin_dir

    @property
    def gen_dir(self) -> Path:
        if self.record.gen_dir is None:
            raise DeployError(f"chain '{self.name}' has no programs to show: its deploy stopped before "
                              f"it recorded them; `vnfchain undeploy {self.name}` removes what it made")
        return self.record.gen_dir

    @cached_property
    def spec(self) -> ChainSpec:
        """The running chain's spec (validated once per Deployment: a dpi with
        thousands of signatures takes a while to validate)."""
        self.gen_dir   # noqa: B018  (a deploy that stopped before its programs has no spec either)
        return spec_from_dict(self.record.spec, Locator(str(record_path(self.name)), {}))

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
        return self.record.finished

    def condition(self) -> str:
        """running; deploying (a vnfchain is at work on the chains now); broken (a
        deploy or change stopped half-way, or pins are gone: undeploy it)."""
        if not self.finished and busy():
            return "deploying"
        return "running" if self.finished and not self.missing_pins() else "broken"

    def missing_pins(self) -> list[str]:
        """Recorded pins that are not there (none recorded: a deploy that stopped early)."""
        return [str(p) for p in self.record.pins() if not p.exists()]

    def health(self) -> list[str]:
        """What is wrong with the chain, if anything (what deploy would repair, in
        the words it uses); the last line then says how to fix it."""
        r = self.record
        if r.state == "no record":
            return [f"no record, only pins under {self.pin_dir}",
                    f"fix: `vnfchain undeploy {self.name}` removes them"]
        if self.condition() == "deploying":
            return ["a vnfchain is deploying, changing or undeploying it right now"]
        problems = [d.status_line() for d in observe(r)]
        if problems and busy():
            problems.insert(0, "a vnfchain is deploying or changing a chain right now: what follows may be "
                               "its work in progress")
        if problems:
            problems.append(f"fix: deploying the chain's file again repairs what it can (`vnfchain deploy "
                            f"FILE`); `vnfchain undeploy {self.name}` removes what it made")
        return problems

    def rollback(self, progress=None, report=None) -> "Deployment":
        """Deploy the definition that ran before this one (see deploy.rollback)."""
        from .deploy import rollback
        return rollback(self.name, progress=progress, report=report)

    def undeploy(self) -> list[str]:
        return undeploy(self.name)

    def state(self) -> dict[str, tuple[list[str], list[list[str]]]]:
        """Live state of the functions that keep some (e.g. NAT translations):
        {function: (columns, rows)}."""
        out = {}
        for f in self.spec.functions:
            rows = f.ftype.state_rows(MapReader(self.record.maps, f.name), f.params)
            if rows is not None:
                out[f.name] = rows
        return out

    def stats(self) -> dict[str, dict[str, Any]]:
        """Counters per function (and '(entry)'), summed over CPUs."""
        self._require_pins()
        out: dict[str, dict[str, Any]] = chain_counters(self.record)
        for f in self.spec.functions:
            out[f.name].update(f.ftype.read_counters(MapReader(self.record.maps, f.name), f.params))
        return out


def listing() -> list["Deployment | RecordError"]:
    """Every chain vnfchain knows of, by name: a Deployment for each readable record
    (finished or not) and for pins left without a record, a RecordError for each
    record that cannot be read."""
    recorded = set(recorded_names())
    root = own_pin_root()
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
    record = Record.read(name)
    if record is not None:
        return Deployment(record)
    pin_dir = pin_root() / name
    if pin_dir.is_dir():
        return Deployment(Record(name=name, state="no record", pin_dir=pin_dir))
    return None
