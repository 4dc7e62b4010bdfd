"""Suricata/Snort-style rules as dpi signatures (the ``rules_file:`` parameter).

The subset read::

    alert tcp any any -> any 80 (msg:"..."; content:"/etc/passwd"; nocase; offset:0; depth:64; sid:1; rev:2;)

- action: ``alert``, ``drop`` or ``pass``; protocol: ``tcp``, ``udp`` or ``ip``;
  addresses and source port ``any`` (dpi does not match addresses: filter them
  with a firewall function); destination port ``any`` or one number; ``->`` only.
- options: ``content`` (with ``|hex|``; ``\\"``, ``\\;``, ``\\\\`` escapes),
  ``nocase``, ``offset``, ``depth``, ``sid`` (the signature id, required);
  ``msg``, ``rev``, ``classtype``, ``reference``, ``metadata``, ``priority``,
  ``fast_pattern`` and ``rawbytes`` are accepted and have no effect.
- ``nocase``/``offset``/``depth`` apply to the whole signature here, so all
  contents of a rule must carry the same ones.

Anything else (``pcre``, ``flow``, ``distance``, ``http_uri``, negated
contents, ...) is an error naming the rule's line: a rule silently read as
something broader or narrower than written would be worse than none.
Lines starting with ``#`` and blank lines are skipped; a line ending in ``\\``
continues on the next.
"""
from __future__ import annotations

import re

ACTIONS = {"alert": "alert", "drop": "drop", "pass": "pass"}
PROTOS = {"tcp": "tcp", "udp": "udp", "ip": None}
IGNORED = {"msg", "rev", "classtype", "reference", "metadata", "priority", "fast_pattern", "rawbytes"}
HEADER = re.compile(r"^(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s*\((.*)\)\s*$", re.S)


class RuleError(ValueError):
    pass


def _options(text: str) -> list[tuple[str, str | None]]:
    """'content:"a\\;b"; nocase;' -> [("content", '"a;b"'), ("nocase", None)]"""
    out, cur, quoted, i = [], "", False, 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            cur += text[i + 1] if quoted else ch + text[i + 1]
            i += 2
            continue
        if ch == '"':
            quoted = not quoted
            cur += ch
        elif ch == ";" and not quoted:
            out.append(cur)
            cur = ""
        else:
            cur += ch
        i += 1
    if quoted:
        raise RuleError("a quoted option value is not closed")
    if cur.strip():
        out.append(cur)
    pairs = []
    for opt in out:
        key, sep, value = opt.strip().partition(":")
        pairs.append((key.strip(), value.strip() if sep else None))
    return pairs


def _number(key: str, value: str | None) -> int:
    if value is None or not value.isdigit():
        raise RuleError(f"{key} takes a number, e.g. {key}:4")
    return int(value)


def rule_signature(rule: str) -> dict:
    """One rule -> a dpi signature (a dict for dpi's Signature); RuleError says what is unsupported."""
    m = HEADER.match(rule)
    if not m:
        raise RuleError("not a rule: expected 'ACTION PROTO SRC SPORT -> DST DPORT (OPTIONS)'")
    action, proto, src, sport, direction, dst, dport, options = m.groups()
    if action not in ACTIONS:
        raise RuleError(f"action '{action}' is not supported; use alert, drop or pass")
    if proto not in PROTOS:
        raise RuleError(f"protocol '{proto}' is not supported; use tcp, udp or ip")
    if direction != "->":
        raise RuleError(f"direction '{direction}' is not supported; write ->")
    for what, value in (("source address", src), ("source port", sport), ("destination address", dst)):
        if value != "any":
            raise RuleError(f"{what} '{value}': dpi matches any; filter addresses and ports with a "
                            "firewall function before the dpi function")
    sig: dict = {"action": ACTIONS[action]}
    if PROTOS[proto]:
        sig["proto"] = PROTOS[proto]
    if dport != "any":
        if not dport.isdigit() or not 1 <= int(dport) <= 65535:
            raise RuleError(f"destination port '{dport}': write any or one port number")
        sig["dport"] = int(dport)
    contents: list[dict] = []
    for key, value in _options(options):
        if key == "content":
            if not value or not value.startswith('"') or not value.endswith('"') or len(value) < 2:
                raise RuleError('content takes a quoted string, e.g. content:"GET "' if not (value or "").startswith("!")
                                else "negated contents (content:!\"...\") are not supported")
            contents.append({"text": value[1:-1], "nocase": False, "offset": 0, "depth": None})
        elif key in ("nocase", "offset", "depth"):
            if not contents:
                raise RuleError(f"{key} must follow a content")
            contents[-1][key] = True if key == "nocase" else _number(key, value)
        elif key == "sid":
            sig["id"] = _number(key, value)
        elif key not in IGNORED:
            raise RuleError(f"option '{key}' is not supported (supported: content, nocase, offset, depth, sid)")
    if "id" not in sig:
        raise RuleError("the rule has no sid; add e.g. sid:1000001;")
    if not contents:
        raise RuleError("the rule has no content; dpi matches contents only")
    modifiers = {(c["nocase"], c["offset"], c["depth"]) for c in contents}
    if len(modifiers) > 1:
        raise RuleError("its contents carry different nocase/offset/depth; here they apply to the whole "
                        "rule: give all contents the same ones, or split the rule")
    nocase, offset, depth = modifiers.pop()
    sig["content"] = [c["text"] for c in contents] if len(contents) > 1 else contents[0]["text"]
    if nocase:
        sig["nocase"] = True
    if offset:
        sig["offset"] = offset
    if depth is not None:
        sig["depth"] = depth
    return sig


def rules(text: str) -> list[tuple[int, dict]]:
    """(line number, signature) for every rule in a rules file's text."""
    out, pending, first = [], "", 0
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if not pending:
            first = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        rule, pending = pending + stripped, ""
        try:
            out.append((first, rule_signature(rule)))
        except RuleError as exc:
            raise RuleError(f"line {first}: {exc}") from None
    if pending:
        raise RuleError(f"line {first}: the rule continues past the end of the file")
    return out
