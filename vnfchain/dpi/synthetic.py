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


def client_hello(sni: str | None, *, before: int = 0, names: list[tuple[int, bytes]] | None = None,
                 record_split: int | None = None) -> bytes:
    """A TLS 1.3 ClientHello as its TLS record(s), built byte by byte so that
    tests and benchmarks can shape it: ``before`` empty extensions ahead of
    server_name (a client may order and pad its extensions freely);
    ``names``: the server_name list as (name type, name) entries instead of
    one host_name ``sni`` (None: no server_name at all); ``record_split``:
    the handshake message cut into two TLS records after this many bytes."""
    def vec(width: int, data: bytes) -> bytes:
        return len(data).to_bytes(width, "big") + data

    def ext(kind: int, data: bytes) -> bytes:
        return kind.to_bytes(2, "big") + vec(2, data)

    exts = b"".join(ext(0x1a00 + i, b"") for i in range(before))   # unassigned types
    if names is None and sni is not None:
        names = [(0, sni.encode())]
    if names is not None:
        exts += ext(0, vec(2, b"".join(bytes([kind]) + vec(2, name) for kind, name in names)))
    exts += (ext(10, vec(2, bytes.fromhex("001d00170018")))                  # supported_groups
             + ext(13, vec(2, bytes.fromhex("0403080404010503")))            # signature_algorithms
             + ext(43, vec(1, bytes.fromhex("0304")))                        # supported_versions
             + ext(51, vec(2, bytes.fromhex("001d") + vec(2, bytes(range(32))))))  # key_share x25519
    body = (b"\x03\x03" + bytes(range(32)) + vec(1, bytes(range(32)))       # version, random, session id
            + vec(2, bytes.fromhex("130113021303c02bc02fc02cc030")) + vec(1, b"\0") + vec(2, exts))
    message = b"\x01" + vec(3, body)
    cuts = [message] if record_split is None else [message[:record_split], message[record_split:]]
    return b"".join(b"\x16\x03\x01" + vec(2, part) for part in cuts)
