"""The few BPF syscalls vnfchain makes itself, through libbpf (ctypes).

BCC compiles and loads; everything that must work without BCC in a later
process (pins, reading counters, program ids) goes through here.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from functools import lru_cache

from .errors import EnvironmentError_

_INFO_LEN = 256  # bigger than struct bpf_{prog,map}_info; the kernel accepts zeroed tails


@lru_cache(maxsize=1)
def lib() -> ctypes.CDLL:
    name = ctypes.util.find_library("bpf") or "libbpf.so.1"
    try:
        handle = ctypes.CDLL(name, use_errno=True)
    except OSError:
        raise EnvironmentError_("libbpf is not installed; run `apt-get install libbpf1` "
                                "(scripts/setup.sh does)") from None
    handle.bpf_obj_get.argtypes = [ctypes.c_char_p]
    handle.bpf_obj_pin.argtypes = [ctypes.c_int, ctypes.c_char_p]
    for fn in ("bpf_map_lookup_elem", "bpf_map_get_next_key"):
        getattr(handle, fn).argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
    handle.bpf_map_delete_elem.argtypes = [ctypes.c_int, ctypes.c_void_p]
    handle.bpf_map_update_elem.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                                           ctypes.c_uint64]
    handle.bpf_map_update_batch.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                                            ctypes.POINTER(ctypes.c_uint32), ctypes.c_void_p]
    handle.bpf_map_lookup_batch.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                                            ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32), ctypes.c_void_p]
    handle.bpf_obj_get_info_by_fd.argtypes = [ctypes.c_int, ctypes.c_void_p,
                                              ctypes.POINTER(ctypes.c_uint32)]
    handle.bpf_prog_get_fd_by_id.argtypes = [ctypes.c_uint32]
    handle.bpf_map_get_fd_by_id.argtypes = [ctypes.c_uint32]
    return handle


def _check(rc: int, what: str) -> int:
    if rc < 0:
        err = -rc if rc < -1 else ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return rc


def obj_get(path: str) -> int:
    """An fd for a pinned program or map (the caller closes it)."""
    return _check(lib().bpf_obj_get(str(path).encode()), f"open pin {path}")


def obj_pin(fd: int, path: str) -> None:
    _check(lib().bpf_obj_pin(fd, str(path).encode()), f"pin {path}")


def prog_by_id(prog_id: int) -> int | None:
    """An fd for the program of that id while anything holds it (an interface, a
    pin, a prog array), None once it is gone; the caller closes it."""
    return _by_id(lib().bpf_prog_get_fd_by_id, prog_id, "program")


def map_by_id(map_id: int) -> int | None:
    """An fd for the map of that id while anything holds it, None once it is gone."""
    return _by_id(lib().bpf_map_get_fd_by_id, map_id, "map")


def _by_id(get, obj_id: int, what: str) -> int | None:
    rc = get(obj_id)
    if rc < 0 and (-rc if rc < -1 else ctypes.get_errno()) == errno.ENOENT:
        return None
    return _check(rc, f"open {what} id {obj_id}")


def update_batch(fd: int, keys: bytes, values: bytes, count: int) -> None:
    """Write ``count`` entries in one syscall; keys and values are packed back to
    back (a per-CPU map's value holds one slot per possible CPU)."""
    n = ctypes.c_uint32(count)
    kbuf = ctypes.create_string_buffer(keys, len(keys))
    vbuf = ctypes.create_string_buffer(values, len(values))
    _check(lib().bpf_map_update_batch(fd, kbuf, vbuf, ctypes.byref(n), None), "batch map update")


def possible_cpus() -> int:
    return _check(lib().libbpf_num_possible_cpus(), "count possible CPUs")


def _info(fd: int) -> bytes:
    buf = ctypes.create_string_buffer(_INFO_LEN)
    size = ctypes.c_uint32(_INFO_LEN)
    _check(lib().bpf_obj_get_info_by_fd(fd, buf, ctypes.byref(size)), "read object info")
    return buf.raw


def prog_id(fd: int) -> int:
    """struct bpf_prog_info: __u32 type; __u32 id; ..."""
    return int.from_bytes(_info(fd)[4:8], "little")


def xlated_insns(fd: int) -> int:
    """Instructions of the program as the kernel holds it after the verifier's
    rewrites (struct bpf_prog_info: xlated_prog_len at byte 20, 8 bytes each)."""
    return int.from_bytes(_info(fd)[20:24], "little") // 8


def verified_insns(fd: int) -> int:
    """Instructions the verifier explored to load the program (every path
    counted): what its 1,000,000 budget is spent on. struct bpf_prog_info
    holds it at byte 216 (kernel 5.16 on; 0 before)."""
    return int.from_bytes(_info(fd)[216:220], "little")


def map_info(fd: int) -> dict[str, int]:
    """struct bpf_map_info: type, id, key_size, value_size, max_entries, map_flags."""
    raw = _info(fd)
    fields = ("type", "id", "key_size", "value_size", "max_entries", "map_flags")
    return {f: int.from_bytes(raw[4 * i:4 * i + 4], "little") for i, f in enumerate(fields)}


class PinnedMap:
    """A pinned map opened by path, read as raw bytes."""

    def __init__(self, path: str, fd: int | None = None):
        """``fd``: a map already open (owned from now on), ``path`` then only names it."""
        self.path = path
        self.fd = obj_get(path) if fd is None else fd
        info = map_info(self.fd)
        self.key_size, self.value_size = info["key_size"], info["value_size"]
        self.max_entries, self.type = info["max_entries"], info["type"]

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def map_fd(self) -> int:
        """BCC tables call it so: helpers such as write_array take either."""
        return self.fd

    @property
    def percpu(self) -> bool:
        # BPF_MAP_TYPE_PERCPU_HASH 5, PERCPU_ARRAY 6, LRU_PERCPU_HASH 10
        return self.type in (5, 6, 10)

    def _value_buffer(self):
        if self.percpu:
            stride = (self.value_size + 7) // 8 * 8
            return ctypes.create_string_buffer(stride * possible_cpus()), stride
        return ctypes.create_string_buffer(self.value_size), self.value_size

    def lookup(self, key: bytes) -> list[bytes] | None:
        """The value, one entry per possible CPU for per-CPU maps."""
        kbuf = ctypes.create_string_buffer(key, self.key_size)
        vbuf, stride = self._value_buffer()
        rc = lib().bpf_map_lookup_elem(self.fd, kbuf, vbuf)
        if rc < 0:
            err = -rc if rc < -1 else ctypes.get_errno()
            if err == errno.ENOENT:
                return None
            _check(rc, f"read {self.path}")
        raw = vbuf.raw
        return [raw[i:i + self.value_size] for i in range(0, len(raw), stride)]

    def update(self, key: bytes, value: bytes) -> None:
        kbuf = ctypes.create_string_buffer(key, self.key_size)
        vbuf = ctypes.create_string_buffer(value, len(value))
        _check(lib().bpf_map_update_elem(self.fd, kbuf, vbuf, 0), f"update {self.path}")

    def delete(self, key: bytes) -> None:
        kbuf = ctypes.create_string_buffer(key, self.key_size)
        _check(lib().bpf_map_delete_elem(self.fd, kbuf), f"delete from {self.path}")

    def read_array(self, start: int, count: int) -> list[bytes]:
        """Values of entries start .. start+count-1 of a (not per-CPU) array map,
        read in batches of syscalls rather than one per entry."""
        out: list[bytes] = []
        prev = ctypes.c_uint32(start - 1)
        nxt = ctypes.c_uint32()
        while len(out) < count:
            want = min(count - len(out), 8192)
            n = ctypes.c_uint32(want)
            keys = ctypes.create_string_buffer(4 * want)
            values = ctypes.create_string_buffer(self.value_size * want)
            rc = lib().bpf_map_lookup_batch(self.fd, ctypes.byref(prev) if start + len(out) else None,
                                            ctypes.byref(nxt), keys, values, ctypes.byref(n), None)
            err = (-rc if rc < -1 else ctypes.get_errno()) if rc < 0 else 0
            if err and err != errno.ENOENT:
                _check(rc, f"read {self.path}")
            raw = values.raw
            out += [raw[i * self.value_size:(i + 1) * self.value_size] for i in range(n.value)]
            if err or not n.value:
                break
            prev = ctypes.c_uint32(nxt.value)
        return out[:count]

    # item access in bytes, so helpers written for BCC tables (replace_contents)
    # work on a pinned map too
    def __setitem__(self, key: bytes, value: bytes) -> None:
        self.update(key, value)

    def __delitem__(self, key: bytes) -> None:
        self.delete(key)

    def keys(self):
        prev = None
        nxt = ctypes.create_string_buffer(self.key_size)
        while True:
            pbuf = None if prev is None else ctypes.create_string_buffer(prev, self.key_size)
            if lib().bpf_map_get_next_key(self.fd, pbuf, nxt) < 0:
                return
            prev = nxt.raw
            yield prev

    def count(self) -> int:
        """How many entries a hash map holds, read in batches (a full 65,536-flow
        table in a few syscalls rather than one per key)."""
        chunk = min(self.max_entries, 8192)
        keys = ctypes.create_string_buffer(self.key_size * chunk)
        values = ctypes.create_string_buffer(len(self._value_buffer()[0]) * chunk)
        token, total = ctypes.create_string_buffer(4), 0   # a hash map's batch token: a bucket index
        first = True
        while True:
            n = ctypes.c_uint32(chunk)
            rc = lib().bpf_map_lookup_batch(self.fd, None if first else token, token, keys, values,
                                            ctypes.byref(n), None)
            err = (-rc if rc < -1 else ctypes.get_errno()) if rc < 0 else 0
            if err and err != errno.ENOENT:   # ENOENT: read to the end
                _check(rc, f"read {self.path}")
            total += n.value
            if err:
                return total
            first = False

    def u64_totals(self) -> list[int]:
        """Every entry of an array map of u64 values, summed over CPUs for a
        per-CPU map, in one batch read (a counter per signature, say)."""
        assert self.value_size == 8, f"{self.path} does not hold u64 values"
        cpus = possible_cpus() if self.percpu else 1
        count = ctypes.c_uint32(self.max_entries)
        keys = ctypes.create_string_buffer(4 * self.max_entries)
        values = ctypes.create_string_buffer(8 * cpus * self.max_entries)
        out_batch = ctypes.create_string_buffer(4)
        rc = lib().bpf_map_lookup_batch(self.fd, None, out_batch, keys, values, ctypes.byref(count), None)
        if rc < 0 and (-rc if rc < -1 else ctypes.get_errno()) != errno.ENOENT:   # ENOENT: read to the end
            _check(rc, f"read {self.path}")
        slots = memoryview(values.raw).cast("Q")
        return [sum(slots[i * cpus:(i + 1) * cpus]) for i in range(count.value)]

    def sum_u64(self, key: bytes) -> list[int]:
        """A value made of u64 fields, summed over CPUs."""
        values = self.lookup(key) or []
        n = self.value_size // 8
        totals = [0] * n
        for cpu_value in values:
            for i in range(n):
                totals[i] += int.from_bytes(cpu_value[8 * i:8 * i + 8], "little")
        return totals
