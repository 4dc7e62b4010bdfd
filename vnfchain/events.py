"""Events from a running chain: the ring buffers its functions pinned (today the
dpi function's alerts), read by any later process through libbpf's
``ring_buffer`` API (ctypes), as ``vnfchain events`` does.

    with EventReader(Deployment.get("edge")) as reader:
        for event in reader.events(timeout=5.0, count=10):
            print(event["function"], event["id"], event["src"], "->", event["dst"])

A ring buffer has one read position, shared by everyone who reads it: two
readers of one chain split its events between them. Events that arrive while
nobody reads wait in the ring (256 KiB, about 2,000 alerts per dpi function);
beyond that they are dropped and counted (``alerts_lost`` in ``vnfchain stats``).
"""
from __future__ import annotations

import ctypes
import errno
import os
import time
from typing import TYPE_CHECKING, Callable, Iterator

from . import bpfsys
from .errors import VnfchainError

if TYPE_CHECKING:
    from .chain.deployment import Deployment

EVENTS_MAP = "events"   # a function's ring buffer, declared with VC_RINGBUF(<fn>_events, size)

_STOP = -errno.ECANCELED   # a sample callback's "enough": libbpf stops consuming after that sample
_SAMPLE = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)


def _ring_api() -> ctypes.CDLL:
    lib = bpfsys.lib()
    lib.ring_buffer__new.restype = ctypes.c_void_p
    lib.ring_buffer__new.argtypes = [ctypes.c_int, _SAMPLE, ctypes.c_void_p, ctypes.c_void_p]
    lib.ring_buffer__add.argtypes = [ctypes.c_void_p, ctypes.c_int, _SAMPLE, ctypes.c_void_p]
    lib.ring_buffer__poll.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.ring_buffer__free.argtypes = [ctypes.c_void_p]
    return lib


def monotonic_to_wall(ktime_ns: int) -> float:
    """bpf_ktime_get_ns() (CLOCK_MONOTONIC) as a Unix time."""
    return time.time() - (time.monotonic_ns() - ktime_ns) / 1e9


class EventReader:
    """Every events ring buffer of a deployed chain, decoded by its function type."""

    def __init__(self, dep: "Deployment"):
        self._lib = _ring_api()
        self._ring = None
        self._fds: list[int] = []
        self._callbacks = []     # ctypes keeps no reference of its own
        self._pending: list[dict] = []
        self._limit: int | None = None
        self._error: BaseException | None = None
        pins = dep.record.maps
        try:
            for f in dep.spec.functions:
                pin = pins.get(f"{f.name}_{EVENTS_MAP}")
                if pin:
                    self._add(pin, f.name, f.ftype.decode_event)
        except OSError as exc:
            self.close()
            raise VnfchainError(f"cannot read the events of chain '{dep.name}': {exc.strerror}"
                                + ("; run as root" if exc.errno in (errno.EPERM, errno.EACCES) else "")) from None
        except BaseException:
            self.close()
            raise
        if not self._fds:
            raise VnfchainError(f"chain '{dep.name}' has no function that sends events (a dpi "
                                f"function does: signatures or app rules with action: alert)")

    def _add(self, pin: str, function: str, decode: Callable[[bytes], dict | None]) -> None:
        def sample(_ctx, data, size):
            try:
                decoded = decode(ctypes.string_at(data, size))
                if decoded is None:     # a record its type does not show
                    return 0
                event = {"function": function, **decoded}
                event["time"] = monotonic_to_wall(event["ktime_ns"])
                self._pending.append(event)
            except BaseException as exc:   # never let an exception unwind through libbpf
                self._error = exc
                return -1
            # enough: the rest stay in the ring for the next read
            return _STOP if self._limit is not None and len(self._pending) >= self._limit else 0

        fd = bpfsys.obj_get(pin)
        self._fds.append(fd)
        callback = _SAMPLE(sample)
        self._callbacks.append(callback)
        if self._ring is None:
            self._ring = self._lib.ring_buffer__new(fd, callback, None, None)
            if not self._ring:
                raise OSError(ctypes.get_errno(), f"open ring buffer {pin}: {os.strerror(ctypes.get_errno())}")
        elif self._lib.ring_buffer__add(self._ring, fd, callback, None) < 0:
            raise OSError(ctypes.get_errno(), f"open ring buffer {pin}: {os.strerror(ctypes.get_errno())}")

    def poll(self, timeout: float, limit: int | None = None) -> list[dict]:
        """Events that arrive within ``timeout`` seconds (those waiting first);
        at most ``limit`` of them: the others are left in the ring."""
        self._limit = limit
        try:
            rc = self._lib.ring_buffer__poll(self._ring, max(0, int(timeout * 1000)))
        finally:
            self._limit = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        if rc < 0 and rc != _STOP and -rc != errno.EINTR:   # EINTR: a signal (Ctrl-C) came first
            raise OSError(-rc, f"read events: {os.strerror(-rc)}")
        events, self._pending = self._pending, []
        return events

    def events(self, *, timeout: float | None = None, count: int | None = None) -> Iterator[dict]:
        """Events as they come, until ``count`` of them or ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        seen, first = 0, True
        while count is None or seen < count:
            left = 0.25 if deadline is None else min(0.25, deadline - time.monotonic())
            if left < 0 and not first:      # polled at least once, even with timeout 0
                return
            first = False
            for event in self.poll(max(0.0, left), None if count is None else count - seen):
                yield event
                seen += 1
                if count is not None and seen >= count:
                    return

    def close(self) -> None:
        if self._ring:
            self._lib.ring_buffer__free(self._ring)
            self._ring = None
        for fd in self._fds:
            os.close(fd)
        self._fds = []

    def __enter__(self) -> "EventReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def format_event(event: dict) -> str:
    """One line: time, function, id, what matched, proto, src:port -> dst:port."""
    stamp = time.strftime("%H:%M:%S", time.localtime(event["time"])) + f".{int(event['time'] % 1 * 1e6):06d}"
    what = event["app"] + (f" {event['name']}" if event.get("name") else "")
    src = f"[{event['src']}]" if ":" in event["src"] else event["src"]
    dst = f"[{event['dst']}]" if ":" in event["dst"] else event["dst"]
    return (f"{stamp} {event['function']} id {event['id']} {what} {event['proto']} "
            f"{src}:{event['sport']} -> {dst}:{event['dport']}")
