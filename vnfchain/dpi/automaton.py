"""Multi-pattern matching: contents compiled into one Aho–Corasick DFA.

The DFA is what the data path walks one byte at a time. Bytes first map to
**byte classes** (``byte_class[byte]``): bytes that no content tells apart
share a class, so a DFA row has one entry per class instead of 256 — the
table shrinks by 256/``classes``. ``table`` holds the rows back to back;
an entry is the next state's row start (times ``unit``) with the ``FOUND``
bit set when patterns end there — so a step is an add and a load, and "did
something end here" one bit test — and ``output[state]`` is the set of those
patterns. States are numbered breadth first, so the shallow states, where
most bytes of ordinary traffic lead, sit together at the table's start.

A **nocase** pattern matches its ASCII letters in either case (Snort's
``nocase``). Patterns are chains of symbols — an exact byte, or a letter in
either case — and the DFA is the subset construction over the trie of those
chains (plus a self-loop at the root), so exact and nocase patterns mix
freely: a state is the set of trie nodes that end the text read so far.

``Automaton.scan`` walks it in Python; ``naive_matches`` is the plain
definition (every occurrence of every pattern) the tests hold it to.

Contents use Snort/Suricata notation: text with ``|..|`` hex blocks, e.g.
``"GET |2f|index"`` or ``"|de ad be ef|"``.
"""
from __future__ import annotations

import re
from array import array
from collections import deque
from dataclasses import dataclass
from functools import lru_cache

MAX_STATES = 1 << 20
_FOLDED = 256   # symbol of a letter in either case: _FOLDED + its lower-case byte


@lru_cache(maxsize=1 << 16)
def parse_content(text: str) -> bytes:
    """'abc|0d 0a|def' -> b'abc\\r\\ndef'; a clear ValueError for bad hex."""
    out = bytearray()
    parts = text.split("|")
    if len(parts) % 2 == 0:
        raise ValueError(f"content '{text}': a |hex| block is not closed; write e.g. \"abc|0d 0a|\"")
    for i, part in enumerate(parts):
        if i % 2 == 0:
            out += part.encode()
            continue
        digits = part.replace(" ", "")
        if len(digits) % 2 or not re.fullmatch(r"[0-9a-fA-F]*", digits):
            raise ValueError(f"content '{text}': '|{part}|' is not hex bytes; write pairs like |0d 0a|")
        out += bytes.fromhex(digits)
    if not out:
        raise ValueError(f"content '{text}' is empty")
    return bytes(out)


def _symbols(pattern: bytes, nocase: bool) -> list[int]:
    if not nocase:
        return list(pattern)
    return [_FOLDED + (b | 0x20) if chr(b).isascii() and chr(b).isalpha() else b for b in pattern]


def _symbol_bytes(symbol: int) -> tuple[int, ...]:
    return (symbol,) if symbol < _FOLDED else (symbol - _FOLDED, symbol - _FOLDED - 0x20)


FOUND = 0x80000000   # flag of a table entry whose state ends some pattern


@dataclass(frozen=True)
class Automaton:
    """``table[(entry & ~FOUND) // unit + byte_class[byte]]`` is the next
    entry: entries are a state's row start (state x classes) times ``unit``
    (the data path takes 4: a byte offset), with ``FOUND`` set when that state
    ends a pattern; root is 0."""

    patterns: tuple[bytes, ...]
    nocase: tuple[bool, ...]
    byte_class: bytes                       # byte -> class
    classes: int
    unit: int
    table: array                            # u32 per (state, class), rows back to back
    output: tuple[frozenset[int], ...]      # state -> patterns ending here

    @property
    def states(self) -> int:
        return len(self.output)

    def scan(self, data: bytes) -> list[tuple[int, int]]:
        """(pattern, end offset) for every occurrence, in the order the DFA sees them."""
        entry, found = 0, []
        for end, byte in enumerate(data):
            entry = self.table[(entry & ~FOUND) // self.unit + self.byte_class[byte]]
            if entry & FOUND:
                found += [(p, end) for p in sorted(self.output[(entry & ~FOUND) // self.unit // self.classes])]
        return found


def _byte_classes(symbols: set[int]) -> bytes:
    """Bytes that every symbol accepts alike share a class; class 0 is the
    first byte's (for text contents: the bytes no content uses)."""
    keys: dict[tuple, int] = {}
    out = bytearray(256)
    for byte in range(256):
        key = tuple(s for s in (byte, _FOLDED + (byte | 0x20)) if s in symbols and byte in _symbol_bytes(s))
        out[byte] = keys.setdefault(key, len(keys))
    return bytes(out)


def build(patterns: list[bytes], nocase: list[bool] | None = None, max_states: int = MAX_STATES,
          unit: int = 1) -> Automaton:
    """The trie of all patterns' symbol chains, then the DFA by subset
    construction over byte classes.

    A state is the set of trie nodes matching a suffix of the text; its
    deepest nodes (depth d) are the "top". Without them it is the state of the
    text's last d-1 bytes, found earlier in breadth-first order — so its row is
    that state's row with only the top nodes' continuations added, as in the
    classic failure-link construction."""
    nocase = list(nocase) if nocase is not None else [False] * len(patterns)
    children: list[dict[int, int]] = [{}]
    ends: list[list[int]] = [[]]
    depth = [0]
    for index, pattern in enumerate(patterns):
        node = 0
        for symbol in _symbols(pattern, nocase[index]):
            nxt = children[node].get(symbol)
            if nxt is None:
                children.append({})
                ends.append([])
                depth.append(depth[node] + 1)
                nxt = children[node][symbol] = len(children) - 1
            node = nxt
        ends[node].append(index)
    byte_class = _byte_classes({s for c in children for s in c})
    classes = max(byte_class) + 1
    # moves[node][class] -> trie children reached on a byte of that class
    moves: list[dict[int, list[int]]] = []
    for node_children in children:
        m: dict[int, list[int]] = {}
        for symbol, child in node_children.items():
            for k in {byte_class[b] for b in _symbol_bytes(symbol)}:
                m.setdefault(k, []).append(child)
        moves.append(m)

    ids: dict[frozenset, int] = {}
    sets: list[frozenset] = []
    outputs: list[frozenset] = []
    queue: deque[int] = deque()

    def entry_of(nodes: frozenset) -> int:
        sid = ids.get(nodes)
        if sid is None:
            if len(sets) >= max_states:
                raise ValueError(f"{len(patterns)} patterns need more than {max_states} automaton "
                                 f"states; use fewer or shorter contents")
            sid = ids[nodes] = len(sets)
            sets.append(nodes)
            outputs.append(frozenset(p for node in nodes for p in ends[node]))
            queue.append(sid)
        return sid * classes * unit | (FOUND if outputs[sid] else 0)

    def set_of(entry: int) -> frozenset:
        return sets[(entry & ~FOUND) // (classes * unit)]

    entry_of(frozenset())
    queue.popleft()
    root = array("I", [0] * classes)
    for k, kids in moves[0].items():
        root[k] = entry_of(frozenset(kids))
    rows = [root]
    while queue:
        sid = queue.popleft()
        nodes = sets[sid]
        top_depth = max(depth[n] for n in nodes)
        top = [n for n in nodes if depth[n] == top_depth]
        shorter = rows[ids[frozenset(n for n in nodes if depth[n] < top_depth)]]
        row = array("I", shorter)
        grown: dict[int, set[int]] = {}
        for node in top:
            for k, kids in moves[node].items():
                if k not in grown:
                    grown[k] = set(set_of(shorter[k]))
                grown[k].update(kids)
        for k, nxt in grown.items():
            row[k] = entry_of(frozenset(nxt))
        rows.append(row)
    table = array("I")
    for row in rows:
        table += row
    return Automaton(tuple(patterns), tuple(nocase), byte_class, classes, unit, table, tuple(outputs))


def naive_matches(patterns: list[bytes], data: bytes, nocase: list[bool] | None = None) -> list[tuple[int, int]]:
    """Every (pattern, end offset) by plain search: the definition."""
    nocase = nocase or [False] * len(patterns)
    found = []
    for end in range(len(data)):
        for index, pattern in enumerate(patterns):
            start = end - len(pattern) + 1
            window = data[start:end + 1]
            if start >= 0 and (window.lower() == pattern.lower() if nocase[index] else window == pattern):
                found.append((index, end))
    return found
