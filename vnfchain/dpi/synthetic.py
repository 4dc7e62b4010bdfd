"""A large, reproducible signature set for tests and benchmarks: ``count``
single-content signatures over text-like bytes (letters, digits, URL
punctuation), 4 to 10 bytes long, a third of them ``nocase`` — the shape of
a web rule set's contents, not of any real one."""
from __future__ import annotations

import random

ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/._-=?&%"


def signatures(count: int, seed: int = 7, action: str = "drop") -> list[dict]:
    rng = random.Random(seed)
    out, seen = [], set()
    while len(out) < count:
        text = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(4, 10)))
        if text in seen:
            continue
        seen.add(text)
        sig = {"id": len(out) + 1, "content": text, "action": action}
        if rng.random() < 1 / 3:
            sig["nocase"] = True
        out.append(sig)
    return out


def chain_yaml(name: str, sigs: list[dict], max_scan: int, mode: str = "tailcall") -> str:
    """A one-function chain (dpi, then tx) holding sigs, as YAML text."""
    import json
    lines = [f"      - {json.dumps(s)}" for s in sigs]
    return (f"name: {name}\nmode: {mode}\nfunctions:\n  dpi:\n    type: dpi\n    max_scan: {max_scan}\n"
            "    signatures:\n" + "\n".join(lines) + "\n    next: out\n  out: {type: counter, verdict: tx}\n")
