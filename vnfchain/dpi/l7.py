"""Application rules of the dpi function: HTTP method, path and Host, TLS SNI,
DNS query name — identified in the kernel, configured from here.

The data path extracts one name per packet into a fixed buffer, lowercased and
*reversed* ("www.bad.example" -> "elpmaxe.dab.www"), behind a kind byte, and
looks it up in one LPM trie. Reversed, every pattern that can match a name is
a prefix of it: ``*.bad.example`` is the prefix "elpmaxe.dab.", and the exact
``bad.example`` is "elpmaxe.dab" plus a terminating zero byte. Patterns that
match a name are thus nested, and the longest one found tells them all: each
trie entry holds the rules of its own pattern *and* of every shorter pattern
that is a prefix of it (``trie_entries``). HTTP paths use the same trie,
unreversed, as plain prefixes. A packet's candidate rules are the AND of the
masks (name, path, method); the first rule in the list among them decides.

Rule bits are positions in the ``apps`` list (at most 64 rules). Everything
here is pure (no BPF), so the tests hold the kernel to ``first_app_rule``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

NAME_MAX = 64          # name bytes the kernel compares (the *last* 64 of longer names)
HTTP_SCAN = 512        # request bytes searched for the Host header
HTTP_BLANKS = 16       # blanks skipped before the Host value (more: no Host seen)
HOST_MAX = 256         # bytes searched for the end of the Host value
DNS_MAX_LABELS = 128   # labels read of a query name: a 255-byte name and its terminator
MAX_RULES = 64
ID_BASE = 1000         # an app rule without id gets ID_BASE + its position
KINDS = {"http": 1, "tls": 2, "dns": 3}
PATH_KIND = 4          # HTTP request paths share the trie under their own kind byte
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "CONNECT", "TRACE")
NAME_FIELD = {"http": "host", "tls": "sni", "dns": "qname"}
TRUNCATED = 0xFF       # terminator byte of a name longer than NAME_MAX: no exact match

_NAME = re.compile(r"^(\*\.)?([a-z0-9_-]+\.)*[a-z0-9_-]+$")


def normalize(name: str) -> str:
    """How the data path sees a host name: lowercase, without one trailing dot."""
    name = name.lower()
    return name.removesuffix(".")


def check_pattern(pattern: str) -> str:
    """A host name, or ``*.`` and a parent domain (any name below it)."""
    p = normalize(pattern)
    if not _NAME.match(p):
        raise ValueError(f"'{pattern}' is not a host name or '*.domain' wildcard")
    limit = NAME_MAX + 1 if p.startswith("*.") else NAME_MAX
    if len(p) > limit:
        raise ValueError(f"'{pattern}' is longer than the {NAME_MAX} bytes the kernel compares")
    return p


class AppRule(BaseModel):
    # as functions.base.Params, which this module cannot import: the function
    # types import it while the registry is being built
    model_config = ConfigDict(extra="forbid", frozen=True)

    app: Literal["http", "tls", "dns"] = Field(description="http (request line, Host), tls (ClientHello SNI), dns (UDP/53 query)")
    host: str | None = Field(None, description="http: Host header, a name or *.domain (case-insensitive)")
    sni: str | None = Field(None, description="tls: server name indication, a name or *.domain")
    qname: str | None = Field(None, description="dns: query name, a name or *.domain")
    method: list[Literal[METHODS]] | None = Field(None, description="http: only these request methods")   # type: ignore[valid-type]
    path: str | None = Field(None, min_length=1, max_length=NAME_MAX, description="http: request path starts with this (case-sensitive)")
    action: Literal["drop", "pass", "label", "alert"] = Field(description="what a match does (alert: an event for `vnfchain events`)")
    label: str | None = Field(None, pattern=r"^[a-z][a-z0-9_]{0,23}$", description="branch label for action: label")
    id: int | None = Field(None, ge=1, description=f"rule id in stats and events; default {ID_BASE} + position")

    @model_validator(mode="after")
    def _shape(self):
        if (self.action == "label") != (self.label is not None):
            raise ValueError("action: label needs label: NAME, and only label takes one")
        for app, key in NAME_FIELD.items():
            value = getattr(self, key)
            if value is not None:
                if app != self.app:
                    raise ValueError(f"'{key}' is for app: {app}, not app: {self.app}")
                check_pattern(value)
        if self.app != "http" and (self.method or self.path):
            raise ValueError("method and path are for app: http")
        return self

    @property
    def name(self) -> str | None:
        value = getattr(self, NAME_FIELD[self.app])
        return None if value is None else normalize(value)


def rule_ids(rules: list[AppRule]) -> list[int]:
    return [r.id or ID_BASE + i for i, r in enumerate(rules)]


# -- what the kernel's trie and tables hold ------------------------------------------

def name_key(kind: int, pattern: str | None) -> bytes:
    """Trie key data of a name pattern: kind, reversed name, terminator (exact)."""
    if pattern is None:
        return bytes([kind])
    if pattern.startswith("*."):
        return bytes([kind]) + pattern[1:][::-1].encode()   # "*.bad.example" -> "elpmaxe.dab."
    return bytes([kind]) + pattern[::-1].encode() + b"\0"


def path_key(prefix: str | None) -> bytes:
    return bytes([PATH_KIND]) + (prefix.encode() if prefix else b"")


def rule_keys(rule: AppRule) -> list[bytes]:
    keys = [name_key(KINDS[rule.app], rule.name)]
    if rule.app == "http":
        keys.append(path_key(rule.path))
    return keys


def trie_entries(rules: list[AppRule]) -> dict[bytes, int]:
    """key data -> rule mask: the rules of every pattern that is a prefix of the
    key (the key's own included). Every kind has its catch-all entry, so that
    the path mask of a request holds the rules that ask nothing of the path."""
    own: dict[bytes, int] = {bytes([k]): 0 for k in (*KINDS.values(), PATH_KIND)}
    for bit, rule in enumerate(rules):
        for key in rule_keys(rule):
            own[key] = own.get(key, 0) | 1 << bit
    return {key: sum(mask for other, mask in own.items() if key.startswith(other)) for key in own}


def method_masks(rules: list[AppRule]) -> dict[str, int]:
    """Request method -> the http rules that accept it."""
    return {m: sum(1 << bit for bit, r in enumerate(rules)
                   if r.app == "http" and (r.method is None or m in r.method)) for m in METHODS}


def method_token(method: str) -> int:
    """The method and its space as the kernel reads them: a little-endian u64."""
    return int.from_bytes((method + " ").encode(), "little")


# -- the definition the kernel is held to ----------------------------------------------

@dataclass(frozen=True)
class Request:
    """What a packet is, as far as the app rules care."""

    app: str                     # http | tls | dns
    name: str | None = None      # host / sni / qname as sent (any case)
    method: str | None = None
    path: str | None = None


def _name_matches(pattern: str | None, name: str | None) -> bool:
    if pattern is None:
        return True
    if name is None:
        return False
    name = normalize(name)
    if len(name) > NAME_MAX:     # the kernel sees the last NAME_MAX bytes, and no exact match
        return pattern.startswith("*.") and name.endswith(pattern[1:])
    if pattern.startswith("*."):
        return name.endswith(pattern[1:])
    return name == pattern


def first_app_rule(rules: list[AppRule], request: Request) -> int | None:
    """Position of the deciding rule, or None."""
    for i, rule in enumerate(rules):
        if rule.app != request.app or not _name_matches(rule.name, request.name):
            continue
        if rule.method and request.method not in rule.method:
            continue
        if rule.path and not (request.path or "")[:NAME_MAX].startswith(rule.path):
            continue
        return i
    return None


def http_request(payload: bytes) -> Request | None:
    """What the kernel reads of an HTTP request starting a TCP payload
    (vc_l7_http_token, _path, _host): None if it is not one."""
    space = payload.find(b" ", 0, 8)
    if len(payload) < 8 or space < 1 or not all(0x41 <= c <= 0x5A for c in payload[:space]):
        return None
    method = payload[:space].decode()
    if method not in METHODS:
        return None
    start = space + 1
    end = min(len(payload), start + NAME_MAX)
    stop = payload.find(b" ", start, end)
    path_end = end if stop < 0 else stop
    path = payload[start:path_end].decode("latin-1") or None
    return Request("http", http_host(payload[path_end:]), method, path)


def http_host(head: bytes) -> str | None:
    """The Host value in the request after its path: the first header line
    ``host:`` (any case) within HTTP_SCAN bytes and before an empty line (lines
    ending in \r\n or a bare \n), after up to HTTP_BLANKS blanks, up to an
    optional :port, a blank, \r or \n; None if there is none or it runs past
    the packet."""
    lower = head.lower()
    at = lower.find(b"\nhost:", 0, HTTP_SCAN)
    ends = [e for e in (lower.find(b"\n\n"), lower.find(b"\n\r\n")) if e >= 0]
    if at < 0 or (ends and min(ends) < at):
        return None
    start = at + len(b"\nhost:")
    for _ in range(HTTP_BLANKS):
        if head[start:start + 1] not in (b" ", b"\t"):
            break
        start += 1
    for n, c in enumerate(head[start:start + HOST_MAX]):
        if c in b"\r\n: \t":
            return head[start:start + n].decode("latin-1") or None
    return None


def dns_query(payload: bytes) -> Request | None:
    """What the kernel reads of a DNS query (a UDP/53 payload,
    vc_l7_dns_qname): None if it is not one. A name cut short by the packet or
    compressed is no name (only rules without a name match); one of more than
    DNS_MAX_LABELS labels (not legal) is the labels read, compared on its end."""
    if len(payload) < 12 or payload[2] & 0x80 or payload[4:6] == b"\0\0":
        return None
    labels, at = [], 12
    for _ in range(DNS_MAX_LABELS):
        if at >= len(payload) or payload[at] & 0xC0:
            return Request("dns")
        n = payload[at]
        if n == 0:
            break
        labels.append(payload[at + 1:at + 1 + n])
        at += 1 + n
    if at > len(payload):            # the last of DNS_MAX_LABELS labels runs past the packet
        return Request("dns")
    return Request("dns", b".".join(labels).decode("latin-1") or None)
