"""vnfchain's own state on disk, kept from local users.

    /run/vnfchain/                    0700, root's ($VNFCHAIN_RUN overrides the path)
        <chain>.json                  0600: what deploy made, the chain's rules included
        vnfchain.lock                 0600: one deploy, change or undeploy at a time
        testbeds/<bed>.json, <bed>/   0600 / 0700: test-bed records and service logs

A local user must neither read the rules nor hold the lock (which would block
every deploy). Directories are made 0700 and files 0600 as they are created
(``os.open`` with the mode: never a moment when they are readable by others),
never through a symbolic link (O_NOFOLLOW) and never over a file that is already
there (O_EXCL, after removing it): in a directory someone else could once write
to, a planted link or hard link must not make vnfchain write elsewhere. A
directory of ours with looser permissions (an older vnfchain made them 0755) is
tightened, and the files in it replaced by private copies; one that is not
ours, or a link, is refused.

    /sys/fs/bpf/vnfchain/             root's, no one else may write ($VNFCHAIN_BPFFS)

The pin root lives in bpffs, whose top anyone may write to (mode 1777, like
/tmp, and empty after a boot): whoever makes it first owns the directory every
chain is pinned in, and could move a chain's pins away from under undeploy.
vnfchain makes it 0700, keeps others' write bits off an existing one of its
own, and refuses one of someone else's (``owned_dir``).

Errors about a file are OSErrors whose ``strerror`` says what is wrong, for the
caller to put in its own message; errors about the directory are
``EnvironmentError_``.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from pathlib import Path

from .errors import EnvironmentError_

_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC


def run_dir() -> Path:
    return Path(os.environ.get("VNFCHAIN_RUN", "/run/vnfchain"))


def private_dir(path: Path, *, create: bool = True) -> Path | None:
    """``path`` as a directory only we may enter: made 0700, or checked and tightened.
    Without ``create``, None when it does not exist."""
    if create:
        _as_environment_error(path, path.parent.mkdir, 0o755, True, True)   # /run is there already
    was = _our_dir(path, create, lambda mode: 0o700)
    if was is None:
        return None
    if was != 0o700:
        _tighten_files(path)
    return path


def owned_dir(path: Path, *, create: bool = True) -> Path | None:
    """``path`` as a directory of ours that nobody else may write to: made 0700,
    or checked and kept from others' writes; one of someone else's, or a link, is
    refused. For the pin root, in bpffs, whose top (/sys/fs/bpf) anyone may write
    to, like /tmp: whoever makes the directory first owns every chain's pins.
    Without ``create``, None when it does not exist."""
    return path if _our_dir(path, create, lambda mode: mode & ~0o022) is not None else None


def _our_dir(path: Path, create: bool, wanted) -> int | None:
    """Make (0700) or open ``path``, never through a link, refuse it unless it is
    ours, and give it the mode ``wanted(its mode)``; the mode it had, or None
    when it does not exist."""
    if create:
        with contextlib.suppress(FileExistsError):
            _as_environment_error(path, os.mkdir, path, 0o700)
    try:
        fd = _as_environment_error(path, os.open, path, os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW)
    except FileNotFoundError:
        return None
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            raise EnvironmentError_(_foreign_dir(path, st.st_uid))
        was = stat.S_IMODE(st.st_mode)
        if wanted(was) != was:
            os.fchmod(fd, wanted(was))
    finally:
        os.close(fd)
    return was


def _as_environment_error(path: Path, call, *args):
    try:
        return call(*args)
    except (FileNotFoundError, FileExistsError):
        raise
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise EnvironmentError_(f"{path} is not a directory but a link or a file; vnfchain keeps "
                                    f"its state there: remove it (after checking what it is)") from None
        if exc.errno == errno.EACCES and os.geteuid() != 0:
            raise EnvironmentError_(f"{path} holds vnfchain's state, which only root may read; "
                                    f"run it as root") from None
        raise EnvironmentError_(f"cannot use {path} for vnfchain's state: {exc.strerror}") from None


def _foreign_dir(path: Path, uid: int) -> str:
    if uid == 0:
        return f"{path} holds vnfchain's state, which only root may read; run it as root"
    return (f"{path} belongs to uid {uid}, not to uid {os.geteuid()}: someone else made it, so "
            f"vnfchain keeps no state there; check what it holds and remove it")


def _tighten_files(path: Path) -> None:
    """Replace each file of ours by a private copy: a chmod would leave whoever opened
    one while it was open to all (the lock, to block every deploy) holding it."""
    for entry in os.scandir(path):
        if entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_uid == os.geteuid():
            write_private(Path(entry.path), Path(entry.path).read_bytes())


def open_private(path: Path, flags: int) -> int:
    """An fd of ``path``, a regular file of ours; raises OSError (strerror says why)
    for a link, anything but a regular file, or a file of someone else's."""
    fd = os.open(path, flags | _NOFOLLOW | os.O_NONBLOCK, 0o600)   # O_NONBLOCK: a FIFO never blocks us
    st = os.fstat(fd)
    problem = None
    if not stat.S_ISREG(st.st_mode):
        problem = "is not a regular file"
    elif st.st_uid != os.geteuid():
        problem = f"belongs to uid {st.st_uid}, not to uid {os.geteuid()}"
    if problem:
        os.close(fd)
        raise PermissionError(errno.EPERM, problem, str(path))
    return fd


def read_private(path: Path) -> bytes | None:
    """The contents of a file of ours, or None when there is none."""
    try:
        fd = open_private(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise PermissionError(errno.ELOOP, "is a symbolic link", str(path)) from None
        raise
    with os.fdopen(fd, "rb") as f:
        return f.read()


def create_private(path: Path, data: bytes = b"") -> None:
    """Create ``path`` (0600) with ``data``; FileExistsError if it is there."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(fd, 0o600)      # whatever the umask
        f.write(data)


def write_private(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` at once (readers see the old or the new file)."""
    tmp = _tmp(path)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    create_private(tmp, data)
    os.replace(tmp, path)


def remove_private(path: Path) -> None:
    """Remove ``path`` and what a write of it that stopped half-way left."""
    for p in (path, _tmp(path)):
        p.unlink(missing_ok=True)


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp")


@contextlib.contextmanager
def locked(lock: Path):
    """Hold ``lock`` (a file in a private directory) exclusively; a second holder waits.
    A lock file that is not a 0600 file of ours with one name (an older vnfchain's,
    a link, a hard link) is replaced first, so that whoever has the old one open
    holds nothing."""
    fd = None
    try:
        fd = open_private(lock, os.O_RDWR | os.O_CREAT)
        st = os.fstat(fd)
        if stat.S_IMODE(st.st_mode) != 0o600 or st.st_nlink != 1:
            raise PermissionError(errno.EPERM, "not a 0600 file with one name", str(lock))
    except OSError as exc:
        if fd is not None:
            os.close(fd)
        if isinstance(exc, FileNotFoundError):
            raise
        write_private(lock, b"")
        fd = open_private(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def held(lock: Path) -> bool:
    """Someone holds ``lock`` now (a probe: our own holds count too)."""
    try:
        fd = open_private(lock, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
