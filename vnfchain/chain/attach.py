"""Put a chain's entry program on its interfaces' XDP hooks, and take it off.

Never over someone else's program: attaching asks the kernel to refuse a busy
hook (XDP_FLAGS_UPDATE_IF_NOEXIST), a swap names the program it replaces
(XDP_FLAGS_REPLACE), and the refusal says whose program is there and how to
remove it. An interface about to be attached is noted in the record first
(``pending``), so that undeploy finds it even if vnfchain dies right after.
"""
from __future__ import annotations

import contextlib
import errno
import os

from .. import bpfsys, netlink
from ..errors import AttachError
from .build import Progress
from .model import AttachPoint, ChainSpec
from .record import Attachment, Record, readable_records

Targets = list[tuple[AttachPoint, int]]   # where to attach, with each interface's ifindex


def resolve(spec: ChainSpec) -> Targets:
    out = []
    for point in spec.attach:
        index = netlink.ifindex(point.interface, point.netns)
        if not index:
            raise AttachError(f"interface '{point.interface}' does not exist in "
                              f"{netlink.where(point.netns)}; create it or fix 'attach:'")
        out.append((point, index))
    return out


def noted(point: AttachPoint, index: int, mode: str | None = None) -> Attachment:
    return Attachment(point.interface, point.netns, index, mode)


def attach(fd: int, point: AttachPoint, index: int, xdp_mode: str) -> str:
    """Attach program ``fd``; the XDP mode it runs in."""
    modes = ["native", "generic"] if xdp_mode == "auto" else [xdp_mode]
    for mode in modes:
        try:
            netlink.xdp_attach(index, fd, mode, point.netns)
            return mode
        except netlink.NetlinkError as exc:
            if exc.code == errno.EBUSY or exc.code == errno.EEXIST:
                raise AttachError(busy_message(point, index)) from None
            if mode == modes[-1] or exc.code not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ERANGE):
                hint = " (native XDP needs driver support: try xdp_mode: generic)" \
                    if mode == "native" else ""
                raise AttachError(f"cannot attach to {point}: {os.strerror(exc.code)}{hint}") from None
    raise AssertionError("unreachable")


def check_free(record: Record, targets: Targets) -> None:
    """Interfaces a change would add carry no XDP program yet."""
    attached = {a.key for a in record.attachments}
    for point, index in targets:
        if (point.interface, point.netns) not in attached and netlink.xdp_state(index, point.netns):
            raise AttachError(busy_message(point, index))


def busy_message(point: AttachPoint, index: int) -> str:
    state = netlink.xdp_state(index, point.netns)
    owner = ""
    for record in readable_records():
        if any(a.ifindex == index and a.netns == point.netns for a in record.attachments):
            owner = f" by chain '{record.name}'; `vnfchain undeploy {record.name}` first"
    prog = f" (program id {state[0]})" if state else ""
    fix = owner or f"; detach it first: `ip {'-n ' + point.netns + ' ' if point.netns else ''}" \
                   f"link set dev {point.interface} xdp off`"
    return f"interface {point} already has an XDP program{prog} attached{fix}"


def swap(old: Record, spec: ChainSpec, targets: Targets, new_fd: int, say: Progress, *,
         replace: bool = True) -> tuple[Attachment, ...]:
    """Point every kept interface at the new entry (XDP_FLAGS_REPLACE), attach the
    added ones, detach the removed ones; on failure put back what was switched.
    Returns the attachments that run ``new_fd`` (``replace`` False: the same
    program as before; only added and removed interfaces change)."""
    old_fd = bpfsys.obj_get(str(old.gen_dir / "entry"))
    done: list[tuple[Attachment, str]] = []   # (attachment, "replaced" | "attached")
    kept = {a.key: a for a in old.attachments}
    try:
        attachments = []
        for point, index in targets:
            current = kept.pop((point.interface, point.netns), None)
            if current and spec.xdp_mode not in ("auto", current.mode):
                raise AttachError(f"{point} runs the chain in {current.mode} mode; changing "
                                  f"xdp_mode of a running chain is not live: undeploy it first")
            if current and not replace:
                attachments.append(current)
            elif current:
                say(f"switching {point} to the new programs")
                netlink.xdp_attach(index, new_fd, current.mode, point.netns, replace_fd=old_fd)
                done.append((current, "replaced"))
                attachments.append(current)
            else:
                say(f"attaching to {point}")
                # noted on disk first: if this process dies before the change is
                # recorded, undeploy still finds (and detaches) this interface
                old = old.replace(pending=old.pending + (noted(point, index),))
                old.save()
                a = noted(point, index, attach(new_fd, point, index, spec.xdp_mode))
                done.append((a, "attached"))
                attachments.append(a)
        for gone in kept.values():
            say(f"detaching from {gone.where}")
            netlink.xdp_detach(gone.ifindex, gone.mode, gone.netns, expected_fd=old_fd)
        return tuple(attachments)
    except BaseException:
        for a, how in reversed(done):
            with contextlib.suppress(Exception):
                if how == "replaced":
                    netlink.xdp_attach(a.ifindex, old_fd, a.mode, a.netns, replace_fd=new_fd)
                else:
                    netlink.xdp_detach(a.ifindex, a.mode, a.netns, expected_fd=new_fd)
        raise
    finally:
        os.close(old_fd)


def reattach(record: Record, spec: ChainSpec, targets: Targets, say: Progress) -> Record:
    """Same programs, possibly a different attach list."""
    entry_fd = bpfsys.obj_get(str(record.gen_dir / "entry"))
    try:
        attachments = swap(record, spec, targets, entry_fd, say, replace=False)
    finally:
        os.close(entry_fd)
    return record.replace(attachments=attachments, pending=())
