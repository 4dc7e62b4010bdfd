"""The contract of a function type.

A function type is one module (or package) in ``vnfchain/functions/`` defining
a subclass of ``FunctionType``, plus one template
``templates/bpf/<type>.bpf.c.j2``. The class declares:

- ``Params``: a pydantic model of its YAML parameters (each field's description is
  the one-line help shown by ``vnfchain functions TYPE``);
- ``maps(params)``: the BPF maps its template declares, each with its kind, size
  (from config) and its key and value layouts (``vnfchain/layout.py``): the one
  declaration both the C structs and the Python codecs come from;
- ``labels(params)``: the branch labels its body can return;
- ``template_vars(params, ctx)``: constants for its template (code and sizes:
  what a user changes live belongs in a map, so that the change compiles nothing);
- ``populate(tables, params, ctx)``: how config becomes map contents, written
  through ``tables.open(name)`` (the pinned map) with the layouts' codecs;
- ``reasons``: its drop reasons (counted per function);
- ``read_counters(maps, params)``: its own counters for ``vnfchain stats``;
- optional hooks with defaults here: ``warnings``, ``preflight``, ``state_rows``,
  ``decode_event``, ``structs``.

The template renders a C body ``static __always_inline int {{p}}_body(struct
xdp_md *ctx, struct vc_meta *meta)`` returning a verdict (VC_CONTINUE, VC_DROP,
VC_PASS, VC_TX, VC_REDIRECT via ``vc_redirect``) or ``VC_LABEL(id)``; every
top-level name it declares starts with ``{{p}}_`` so that several instances fit
in one fused program. ``{{ structs }}`` renders the C definitions of its
layouts (struct ``flow`` of the maps is ``struct {{p}}_flow``). Maps are
declared with ``VC_MAP(type, key, value, name, size)``, which pins them under
the chain's directory; a unit test holds them to ``maps()``.

This module knows nothing of how types are found (``vnfchain/functions``
discovers them), so the types and their helpers import it freely.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from .layout import Layout, c_structs


class Params(BaseModel):
    """Base of every function type's parameters: strict keys, frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class MapSpec:
    """A map a function template declares, as seen from Python."""

    name: str            # short name; the C name and pin are ``<function>_<name>``
    kind: str            # BPF map type as BCC spells it: "hash", "array", "percpu_array", "lpm_trie", "ringbuf"
    max_entries: int     # a ring buffer's size in bytes
    key: Layout | None   # None for a ring buffer, which has no key or value
    value: Layout | None
    help: str = ""


@dataclass
class RenderContext:
    """What a function type may know about the chain while rendering/populating."""

    chain: str
    function: str
    prefix: str                       # C identifier prefix of this instance
    label_ids: dict[str, int] = field(default_factory=dict)
    netns: str | None = None          # netns of the chain's first attach point
    resolve_ifindex: Any = None       # callable(ifname) -> int, available at deploy time
    resolve_ipv4: Any = None          # callable(ifname) -> [addresses], available at deploy time
    # on a live change, how the running chain defines this function (the
    # record's spec_to_dict form; same name and type), else None
    running: dict | None = None


class FunctionType:
    name: ClassVar[str]
    summary: ClassVar[str]
    Params: ClassVar[type[Params]] = Params
    reasons: ClassVar[tuple[str, ...]] = ()
    counters: ClassVar[tuple[str, ...]] = ()
    @property
    def template(self) -> str:
        return f"{self.name}.bpf.c.j2"

    def maps(self, params) -> list[MapSpec]:
        return []

    def structs(self, params) -> list[Layout]:
        """The layouts whose structs the template needs: its maps' keys and
        values, and (override) a ring buffer's record."""
        return [layout for m in self.maps(params) for layout in (m.key, m.value) if layout is not None]

    def c_structs(self, params, prefix: str) -> str:
        """``{{ structs }}`` of the template: every struct of ``structs()``."""
        return c_structs(self.structs(params), prefix)

    def labels(self, params) -> set[str]:
        return set()

    def template_vars(self, params, ctx: RenderContext) -> dict:
        return {}

    def warnings(self, params) -> list[tuple[tuple, str, tuple | None]]:
        """Legal but suspicious config: (key path in the function, text, related
        key path or None); the chain adds file:line."""
        return []

    def preflight(self, params, ctx: RenderContext) -> None:
        """Raise DeployError for what populate would fail on (a missing interface),
        before a live change touches anything."""

    def populate(self, tables, params, ctx: RenderContext) -> None:
        """Make the maps hold what the config says, through ``tables.open(name)``
        (the pinned map, a bpfsys.PinnedMap) and the maps' codecs. Runs at
        deploy and again on every live change, without compiling, on maps that
        may already hold an older config (see ``replace_contents``)."""

    def state_rows(self, maps, params) -> tuple[list[str], list[list[str]]] | None:
        """Live state worth listing in ``vnfchain status`` (columns, rows), e.g.
        NAT translations; None when the type keeps none."""
        return None

    def read_counters(self, maps, params) -> dict[str, int]:
        """Own counters for ``stats``; ``maps.open(name)`` is the pinned map."""
        return {}

    def decode_event(self, raw: bytes) -> dict | None:
        """One record of the ring buffer its template declares as
        ``VC_RINGBUF({{p}}_events, size)``, as ``vnfchain events`` shows it;
        None for a type that sends none."""
        return None


def max_unconfirmed_field(what: str):
    """The ``max_unconfirmed`` parameter of a type with a table of unconfirmed
    flows beside ``max_flows`` (see ``unconfirmed_room``)."""
    return Field(None, ge=16, le=1_048_576,
                 description=f"{what}; the oldest is evicted for a new one (default: max_flows / 4, at least 16)")


def unconfirmed_room(params) -> int:
    """How many unconfirmed flows the table holds: ``max_unconfirmed``, or a
    quarter of ``max_flows``."""
    return params.max_unconfirmed or max(16, params.max_flows // 4)


def headroom(entries: int, floor: int = 64) -> int:
    """A map size with room to grow: small config edits then stay map updates
    instead of a new map (the size is part of a map's definition)."""
    size = floor
    while size < 2 * entries:
        size *= 2
    return size


def replace_contents(table, wanted: list[tuple[bytes, bytes]]) -> None:
    """Make a pinned hash map hold exactly the (key, value) pairs ``wanted``:
    write the new entries first, then delete the stale ones, so a lookup never
    misses a key both configs have."""
    for key, value in wanted:
        table[key] = value
    wanted_keys = {k for k, _ in wanted}
    for key in list(table.keys()):
        if key not in wanted_keys:
            del table[key]


def write_array(table, start: int, values: list[bytes]) -> None:
    """Write consecutive entries of a pinned array map from ``start``, in one
    batch syscall; each value is the entry's bytes (a per-CPU map's value
    holds one slot per possible CPU: ``layout.pack_percpu``)."""
    from . import bpfsys
    if values:
        keys = b"".join((start + i).to_bytes(4, "little") for i in range(len(values)))
        bpfsys.update_batch(table.map_fd, keys, b"".join(values), len(values))
