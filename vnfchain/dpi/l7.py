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

from pydantic import Field, model_validator

from ..contract import Params

NAME_MAX = 64          # name bytes the kernel compares (the *last* 64 of longer names)
HTTP_LEADING = 1024    # CR and LF bytes skipped before a request line (RFC 9112 2.2)
HTTP_GAP = 16          # separators skipped between method and target; blanks before the Host value
SCHEME_MAX = 16        # bytes of an absolute-form target's scheme ("http", "https", ...)
HOST_MAX = 256         # bytes searched for the end of an authority or a Host value
HTTP_SCAN = 1024       # bytes from the request target on in which header lines are read
SNI_NAMES = 16         # server_name entries read to find the host_name
DNS_MAX_LABELS = 128   # labels read of a query name: a 255-byte name and its terminator
SEPARATORS = b" \t\x0b\x0c\r"        # RFC 9112 3: what a recipient may split a request line on
AUTHORITY_END = SEPARATORS + b"\n/?#"   # what ends an authority or a Host value
# byte classes of the kernel's parsers: one table (vc_l7_classes, byte_classes()) read
# instead of a chain of comparisons. C: VC_L7_C_<NAME> = the bit.
_LETTERS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
BYTE_CLASSES = {
    "separator": SEPARATORS, "authority_end": AUTHORITY_END, "path_end": SEPARATORS + b"\n",
    "letter": _LETTERS, "scheme": _LETTERS + b"0123456789+-.", "upper": _LETTERS[:26], "crlf": b"\r\n",
    "blank": b" \t", "at": b"@", "colon": b":", "rbracket": b"]",
}
# Why a request's name (path, method) is not known for sure; the counters
# unreadable_<cause> and the `unreadable` policy. C: VC_L7_<CAUSE> = index + 1.
UNREADABLE = ("http_blank_lines", "http_request_line", "http_host_unseen", "http_host_ambiguous",
              "tls_sni_unreached", "dns_name_unread", "dns_questions")
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
    if not _NAME.fullmatch(p):
        raise ValueError(f"'{pattern}' is not a host name or '*.domain' wildcard")
    limit = NAME_MAX + 1 if p.startswith("*.") else NAME_MAX
    if len(p) > limit:
        raise ValueError(f"'{pattern}' is longer than the {NAME_MAX} bytes the kernel compares")
    return p


class AppRule(Params):
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


def byte_classes() -> dict:
    """The kernel's struct vc_l7_classes: each byte's class bits (``of``), and
    each byte lowercased (``lower``, ASCII letters only)."""
    bits = [0] * 256
    for i, members in enumerate(BYTE_CLASSES.values()):
        for c in members:
            bits[c] |= 1 << i
    return {"of": bits, "lower": bytes(c | 0x20 if 0x41 <= c <= 0x5A else c for c in range(256))}


def method_masks(rules: list[AppRule]) -> dict[bytes, int]:
    """Method token (vc_l7_http_method's word) -> the http rules that accept
    it: each method and its space; each start of a method without the space (a
    packet that ends inside it) and the empty token (no method read) give the
    rules that ask for no method."""
    unknown = sum(1 << bit for bit, r in enumerate(rules) if r.app == "http" and r.method is None)
    out = {(m + " ").encode(): sum(1 << bit for bit, r in enumerate(rules)
                                   if r.app == "http" and (r.method is None or m in r.method)) for m in METHODS}
    out[b""] = unknown
    out.update({m[:n].encode(): unknown for m in METHODS for n in range(1, len(m) + 1)})
    return out


def method_token(token: bytes) -> int:
    """A method token as the kernel reads it: a little-endian u64."""
    return int.from_bytes(token, "little")


# -- the definition the kernel is held to ----------------------------------------------

@dataclass(frozen=True)
class Request:
    """What a packet is, as far as the app rules care."""

    app: str                     # http | tls | dns
    name: str | None = None      # host / sni / qname as sent (any case)
    method: str | None = None
    path: str | None = None
    unreadable: str | None = None    # one of UNREADABLE: why the name (path, method) is not known for sure
    host_header: str | None = None   # http with a host in its target: the Host header's, if it has one


def _kernel_name(name: str) -> str:
    """The name as the kernel compares it: lowercase, without one trailing dot,
    and (its key ends at a zero byte) only what follows the last NUL."""
    return normalize(name).rsplit("\0", 1)[-1]


def _name_matches(pattern: str | None, name: str | None) -> bool:
    if pattern is None:
        return True
    if name is None:
        return False
    name = _kernel_name(name)
    if len(name) > NAME_MAX:     # the kernel sees the last NAME_MAX bytes, and no exact match
        return pattern.startswith("*.") and name.endswith(pattern[1:])
    if pattern.startswith("*."):
        return name.endswith(pattern[1:])
    return name == pattern


def first_app_rule(rules: list[AppRule], request: Request) -> int | None:
    """Position of the deciding rule, or None (whatever could not be read)."""
    for i, rule in enumerate(rules):
        if rule.app != request.app or not _name_matches(rule.name, request.name):
            continue
        if rule.method and request.method not in rule.method:
            continue
        if rule.path and not (request.path or "")[:NAME_MAX].startswith(rule.path):
            continue
        return i
    return None


def name_rules(rules: list[AppRule], app: str, name: str | None) -> frozenset[int]:
    """The rules of app whose name pattern (or lack of one) matches name: what
    one trie lookup tells the kernel."""
    return frozenset(i for i, r in enumerate(rules) if r.app == app and _name_matches(r.name, name))


def unreadable_cause(rules: list[AppRule], request: Request) -> str | None:
    """Why the request's name is not known for sure: what its parser said, or
    (an HTTP target naming a host) a Host header that other rules match."""
    if request.unreadable:
        return request.unreadable
    if request.host_header is not None and \
            name_rules(rules, "http", request.host_header) != name_rules(rules, "http", request.name):
        return "http_host_ambiguous"
    return None


def fails_closed(rules: list[AppRule], app: str, policy: dict[str, str]) -> bool:
    """Whether an unreadable request of app is dropped: the policy says drop and
    a drop rule of that app asks for something beyond the app (a name, path or
    method) that could have been hidden."""
    return policy.get(app) == "drop" and any(
        r.app == app and r.action == "drop" and (r.name or r.path or r.method) for r in rules)


DROPPED_UNREADABLE = -1


def decide(rules: list[AppRule], request: Request, policy: dict[str, str]) -> int | None:
    """The deciding rule's position, None, or DROPPED_UNREADABLE."""
    if unreadable_cause(rules, request) and fails_closed(rules, request.app, policy):
        return DROPPED_UNREADABLE
    return first_app_rule(rules, request)


def identify(payload: bytes, proto: str, dport: int) -> Request | None:
    """What the kernel makes of a TCP or UDP payload, trying the parsers in its
    order: HTTP, then TLS, then (TCP/53) DNS; DNS alone on UDP/53."""
    if proto == "tcp":
        found = http_request(payload) or tls_hello(payload)
        return found or (dns_query(payload, tcp=True) if dport == 53 else None)
    return dns_query(payload) if proto == "udp" and dport == 53 else None


_SEPARATORS = frozenset(SEPARATORS)
_AUTHORITY_END = frozenset(AUTHORITY_END)
_SCHEME = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+-.")


def http_request(payload: bytes) -> Request | None:
    """What the kernel reads of an HTTP request starting a TCP payload
    (vc_l7_http_*): None if it is not one."""
    at = 0
    while at < HTTP_LEADING and payload[at:at + 1] in (b"\r", b"\n"):
        at += 1
    if at == HTTP_LEADING and payload[at:at + 1] in (b"\r", b"\n"):
        return Request("http", unreadable="http_blank_lines")
    token = b""
    for k in range(8):
        c = payload[at + k:at + k + 1]
        if not c:       # the packet ends in the method: a prefix of one is a request cut short
            cut = token and any(m.encode().startswith(token) for m in METHODS)
            return Request("http", unreadable="http_request_line") if cut else None
        if c[0] in _SEPARATORS:
            break
        if not b"A" <= c <= b"Z":
            return None
        token += c
    else:
        return None
    method = token.decode()
    if method not in METHODS:
        return None
    t = at + len(token) + 1
    for _ in range(HTTP_GAP):
        if payload[t:t + 1] == b"" or payload[t] not in _SEPARATORS:
            break
        t += 1
    cut = Request("http", method=method, unreadable="http_request_line")
    if payload[t:t + 1] == b"" or payload[t] in _SEPARATORS:
        return cut
    authority = t if method == "CONNECT" else _absolute_form(payload, t)
    if authority is False:
        return cut
    name = path = None
    if authority is None:
        path = _path(payload, t) or None
    else:
        host, end = _authority(payload, authority)
        if not host:                            # cut short, too long, two "@" or empty
            return cut
        name = host.decode("latin-1")
        if method != "CONNECT":                 # an empty path is "/"
            rest = _path(payload, end)
            path = rest if payload[end:end + 1] == b"/" else ("/" + rest)[:NAME_MAX]
    host_at, hosts, ended, cause = _headers(payload, t)
    header = None
    if host_at is not None:
        value, problem = _host_value(payload, host_at)
        cause = cause or problem
        header = None if value is None else value.decode("latin-1")
    elif not ended and name is None:
        cause = cause or "http_host_unseen"
    if name is not None:
        return Request("http", name, method, path, cause, host_header=header if hosts else None)
    return Request("http", header or None, method, path, cause)


def _absolute_form(payload: bytes, t: int) -> int | None | bool:
    """Where the authority of an absolute-form target starting at t begins
    (scheme "://"); None if the target has none; False if it is cut short or
    its scheme longer than SCHEME_MAX."""
    if not 0x61 <= payload[t] | 0x20 <= 0x7A:     # a letter
        return None
    for i in range(1, SCHEME_MAX + 1):
        c = payload[t + i:t + i + 1]
        if not c:
            return False
        if c == b":":
            slashes = payload[t + i + 1:t + i + 3]
            if len(slashes) < 2:
                return False
            return t + i + 3 if slashes == b"//" else None
        if c[0] not in _SCHEME:
            return None
    return False


def _find(payload: bytes, start: int, stop: int, chars: bytes) -> tuple[int, bool]:
    """The first position in [start, stop) holding one of chars, or stop; and
    whether the packet ended first (the position is then its end)."""
    for pos in range(start, stop):
        if pos >= len(payload):
            return pos, True
        if payload[pos] in chars:
            return pos, False
    return stop, False


def _authority(payload: bytes, start: int) -> tuple[bytes | None, int | str]:
    """The host of an authority (or Host value) at start — after a userinfo
    "@", before a ":port" outside "[...]" — and where it ends; or None and
    why not: "cut" (the packet ends first), "long" (no end within HOST_MAX
    bytes), "userinfo" (two "@")."""
    stop = start + HOST_MAX
    end, cut = _find(payload, start, stop, AUTHORITY_END + b"@")
    host_start = start
    if not cut and end < stop and payload[end] == 0x40:
        host_start = end + 1
        end, cut = _find(payload, host_start, stop, AUTHORITY_END + b"@")
        if not cut and end < stop and payload[end] == 0x40:
            return None, "userinfo"
    if cut or end == stop:
        return None, "cut" if cut else "long"
    after = host_start
    if payload[host_start] == 0x5B:             # "[": an IPv6 literal's colons end at its "]"
        after = _find(payload, host_start, end, b"]")[0]
    return payload[host_start:_find(payload, after, end, b":")[0]], end


def _host_value(payload: bytes, at: int) -> tuple[bytes | None, str | None]:
    """The host of the Host value at at, after up to HTTP_GAP blanks; None and
    why if there are more blanks, the packet ends first, or it is too long or
    holds two "@"."""
    for _ in range(HTTP_GAP):
        if payload[at:at + 1] not in (b" ", b"\t"):
            break
        at += 1
    if payload[at:at + 1] in (b" ", b"\t"):
        return None, "http_host_ambiguous"
    host, end = _authority(payload, at)
    if host is None:
        return None, "http_host_unseen" if end == "cut" else "http_host_ambiguous"
    return host, None


def _path(payload: bytes, start: int) -> str:
    """From start to a separator or line end: at most NAME_MAX bytes."""
    end, _ = _find(payload, start, start + NAME_MAX, SEPARATORS + b"\n")
    return payload[start:end].decode("latin-1")


def _headers(payload: bytes, t: int) -> tuple[int | None, int, bool, str | None]:
    """Over the lines whose newline lies in the HTTP_SCAN bytes from t on, up
    to the empty line that ends the headers: where the first Host value
    starts, how many Host lines there are, whether the headers end, and
    http_host_ambiguous for two Host lines, a folded line (starting with a
    blank: obs-fold) or a Host with blanks before its colon."""
    host_at, hosts, folded = None, 0, False
    for nl in range(t, min(len(payload), t + HTTP_SCAN)):
        if payload[nl] != 0x0A:
            continue
        line = payload[nl + 1:nl + 6]
        if line[:1] == b"\n" or line[:2] == b"\r\n":
            return host_at, hosts, True, "http_host_ambiguous" if folded or hosts > 1 else None
        if line[:1] in (b" ", b"\t"):
            folded = True
        elif len(line) == 5 and bytes(b | 0x20 for b in line[:4]) == b"host":
            if line[4] == 0x3A:
                hosts += 1
                host_at = nl + 6 if host_at is None else host_at
            elif line[4] in (0x20, 0x09):
                folded = True
    return host_at, hosts, False, "http_host_ambiguous" if folded or hosts > 1 else None


def tls_hello(payload: bytes) -> Request | None:
    """What the kernel reads of a TLS ClientHello starting a TCP payload
    (vc_l7_tls_sni): None if it is not one. Only the first TLS record, as far
    as this packet holds it, is read: a ClientHello cut short there, in a
    record too short for its header, or with more than SNI_NAMES names before
    its host_name, has its SNI unreached."""
    if not payload or payload[0] != 0x16 or payload[1:2] not in (b"", b"\x03"):
        return None
    unreached = Request("tls", unreadable="tls_sni_unreached")
    if len(payload) < 6:
        return unreached
    size = int.from_bytes(payload[3:5], "big")
    if size >= 4 and payload[5] != 1:
        return None                 # a handshake message other than a ClientHello
    if size < 4:
        return unreached
    limit = min(len(payload), 5 + size)

    def number(at: int, width: int) -> int | None:
        return int.from_bytes(payload[at:at + width], "big") if at + width <= limit else None
    p = 43                          # record and handshake headers, version, random
    for width in (1, 2, 1):         # session id, cipher suites, compression methods
        n = number(p, width)
        if n is None:
            return unreached
        p += width + n
    if p >= 9 + int.from_bytes(payload[6:9], "big"):
        return Request("tls")       # no extensions
    end = number(p, 2)
    if end is None:
        return unreached
    end += p + 2
    p += 2
    while p < end:
        if p + 4 > limit:
            return unreached
        if number(p, 2) == 0:
            return _server_name(payload, p + 4, limit)
        p += 4 + number(p + 2, 2)
    return Request("tls")


def _server_name(payload: bytes, at: int, limit: int) -> Request:
    """The host_name of the server_name extension whose data starts at at."""
    unreached = Request("tls", unreadable="tls_sni_unreached")
    if at + 2 > limit:
        return unreached
    end = at + 2 + int.from_bytes(payload[at:at + 2], "big")
    e = at + 2
    for _ in range(SNI_NAMES):
        if e >= end:
            return Request("tls")   # no host_name in the list
        if e + 3 > limit:
            return unreached
        n = int.from_bytes(payload[e + 1:e + 3], "big")
        if payload[e] == 0:
            if e + 3 + n > limit:
                return unreached
            return Request("tls", payload[e + 3:e + 3 + n].decode("latin-1") or None)
        e += 3 + n
    return Request("tls") if e >= end else unreached


def dns_query(payload: bytes, tcp: bool = False) -> Request | None:
    """What the kernel reads of a DNS query (a UDP/53 payload, or a TCP/53 one
    behind its two-byte length; vc_l7_dns_qname): None if it is not one. The
    name of the first question; dns_name_unread if it is compressed, cut short
    or over DNS_MAX_LABELS labels, dns_questions if more questions follow."""
    if tcp:
        if not payload:
            return None
        if len(payload) < 14:
            return Request("dns", unreadable="dns_name_unread")
        payload = payload[2:]
    if len(payload) < 12 or payload[2] & 0x80 or payload[4:6] == b"\0\0":
        return None
    labels, at = [], 12
    for _ in range(DNS_MAX_LABELS):
        if at >= len(payload) or payload[at] & 0xC0:
            return Request("dns", unreadable="dns_name_unread")
        n = payload[at]
        if n == 0:
            break
        labels.append(payload[at + 1:at + 1 + n])
        at += 1 + n
    else:
        return Request("dns", unreadable="dns_name_unread")
    name = b".".join(labels).decode("latin-1") or None
    return Request("dns", name, unreadable="dns_questions" if payload[4:6] != b"\0\1" else None)
