"""The plain definition of the DPI function's verdict, for the tests to hold
the kernel program to: the first signature all of whose contents occur
within their offset/depth window inside the first ``max_scan`` payload bytes
(ASCII letters in either case for a ``nocase`` signature)."""
from __future__ import annotations


def occurs(content: bytes, payload: bytes, offset: int, depth: int | None, max_scan: int,
           nocase: bool = False) -> bool:
    if nocase:
        content, payload = content.lower(), payload.lower()
    limit = min(len(payload), max_scan)
    if depth is not None:
        limit = min(limit, offset + depth)
    start = payload.find(content, offset)
    return start != -1 and start + len(content) <= limit


def first_signature(params, payload: bytes, proto: str, dport: int):
    """The deciding signature, or None."""
    for s in params.all_signatures:
        if s.proto and s.proto != proto:
            continue
        if s.dport and s.dport != dport:
            continue
        if all(occurs(c, payload, s.offset, s.depth, params.max_scan, s.nocase) for c in s.contents()):
            return s
    return None
