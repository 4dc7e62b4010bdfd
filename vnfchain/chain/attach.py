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
    prog = f" (program id {state[0]})" if state else ""
    owner, fix = owner_and_fix(point, state[0] if state else None)
    return f"interface {point} already has an XDP program{prog} attached{f' by {owner}' if owner else ''}; {fix}"


def owner_and_fix(point: AttachPoint, prog_id: int | None) -> tuple[str, str]:
    """Whose program a busy hook runs ("chain 'x'", or "" when it is no chain's),
    and how to free the hook."""
    for record in readable_records():
        if prog_id is not None and record.entry_prog_id == prog_id:
            return f"chain '{record.name}'", f"`vnfchain undeploy {record.name}` first"
    return "", f"detach it first: `ip {'-n ' + point.netns + ' ' if point.netns else ''}" \
               f"link set dev {point.interface} xdp off`"


Running = dict[tuple[str, str | None], tuple[int, str]]   # hook -> (fd of the chain's program there, mode)


def swap(old: Record, spec: ChainSpec, targets: Targets, new_fd: int, say: Progress, *,
         replace: bool = True) -> tuple[Attachment, ...]:
    """Point every kept interface at the new entry (XDP_FLAGS_REPLACE), attach the
    added ones, detach the removed ones; on failure put back what was switched.
    Returns the attachments that run ``new_fd`` (``replace`` False: the same
    program as before; only added and removed interfaces change)."""
    old_fd = bpfsys.obj_get(str(old.gen_dir / "entry"))
    try:
        kept = {a.key: a for a in old.attachments}
        wanted = {(point.interface, point.netns) for point, _ in targets}
        for point, _ in targets:
            current = kept.get((point.interface, point.netns))
            if current and spec.xdp_mode not in ("auto", current.mode):
                raise AttachError(f"{point} runs the chain in {current.mode} mode; changing "
                                  f"xdp_mode of a running chain is not live: undeploy it first")
        running = {key: (old_fd, a.mode) for key, a in kept.items()}
        return retarget(old, spec, targets, new_fd, running, say, keep=kept if not replace else {},
                        detach=[(a, old_fd) for key, a in kept.items() if key not in wanted])
    finally:
        os.close(old_fd)


def retarget(record: Record, spec: ChainSpec, targets: Targets, new_fd: int, running: Running,
             say: Progress, *, keep: dict | None = None,
             detach: list[tuple[Attachment, int]] = ()) -> tuple[Attachment, ...]:
    """Make every target run ``new_fd``: a hook that runs one of the chain's
    programs (``running``) is switched atomically (XDP_FLAGS_REPLACE, naming
    that program), a free one attached; ``keep`` (hook -> Attachment): hooks
    whose program stays; ``detach``: (attachment, the chain's program there)
    to take off. On failure puts back what it switched, and raises."""
    keep = keep or {}
    done: list[tuple[Attachment, int | None]] = []   # (attachment, the program it ran before, if any)
    try:
        attachments = []
        for point, index in targets:
            key = (point.interface, point.netns)
            if key in keep:
                attachments.append(keep[key])
            elif key in running:
                fd, mode = running[key]
                say(f"switching {point} to the new programs")
                netlink.xdp_attach(index, new_fd, mode, point.netns, replace_fd=fd)
                done.append((noted(point, index, mode), fd))
                attachments.append(done[-1][0])
            else:
                say(f"attaching to {point}")
                # noted on disk first: if this process dies before the change is
                # recorded, undeploy still finds (and detaches) this interface
                record = record.replace(pending=record.pending + (noted(point, index),))
                record.save()
                done.append((noted(point, index, attach(new_fd, point, index, spec.xdp_mode)), None))
                attachments.append(done[-1][0])
        for gone, fd in detach:
            say(f"detaching from {gone.where}")
            netlink.xdp_detach(gone.ifindex, gone.mode, gone.netns, expected_fd=fd)
        return tuple(attachments)
    except BaseException:
        for a, before in reversed(done):
            with contextlib.suppress(Exception):
                if before is not None:
                    netlink.xdp_attach(a.ifindex, before, a.mode, a.netns, replace_fd=new_fd)
                else:
                    netlink.xdp_detach(a.ifindex, a.mode, a.netns, expected_fd=new_fd)
        raise


def reattach(record: Record, spec: ChainSpec, targets: Targets, say: Progress) -> Record:
    """Same programs, possibly a different attach list."""
    entry_fd = bpfsys.obj_get(str(record.gen_dir / "entry"))
    try:
        attachments = swap(record, spec, targets, entry_fd, say, replace=False)
    finally:
        os.close(entry_fd)
    return record.replace(attachments=attachments, pending=())
