"""Maglev consistent hashing (Eisenbud et al., NSDI 2016), with weights.

Every backend has a permutation of the table's slots that depends only on its
own name; backends take turns claiming their next free preferred slot until the
table is full. Removing one backend therefore moves little more than its own
slots, and every backend ends up with a share of the table proportional to its
weight (a backend claims a slot each time its weight credit reaches the
largest weight, so weight 2 claims twice as often as weight 1).

The table size must be prime (every skip is then coprime with it and each
permutation visits every slot). The data path reads ``table[hash % size]``.
"""
from __future__ import annotations

import functools
import hashlib
from collections import Counter

EMPTY = 0xFFFFFFFF          # a slot no backend holds (no active backend at all)
DEFAULT_SIZE = 65537


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    f = 3
    while f * f <= n:
        if n % f == 0:
            return False
        f += 2
    return True


def _h(name: str, salt: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8, salt=salt).digest(), "little")


def permutation_start(name: str, size: int) -> tuple[int, int]:
    """(offset, skip) of a backend's permutation: slot j is (offset + j*skip) % size."""
    return _h(name, b"maglev-offset") % size, _h(name, b"maglev-skip") % (size - 1) + 1


@functools.lru_cache(maxsize=64)
def build(backends: tuple[tuple[int, str, int], ...], size: int = DEFAULT_SIZE) -> tuple[int, ...]:
    """The lookup table: ``backends`` are (id, name, weight); a slot holds an id.

    Backends of weight 0 get no slots; with none of positive weight every slot
    is EMPTY. Deterministic: the same backends (in any order) give the same table."""
    if not is_prime(size):
        raise ValueError(f"Maglev table size {size} is not prime")
    # turns go in name order, so that listing the backends differently moves nothing
    live = sorted(((bid, name, w) for bid, name, w in backends if w > 0), key=lambda b: b[1])
    table = [EMPTY] * size
    if not live:
        return tuple(table)
    top = max(w for _, _, w in live)
    starts = [permutation_start(name, size) for _, name, _ in live]
    nexts = [0] * len(live)
    credit = [0] * len(live)
    filled = 0
    while True:
        for i, (bid, _, weight) in enumerate(live):
            credit[i] += weight
            if credit[i] < top:
                continue
            credit[i] -= top
            offset, skip = starts[i]
            j = nexts[i]
            slot = (offset + j * skip) % size
            while table[slot] != EMPTY:
                j += 1
                slot = (offset + j * skip) % size
            table[slot] = bid
            nexts[i] = j + 1
            filled += 1
            if filled == size:
                return tuple(table)


def shares(table) -> dict[int, float]:
    """Fraction of the table each backend id holds."""
    counts = Counter(t for t in table if t != EMPTY)
    return {bid: n / len(table) for bid, n in counts.items()}


def disruption(before, after) -> float:
    """Fraction of slots (so of new flows' hashes) that changed backend."""
    return sum(1 for a, b in zip(before, after) if a != b) / len(before)
