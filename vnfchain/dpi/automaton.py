"""Multi-pattern matching: contents compiled into one Aho–Corasick DFA.

The DFA is what the data path will walk one byte at a time: ``delta[state][byte]``
is the next state, and ``output[state]`` the set of patterns that end at that
byte. ``Automaton.scan`` walks it in Python; ``naive_matches`` is the plain
definition (every occurrence of every pattern) the tests hold it to.

Contents use Snort/Suricata notation: text with ``|..|`` hex blocks, e.g.
``"GET |2f|index"`` or ``"|de ad be ef|"``.
"""
from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass

MAX_STATES = 1 << 20


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


@dataclass(frozen=True)
class Automaton:
    patterns: tuple[bytes, ...]
    delta: tuple[tuple[int, ...], ...]      # state -> 256 next states
    output: tuple[frozenset[int], ...]      # state -> patterns ending here

    @property
    def states(self) -> int:
        return len(self.delta)

    def scan(self, data: bytes) -> list[tuple[int, int]]:
        """(pattern, end offset) for every occurrence, in the order the DFA sees them."""
        state, found = 0, []
        for end, byte in enumerate(data):
            state = self.delta[state][byte]
            found += [(p, end) for p in sorted(self.output[state])]
        return found


def build(patterns: list[bytes], max_states: int = MAX_STATES) -> Automaton:
    """The trie of all patterns, failure links by BFS, then the full DFA."""
    goto: list[dict[int, int]] = [{}]
    output: list[set[int]] = [set()]
    for index, pattern in enumerate(patterns):
        state = 0
        for byte in pattern:
            nxt = goto[state].get(byte)
            if nxt is None:
                if len(goto) >= max_states:
                    raise ValueError(f"{len(patterns)} patterns need more than {max_states} automaton "
                                     f"states; use fewer or shorter contents")
                goto.append({})
                output.append(set())
                nxt = goto[state][byte] = len(goto) - 1
            state = nxt
        output[state].add(index)
    fail = [0] * len(goto)
    delta = [[0] * 256 for _ in goto]
    for byte in range(256):
        delta[0][byte] = goto[0].get(byte, 0)
    queue = deque(goto[0].values())
    while queue:
        state = queue.popleft()
        output[state] |= output[fail[state]]
        for byte in range(256):
            child = goto[state].get(byte)
            if child is None:
                delta[state][byte] = delta[fail[state]][byte]
            else:
                fail[child] = delta[fail[state]][byte]
                delta[state][byte] = child
                queue.append(child)
    return Automaton(tuple(patterns), tuple(tuple(row) for row in delta),
                     tuple(frozenset(o) for o in output))


def naive_matches(patterns: list[bytes], data: bytes) -> list[tuple[int, int]]:
    """Every (pattern, end offset) by plain search: the definition."""
    found = []
    for end in range(len(data)):
        for index, pattern in enumerate(patterns):
            start = end - len(pattern) + 1
            if start >= 0 and data[start:end + 1] == pattern:
                found.append((index, end))
    return found
