"""Map layouts, declared once.

A map's key and value (and a ring buffer's record) are declared here as data;
from that one declaration come the C struct the function's template includes
(``Struct.c``, rendered into the template as ``{{ structs }}``) and the codec
user space reads and writes the pinned map with (``pack``/``unpack``). Katran
shares one header between its BPF program and its user-space code; the
templates here are rendered anyway, so the C is generated instead, and a unit
test holds every declaration to clang's ``sizeof`` and ``offsetof``.

    TUPLE = Struct("tuple", "one side's view of a flow", [
        Member("saddr", BE32, "network order"),
        Member("sport", BE16),
        Member("proto", U8),
        Member("pad", U8),
    ])
    TUPLE.c("nat")  ->  struct nat_tuple { __be32 saddr; ... };
    TUPLE.pack({"saddr": int(address), "sport": 80, "proto": 6})

Padding is explicit: a member C would align with a gap before it, or a struct
whose size is not a multiple of its alignment, is refused (unless ``packed``),
so the declared members are every byte of the struct. Values in Python:

- an integer member is an int; a network-order one (``__be16``, ``__be32``) too,
  in host order (port 80, ``int(IPv4Address)``), byte-swapped into the map;
- an array of bytes (``__u8``, ``char``) or of network-order integers is bytes
  (an address as on the wire); an array of other integers a sequence of ints;
  any array may be given as its raw bytes, and a shorter value is zero-filled;
- a nested struct is a dict, an array of structs a sequence of dicts;
- a member left out of ``pack`` is zero (padding need never be given).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence, Union


@dataclass(frozen=True)
class Scalar:
    """A C integer type."""

    name: str            # as C spells it: __u32
    code: str            # the struct module's code for it (little-endian)
    network: bool = False   # stored in network byte order (__be16, __be32)

    @property
    def size(self) -> int:
        return struct.calcsize("<" + self.code)

    @property
    def align(self) -> int:
        return self.size

    def c_type(self, prefix: str = "") -> str:
        return self.name

    def definition(self) -> str:
        return self.name

    def structs(self) -> list["Struct"]:
        return []

    def pack(self, value: int) -> bytes:
        if self.network:
            return value.to_bytes(self.size, "big")
        return struct.pack("<" + self.code, value)

    def unpack(self, raw: bytes) -> int:
        if self.network:
            return int.from_bytes(raw[:self.size], "big")
        return struct.unpack_from("<" + self.code, raw)[0]

    def pack_many(self, values: Sequence[int]) -> bytes:
        """Values back to back, as an array member holds them."""
        if self.network:
            return b"".join(v.to_bytes(self.size, "big") for v in values)
        return struct.pack(f"<{len(values)}{self.code}", *values)

    def unpack_many(self, raw: bytes) -> tuple[int, ...]:
        if self.network:
            return tuple(int.from_bytes(raw[i:i + self.size], "big") for i in range(0, len(raw), self.size))
        return struct.unpack(f"<{len(raw) // self.size}{self.code}", raw)


U8 = Scalar("__u8", "B")
U16 = Scalar("__u16", "H")
U32 = Scalar("__u32", "I")
U64 = Scalar("__u64", "Q")
S32 = Scalar("__s32", "i")
BE16 = Scalar("__be16", "H", network=True)
BE32 = Scalar("__be32", "I", network=True)
CHAR = Scalar("char", "B")


@dataclass(frozen=True)
class Member:
    """A struct member: a scalar or a struct, or an array of ``count`` of them."""

    name: str
    type: Union[Scalar, "Struct"]
    doc: str = ""
    count: int | None = None

    @property
    def size(self) -> int:
        return self.type.size * (self.count or 1)

    @property
    def raw(self) -> bool:
        """An array held as bytes in Python (bytes, or network-order integers)."""
        return isinstance(self.type, Scalar) and (self.type.size == 1 or self.type.network)

    def decl(self, prefix: str) -> str:
        return f"{self.type.c_type(prefix)} {self.name}" + (f"[{self.count}]" if self.count is not None else "")

    def pack(self, value: Any) -> bytes:
        if value is None:
            return bytes(self.size)
        if self.count is None:
            return self.type.pack(value)
        if isinstance(value, (bytes, bytearray)):
            raw = bytes(value)
        elif isinstance(self.type, Struct):
            raw = b"".join(self.type.pack(v) for v in value)
        else:
            raw = self.type.pack_many(value)
        if len(raw) > self.size:
            raise ValueError(f"member {self.name}: {len(raw)} bytes do not fit its {self.size}")
        return raw.ljust(self.size, b"\0")

    def unpack(self, raw: bytes) -> Any:
        if self.count is None:
            return self.type.unpack(raw)
        if self.raw:
            return raw
        if isinstance(self.type, Struct):
            step = self.type.size
            return tuple(self.type.unpack(raw[i:i + step]) for i in range(0, len(raw), step))
        return self.type.unpack_many(raw)


@dataclass(frozen=True)
class Struct:
    """A C struct. ``name`` follows the function's prefix in C (``flow`` is
    ``struct <fn>_flow``); a ``shared`` struct is a library header's type,
    spelt as named and defined once per program however many functions use it."""

    name: str
    doc: str
    members: tuple[Member, ...]
    packed: bool = False
    shared: bool = False
    offsets: tuple[int, ...] = field(init=False, repr=False, compare=False)
    size: int = field(init=False, repr=False, compare=False)
    align: int = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "members", tuple(self.members))
        object.__setattr__(self, "align", 1 if self.packed else max(m.type.align for m in self.members))
        offsets, at = [], 0
        for m in self.members:
            if at % (1 if self.packed else m.type.align):
                raise ValueError(f"struct {self.name}: member {m.name} at offset {at} needs {m.type.align}-byte "
                                 f"alignment; declare the padding before it")
            offsets.append(at)
            at += m.size
        if at % self.align:
            raise ValueError(f"struct {self.name}: {at} bytes is not a multiple of its {self.align}-byte "
                             f"alignment; declare the padding at its end")
        object.__setattr__(self, "offsets", tuple(offsets))
        object.__setattr__(self, "size", at)

    def c_type(self, prefix: str = "") -> str:
        return f"struct {self.name}" if self.shared else f"struct {prefix}_{self.name}"

    def definition(self) -> str:
        """What the layout is, in one line without comments: nested structs
        spelt out (a map pinned under its hash keeps its contents exactly as
        long as this stays the same)."""
        members = ";".join(f"{m.type.definition()} {m.name}" + (f"[{m.count}]" if m.count is not None else "")
                           for m in self.members)
        return f"struct {self.name}{{{members}}}" + (" packed" if self.packed else "")

    def structs(self) -> list["Struct"]:
        """The structs this one is made of, then itself: the order C needs."""
        out: list[Struct] = []
        for m in self.members:
            for s in m.type.structs():
                if s not in out:
                    out.append(s)
        return out + [self]

    def c(self, prefix: str) -> str:
        """The C definition, a one-line comment above it and beside each member."""
        decls = [f"{m.decl(prefix)};" for m in self.members]
        width = max(len(d) for d in decls) + 1
        lines = [f"/* {self.doc} */", f"{self.c_type(prefix)} {{"]
        for m, d in zip(self.members, decls):
            lines.append(f"\t{d.ljust(width)}/* {m.doc} */" if m.doc else f"\t{d}")
        lines.append("}" + (" __attribute__((packed));" if self.packed else ";"))
        text = "\n".join(lines)
        if self.shared:   # several functions of one program may render it
            guard = f"VC_STRUCT_{self.name.upper()}"
            text = f"#ifndef {guard}\n#define {guard}\n{text}\n#endif"
        return text

    def pack(self, value: dict | None = None) -> bytes:
        value = value or {}
        unknown = set(value) - {m.name for m in self.members}
        if unknown:
            raise ValueError(f"struct {self.name} has no member {', '.join(sorted(unknown))}")
        return b"".join(m.pack(value.get(m.name)) for m in self.members)

    def unpack(self, raw: bytes) -> dict:
        return {m.name: m.unpack(raw[at:at + m.size]) for m, at in zip(self.members, self.offsets)}


Layout = Union[Scalar, Struct]


def c_structs(layouts: Iterable[Layout], prefix: str) -> str:
    """The C definitions of every struct the layouts are made of, each once,
    nested ones first."""
    seen: list[Struct] = []
    for layout in layouts:
        for s in layout.structs():
            if s not in seen:
                seen.append(s)
    return "\n\n".join(s.c(prefix) for s in seen)


def pack_percpu(layout: Layout, values: Sequence[Any]) -> bytes:
    """One value per possible CPU, as a per-CPU map's update takes them (each
    rounded up to 8 bytes, as the kernel lays them out)."""
    stride = (layout.size + 7) // 8 * 8
    return b"".join(layout.pack(v).ljust(stride, b"\0") for v in values)


def unpack_percpu(layout: Layout, per_cpu: Sequence[bytes]) -> list[Any]:
    """A per-CPU value as ``PinnedMap.lookup`` returns it, one entry per CPU."""
    return [layout.unpack(raw) for raw in per_cpu]
