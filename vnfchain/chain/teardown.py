"""Undeploy: take a chain off its interfaces, remove its pins and its record.

Also what a crash left: a record still ``deploying``, attachments noted as
``pending``, a record that cannot be read, pins without a record. Where the
record may not list every attachment, the chain's programs are looked for on
every interface of the root and the named network namespaces. Only programs of
this chain are ever detached.
"""
from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from .. import bpfsys, netlink
from ..errors import DeployError, NotDeployedError, RecordError
from .record import Attachment, Record, locked, own_pin_root, pin_root, record_path


def undeploy(name: str) -> list[str]:
    """Remove what deploy made for ``name``; idempotent. Returns warnings."""
    with locked(name):
        return _undeploy(name)


def _undeploy(name: str) -> list[str]:
    own_pin_root()
    try:
        record = Record.read(name)
    except RecordError as exc:
        stub = Record(name=name, state="unreadable", pin_dir=pin_root() / name)
        return [f"{exc.path} was unreadable ({exc.reason}); removed the pins under {stub.pin_dir} and "
                f"detached the chain's programs wherever they were attached"] + teardown(stub, search=True)
    if record is None:
        pin_dir = pin_root() / name
        if pin_dir.exists():  # a deploy that died before its record: only pins to remove
            remove_pins(pin_dir)
            return [f"chain '{name}' had no record; removed its pins {pin_dir}"]
        raise NotDeployedError(f"chain '{name}' is not deployed; `vnfchain ls` lists the running ones")
    return teardown(record, search=record.state != "running")


def teardown(record: Record, *, search: bool = False) -> list[str]:
    """Remove attachments, pins and record; returns warnings about what was skipped.
    Any generation's entry program counts as ours (a crash may leave the record
    naming another generation than the one attached); an interface still running
    one of ours after that keeps the pins, since removing them would empty the
    prog array under it. ``search``: the record may not list every attachment
    (unfinished, unreadable): look for our programs on every interface of the
    root and the named network namespaces too."""
    warnings = []
    entries = _entry_programs(record.pin_dir)
    still_ours = []
    try:
        listed = list(record.attachments)
        known = {a.key for a in listed}
        # pending: interfaces a live change was attaching when it stopped short
        pending = [a for a in record.pending if a.key not in known]
        known |= {a.key for a in pending}
        found = [a for a in (Attachment(**f) for f in netlink.find_xdp(set(entries))) if a.key not in known] \
            if search and entries else []
        for a in listed + pending + found:
            state = _attached(a)
            if state is None or state[0] not in entries:
                if a in listed:
                    warnings.append(f"{a.where}: no program of this chain was attached any more; left as is")
                continue
            if not netlink.xdp_detach(a.ifindex, a.mode or state[1], a.netns, expected_fd=entries[state[0]]):
                still_ours.append(a.where)
    finally:
        for fd in entries.values():
            os.close(fd)
    if still_ours:
        raise DeployError(f"could not detach chain '{record.name}' from {', '.join(still_ours)}; its "
                          f"pins are kept so the interface keeps working; detach by hand and undeploy again")
    remove_pins(record.pin_dir)
    try:
        record.forget()
    except OSError as exc:
        warnings.append(f"could not remove {record_path(record.name)}: {exc.strerror}; remove it by hand")
    return warnings


def _entry_programs(pin_dir: Path) -> dict[int, int]:
    """{program id: fd} of every generation's pinned entry program."""
    entries = {}
    for pin in sorted(pin_dir.glob("g*/entry")):
        with contextlib.suppress(OSError):
            fd = bpfsys.obj_get(str(pin))
            try:
                entries[bpfsys.prog_id(fd)] = fd
            except OSError:
                os.close(fd)
    return entries


def _attached(attachment: Attachment):
    if not netlink.netns_exists(attachment.netns):
        return None
    with contextlib.suppress(Exception):
        return netlink.xdp_state(attachment.ifindex, attachment.netns)
    return None


def remove_pins(pin_dir: Path) -> None:
    if not pin_dir.exists():
        return
    root = pin_root().resolve()
    if root not in pin_dir.resolve().parents:
        raise DeployError(f"refusing to remove {pin_dir}: it is not under {root}")
    shutil.rmtree(pin_dir)
