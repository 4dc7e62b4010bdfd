"""A running chain's maps, as function types and ``stats`` read them.

``MapReader`` is what a function type's ``populate``, ``read_counters`` and
``state_rows`` get: its own pinned maps by short name, written and read through
the layouts its type declares (vnfchain.layout); nothing needs BCC's types.
``state_rows`` reads the per-CPU counter rows of a generation's ``state`` map,
``chain_counters`` what they and the generations before counted.
"""
from __future__ import annotations

from .. import bpfsys
from .record import Record
from .render import ENTRY


class MapReader:
    """A function's pinned maps, for its read_counters()."""

    def __init__(self, pins: dict[str, str], prefix: str):
        self.pins, self.prefix = pins, prefix

    def open(self, name: str) -> bpfsys.PinnedMap:
        return bpfsys.PinnedMap(self.pins[f"{self.prefix}_{name}"])

    def items_percpu(self, name: str, fields: tuple[str, ...]):
        """(index, {field: sum over CPUs}) for every entry of an array of u64 fields."""
        with self.open(name) as m:
            for index in range(m.max_entries):
                totals = m.sum_u64(index.to_bytes(4, "little"))
                yield index, dict(zip(fields, totals))


STATE_KEY = (0).to_bytes(4, "little")   # the state map's one entry


def state_rows(state: bytes, nrows: int, width: int) -> list[list[int]]:
    """The counter rows of one CPU's struct vc_state (metadata first, rows last;
    each row has ``width`` named counters padded to a power of two)."""
    slots = 1
    while slots < width:
        slots *= 2
    start = len(state) - nrows * slots * 8
    return [[int.from_bytes(state[start + 8 * (r * slots + c):start + 8 * (r * slots + c + 1)], "little")
             for c in range(width)] for r in range(nrows)]


def chain_counters(record: Record) -> dict[str, dict[str, int]]:
    """The chain counters (rx, verdicts, drop reasons) of each function and
    of the entry: its row of the running generation's state map summed over
    CPUs, plus what the generations before it counted (``record.carried``)."""
    names = record.counters
    nrows = len(record.functions) + 1
    totals = [[0] * len(names) for _ in range(nrows)]
    with bpfsys.PinnedMap(str(record.gen_dir / "state")) as state:
        for cpu_state in state.lookup(STATE_KEY) or []:
            for r, row in enumerate(state_rows(cpu_state, nrows, len(names))):
                totals[r] = [a + b for a, b in zip(totals[r], row)]
    out = {ENTRY: dict(zip(names, totals[-1]))}
    for f in record.functions:
        out[f.name] = dict(zip(names, totals[f.slot]))
    for row, counters in record.carried.items():
        for name, n in counters.items():
            if row in out:
                out[row][name] = out[row].get(name, 0) + n
    return out
