"""Verdicts, counters and drop reasons: defined once here, generated into C.

A function body returns one of the verdicts below (or a branch label, encoded as
``VC_LABEL_BASE + label id``); the chain wrapper turns it into the next hop or an
XDP action and counts it. Every function has one row of per-CPU counters in the
chain's ``stats`` map, laid out as ``COUNTERS`` followed by one counter per drop
reason; the entry program has the last row.
"""
from __future__ import annotations

from dataclasses import dataclass

# What a function body can return (C constant VC_<NAME>).
VERDICTS: tuple[str, ...] = ("continue", "drop", "pass", "tx", "redirect")
LABEL_BASE = 16  # a returned value >= LABEL_BASE is a branch label

# Per-function counters, in row order (C constant VC_CTR_<NAME>).
COUNTERS: tuple[str, ...] = (
    "rx_packets", "rx_bytes",
    "continue", "branch", "drop", "pass", "tx", "redirect",
    "tail_call_miss",
)

# Drop reasons every function may use; function types add their own.
COMMON_REASONS: tuple[str, ...] = ("policy", "malformed", "redirect_failed")


@dataclass(frozen=True)
class CounterLayout:
    """Where each named counter lives in a stats row, for one chain."""

    reasons: tuple[str, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return COUNTERS + tuple(f"drop_{r}" for r in self.reasons)

    @property
    def width(self) -> int:
        return len(self.names)

    @property
    def slots(self) -> int:
        """Counters per row in the kernel: a power of two, so that an index can be
        masked into range (the verifier accepts a mask where a compare gets lost)."""
        n = 1
        while n < self.width:
            n *= 2
        return n

    def c_defines(self) -> list[tuple[str, int]]:
        defs = [(f"VC_{v.upper()}", i) for i, v in enumerate(VERDICTS)]
        defs.append(("VC_LABEL_BASE", LABEL_BASE))
        defs += [(f"VC_CTR_{c.upper()}", i) for i, c in enumerate(COUNTERS)]
        defs.append(("VC_CTR_REASON_BASE", len(COUNTERS)))
        defs += [(f"VC_REASON_{r.upper()}", i) for i, r in enumerate(self.reasons)]
        defs.append(("VC_NREASONS", len(self.reasons)))
        defs.append(("VC_NCOUNTERS", self.width))
        defs.append(("VC_ROW_SLOTS", self.slots))
        return defs


def all_reasons(type_reasons) -> tuple[str, ...]:
    """Common reasons first, then each type's own, without repeats."""
    out = list(COMMON_REASONS)
    for reasons in type_reasons:
        out += [r for r in reasons if r not in out]
    return tuple(out)
