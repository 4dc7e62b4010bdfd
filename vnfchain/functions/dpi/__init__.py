"""dpi: payload signatures, matched in the kernel by one Aho–Corasick DFA.

A signature is one or more contents (text with |hex| blocks, e.g. "GET |2f|";
a list of up to 64: all must be present) with, optionally, offset/depth (the
content must lie within payload bytes offset .. offset+depth-1), nocase (ASCII
letters of all its contents match in either case), proto (tcp|udp) and dport;
and an action: drop; pass (to the kernel stack, skipping the rest of the
chain); label (branch to next: {LABEL: function}); alert (counted, the packet
continues). The first signature in the list whose contents were all seen
decides, and is counted in stats as sig<ID>_hits.

rules_file adds Suricata-style rules after the signatures, e.g.
  drop tcp any any -> any 80 (msg:"x"; content:"union"; nocase; depth:64; sid:7;)
Read: alert|drop|pass, tcp|udp|ip, addresses and source port any, one
destination port or any, options content, nocase, offset, depth, sid (msg, rev,
classtype, reference, metadata, priority, fast_pattern, rawbytes are ignored).
Any other option (pcre, flow, distance, http_*, ...) is an error naming the
rule's line; nocase/offset/depth must be alike for all contents of a rule.
Unlike Suricata: the first signature in the list that matches decides
(Suricata orders by action: pass, then drop, then alert, whatever the order in
the file), and one unsupported rule rejects the whole file, so public sets
(ET Open: flow:, $HOME_NET, pcre, ...) do not load as they are: keep the rules
for dpi in a file of their own. The file is read when the chain is (into
rules_text): edit it and deploy again to change the running rules.

max_scan (default 256, at most 1500): payload bytes scanned per packet.

Scale: contents compile to one DFA whose rows have an entry per byte class
(bytes no content tells apart share one), walked 8 payload bytes per bounds
check: about 2.7 ns per scanned byte for tens of signatures; for 10,000 text
signatures (89k states x 71 classes, a 24 MiB table in a 32 MiB map value)
3.0 ns on binary payloads and 8.1 ns on text that walks deep states (cache
misses); see perf/results/dpi-per-byte.md. Over 2^20 states or a 256 MiB
table, the chain is refused with an error saying which.

Config changes are atomic per packet: every config map holds two versions, a
change writes the idle one and flips one word (ConfigWriter), which doubles
the memory (10,000 signatures: two 32 MiB table values, 64 MiB). Counters are
kept by signature / app rule id: a change keeps those of rules it keeps.
max_scan and unparsed change the program (the scan's bounds; a drop path for
unparsed frames in every dpi program would cost its verification 18-63% more
instructions).

App rules (``apps``) name an application and, optionally, what it asks for:
``http`` (``host``, ``method``, ``path`` prefix), ``tls`` (``sni``, from the
ClientHello) or ``dns`` (``qname`` of a query on UDP/53 or TCP/53). Names are
compared case-insensitively, exactly or as ``*.domain`` (any name below
domain, not domain itself); a rule without a name matches the whole
application, e.g. ``{app: http, action: label, label: web}`` sends HTTP one way
and ``{app: tls, action: label, label: tls}`` TLS another. App rules see what
the signatures let continue; the first matching rule decides. ``action:
alert`` (signatures too) also sends an event with the rule id, the 5-tuple and
the name: ``vnfchain events CHAIN`` prints them. App rule ids (``id``, counted
as app<ID>_hits) default to 1000 + the rule's position in ``apps``: inserting a
rule renumbers the counters of those after it, and a signature id (sid) of
1000 or more can clash with a default (an error saying where each comes from)
— give ids to the rules whose counters you follow.

How a request is read: as the servers behind the chain read it, from the
packet that starts it (no reassembly), and only as far as its IP datagram
goes: bytes after it in the frame, which the receiving stack cuts off, are
cut off first (signatures do not see them either).
- HTTP: CR and LF bytes before the request line are skipped, up to 1,024 (RFC
  9112 2.2; nginx skips any number, Apache ten lines). Method and target may be
  apart by up to 17 of SP, HTAB, VT, FF, CR (RFC 9112 3). A target that names a
  host — absolute-form (``GET http://user@Host:port/path``, any scheme in any
  case, an IPv6 literal in [...]) or CONNECT's authority-form — gives the host
  the rules see, and its path the path ("/" if empty): RFC 9112 3.2.2 has a
  server use it and ignore the Host header. Otherwise the host is the first
  Host header's (any case, after up to 16 blanks, without userinfo@ and :port),
  looked for in the 1,024 bytes from the target on, up to the empty line that
  ends the headers (lines may end in CR LF or a bare LF).
- TLS: a payload that starts a TLS handshake record holding a ClientHello;
  every extension of that first record, as far as this packet holds it, is
  walked to server_name, and in it to the first name of type host_name (up to
  16 names read). A ClientHello without server_name (e.g. to an IP address)
  matches rules without sni only.
- DNS: the first question of a query (UDP/53, or TCP/53 behind its length).

Unreadable requests: where the name (path, method) cannot be told for sure,
the request is counted in ``vnfchain stats`` as unreadable_<cause>, and
``unreadable`` (for all apps, or per app: ``unreadable: {tls: match}``) says
what it gets (by default ``drop`` for HTTP and DNS, ``match`` for TLS): ``drop`` drops it (reason app_unreadable) if a
drop rule of its app asks for a name, path or method — what could be hidden —
and otherwise matches it as ``match`` does; ``match`` matches it as far as it
was read (the first Host, the target's host, the first question, or no name).
Causes:
- http_blank_lines: more than 1,024 CR/LF bytes before the request line;
- http_request_line: the packet ends inside the method or target (a request
  split over TCP segments), more separators than are skipped, a scheme over 16
  bytes, an authority over 256 bytes, with two "@" or without a host;
- http_host_unseen: no Host in the bytes read while the headers go on (past
  the packet or the 1,024 bytes), or a Host value cut short by the packet;
- http_host_ambiguous: two Host headers, a folded line (obs-fold: a header
  line starting with a blank), blanks before the Host colon or more than 16
  before its value, a Host value over 256 bytes or with two "@", or a target
  naming a host that other rules match than the Host header's (``match``: the
  target decides);
- tls_sni_unreached: the ClientHello's extensions go on past this packet or
  its first TLS record (a ClientHello split over TCP segments or TLS records),
  a record too short for a handshake header (an empty record first), or more
  than 16 names before the host_name;
- dns_name_unread: the query name is compressed, cut short by the packet or
  longer than 128 labels (255 bytes), or a TCP segment too short for a query;
- dns_questions: more than one question (servers answer the first or refuse).
Why TLS defaults to ``match``: Chrome and Firefox send ClientHellos of about
1.8 KB with post-quantum key shares, and Chrome shuffles its extensions, so a
ClientHello with its SNI in the second TCP segment is common; under ``drop``
every such client would be dropped wherever a tls drop rule has an sni, whatever
site it asked for. Under ``match`` they pass with their SNI unseen, counted as
unreadable_tls_sni_unreached, and a banned site is missed for them: give
``unreadable: drop`` (or ``{tls: drop}``) to fail closed at that price.
Likewise, under ``drop``, a request whose target or headers outgrow a segment before
the Host is dropped where an http drop rule asks for a host, and so is a
segment in the middle of a stream that happens to start like a request
("DELETE " and no Host after it).

Limits of app rules: up to 64; names compared on their last 64 bytes (a
longer name matches wildcards of up to 64 bytes, never an exact name); paths on
their first 64 bytes, raw: no %-decoding and no dot-segment or double-slash
removal (``/%61dmin``, ``/x/../admin``, ``//admin`` do not match ``path:
/admin``); methods in upper case (``get`` is not one), and only GET, HEAD,
POST, PUT, DELETE, OPTIONS, PATCH, CONNECT and TRACE: a request with another
method (WebDAV's PROPFIND, or any token a proxied application takes) is not
HTTP to the rules, though servers pass it to the site its Host names. Not seen: a request that
does not start a TCP segment (pipelined behind another in one segment, or
after a body); a second Host header past the 1,024 bytes read (RFC 9112 3.2:
nginx, Go, HAProxy refuse two, Python and Node use the first, as the dpi
does); TLS records other than handshake before the ClientHello; SSLv2-style
hellos; the name Encrypted Client Hello hides (the rules see its outer, public
name); HTTP/2 with prior knowledge and HTTP/3 (QUIC), DNS on other ports, DNS
over TLS or HTTPS. A name rule stops a name, not a server: a server that
answers other names with the same site (its default virtual host, its IP
address) is reached by those.

Limits — what this does not see:
- one packet at a time: no TCP stream reassembly and no IP defragmentation, so a
  content split across TCP segments (a sender can choose tiny segments), UDP
  datagrams or IP fragments is missed; later IP fragments are not scanned at all;
- only the first max_scan bytes of the TCP/UDP payload: a content further in is
  missed (padding the start evades);
- raw bytes only: no decoding of URL/percent encoding, HTTP chunking or
  compression, TLS, or character encodings; nocase folds ASCII letters only;
- TCP urgent data is read inline: a receiver takes the byte at the urgent
  pointer (MSG_OOB; the pointer may come in an earlier segment) out of the
  stream its application reads, so one byte sent that way inside a content
  or a name ("bad.exXample") hides it from the dpi as a segment split would;
- per packet, at most 512 steps examine where contents ended; a packet with
  more matches (say, a one-byte content repeated) is cut short, counted as
  scans_cut_short, and its later matches are missed — prefer long contents.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
from collections import Counter
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from ... import bpfsys, yamlio
from ...chain.verdicts import LABEL_BASE
from ...contract import FunctionType, MapSpec, Params, headroom, write_array
from ...dpi import l7
from ...dpi.automaton import Automaton, build, parse_content
from ...dpi.rules import RuleError, rules
from ...layout import U32, U64, pack_percpu
from . import l7_maps
from .layouts import CFG, CLASSES, HEAD, MATCH, PROGRESS, SIG, UNUSED, VERDICTS, scratch_layout, table_layout

MAX_SIG_CONTENTS = 64        # contents of one signature: bits of its progress word
MAX_TABLE_BYTES = 256 << 20  # the DFA table: states x byte classes x 4 bytes, one map value
WORK = 512                  # match events + (event, content) pairs examined per packet
PROTOS = {"tcp": 6, "udp": 17}
Unreadable = Literal["drop", "match"]


class Signature(Params):
    id: int = Field(ge=1, description="signature id, shown in stats")
    content: str | list[str] = Field(description="text with |hex| blocks; a list (up to 64): all must be present")
    offset: int = Field(0, ge=0, le=65535, description="contents start at or after this payload byte")
    depth: int | None = Field(None, ge=1, le=65535, description="contents end within offset+depth bytes")
    proto: Literal["tcp", "udp"] | None = Field(None, description="only this protocol")
    dport: int | None = Field(None, ge=1, le=65535, description="only this destination port")
    nocase: bool = Field(False, description="contents match ASCII letters in either case")
    action: Literal["drop", "pass", "label", "alert"] = Field(description="what a match does")
    label: str | None = Field(None, pattern=r"^[a-z][a-z0-9_]{0,23}$", description="branch label for action: label")

    @field_validator("content")
    @classmethod
    def _parse_contents(cls, v):
        texts = v if isinstance(v, list) else [v]
        if len(texts) > MAX_SIG_CONTENTS:
            raise ValueError(f"{len(texts)} contents in one signature; it takes up to {MAX_SIG_CONTENTS}: "
                             "split it into signatures that label and branch to another dpi function")
        for text in texts:
            parse_content(text)
        return v

    @model_validator(mode="after")
    def _label(self):
        if (self.action == "label") != (self.label is not None):
            raise ValueError("action: label needs label: NAME, and only label takes one")
        return self

    @model_validator(mode="after")
    def _window(self):
        longest = max(len(c) for c in self.contents())
        if self.offset + longest - 1 > 65535:
            raise ValueError(f"signature {self.id}: offset {self.offset} + content length {longest} ends past "
                             "payload byte 65535, which no packet has; lower the offset")
        if self.depth is not None and self.depth < longest:
            raise ValueError(f"signature {self.id}: depth {self.depth} is shorter than its {longest}-byte content, "
                             f"so it can never match; make depth at least {longest}")
        return self

    @cached_property
    def _parsed(self) -> tuple[bytes, ...]:
        return tuple(parse_content(t) for t in (self.content if isinstance(self.content, list) else [self.content]))

    def contents(self) -> list[bytes]:
        return list(self._parsed)


class DpiParams(Params):
    signatures: list[Signature] = Field([], description="ordered; the first full match decides")
    apps: list[l7.AppRule] = Field([], max_length=l7.MAX_RULES,
                                   description="ordered app rules (HTTP, TLS SNI, DNS), after the signatures")
    rules_file: str | None = Field(None, description="Suricata-style rules, read after signatures; a "
                                   "relative path is relative to the chain file")
    rules_text: str | None = Field(None, description="the rules file's text: filled in from rules_file when the "
                                   "chain is read (the deployed chain keeps the rules as deployed; edit the file "
                                   "and deploy again to change them); given, the file is not read")
    max_scan: int = Field(256, ge=16, le=1500, description="payload bytes scanned per packet")
    unreadable: Unreadable | dict[Literal["http", "tls", "dns"], Unreadable] = Field(
        {"tls": "match"}, description="a request whose name cannot be read for sure from its packet (see the "
        "limits): drop (if a drop rule of its app asks for a name, path or method) or match (as far as it was "
        "read); one for all apps or per app; the default {tls: match} drops unreadable HTTP and DNS and "
        "matches unreadable TLS (browsers' ClientHellos outgrow a packet); counted as unreadable_<cause>")
    unparsed: Literal["continue", "drop"] = Field(
        "continue", description="what frames the parser cannot classify get (too many VLAN tags or "
                                "IPv6 extension headers, lying lengths, cut headers, fragments other "
                                "than the first): they are never scanned")

    @field_validator("rules_file")
    @classmethod
    def _rules_path(cls, v, info: ValidationInfo):
        return _rules_path(v, info)

    @model_validator(mode="before")
    @classmethod
    def _read_rules_file(cls, data, info: ValidationInfo):
        """The rules file is read once, here: later processes (stats, events,
        a redeploy comparing parameters) see the rules as deployed."""
        if isinstance(data, dict) and isinstance(data.get("rules_file"), str) and data.get("rules_text") is None:
            path = _rules_path(data["rules_file"], info)
            try:
                # O_NONBLOCK: a FIFO nobody writes to would hold validate forever
                with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as f:
                    if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                        raise ValueError(f"rules_file {path} is not a regular file; give the path of a rules file")
                    raw = f.read(yamlio.MAX_BYTES + 1)
            except OSError as exc:
                raise ValueError(f"rules_file {path}: {exc.strerror}; check the path "
                                 "(a relative one is relative to the chain file)") from None
            if len(raw) > yamlio.MAX_BYTES:
                raise ValueError(f"rules_file {path} is larger than {yamlio.MAX_BYTES >> 20} MiB; "
                                 "split it or trim it")
            try:
                data = {**data, "rules_text": raw.decode()}
            except UnicodeDecodeError as exc:
                line = raw[:exc.start].count(b"\n") + 1
                raise ValueError(f"rules_file {path}: line {line} is not UTF-8 text "
                                 f"(byte {raw[exc.start]:#04x}); save the file as UTF-8") from None
        return data

    @property
    def unreadable_policy(self) -> dict[str, str]:
        """unreadable for each app (drop where not given per app)."""
        if isinstance(self.unreadable, str):
            return {app: self.unreadable for app in l7.KINDS}
        return {app: self.unreadable.get(app, "drop") for app in l7.KINDS}

    @cached_property
    def all_signatures(self) -> tuple[Signature, ...]:
        """signatures, then the rules of rules_file (as read into rules_text), in order."""
        return tuple(sig for _, sig in self.signature_sources)

    @cached_property
    def signature_sources(self) -> tuple[tuple[str, Signature], ...]:
        """(where it was given, signature) for all_signatures."""
        out = [(f"signatures[{i}]", s) for i, s in enumerate(self.signatures)]
        if self.rules_text is None:
            return tuple(out)
        source = f"rules_file {self.rules_file}" if self.rules_file else "rules_text"
        try:
            found = rules(self.rules_text)
        except RuleError as exc:
            raise ValueError(f"{source}, {exc}") from None
        for line, sig in found:
            try:
                out.append((f"{source}, line {line}", Signature.model_validate(sig)))
            except ValidationError as exc:
                err = exc.errors()[0]
                field = {"id": "sid"}.get(str(err["loc"][0]), err["loc"][0]) if err["loc"] else "rule"
                msg = err["msg"].removeprefix("Value error, ")
                raise ValueError(f"{source}, line {line}: {field}: {msg}") from None
        return tuple(out)

    @model_validator(mode="after")
    def _limits(self):
        if not self.all_signatures and not self.apps:
            raise ValueError("no signatures or app rules: give signatures: [...], a rules_file with rules, "
                             "or apps: [...]")
        sources = [(s.id, f"{where}" + (" (sid)" if where.startswith("rules") else ""))
                   for where, s in self.signature_sources]
        sources += [(n, f"apps[{i}]" + ("" if r.id else f" (by default {l7.ID_BASE} + its position)"))
                    for i, (r, n) in enumerate(zip(self.apps, l7.rule_ids(self.apps)))]
        ids = [n for n, _ in sources]
        if len(set(ids)) != len(ids):
            dup = next(i for i, n in Counter(ids).items() if n > 1)
            where = " and ".join(w for n, w in sources if n == dup)
            raise ValueError(f"signature and app rule ids must be unique (sid in rules); {dup} is used twice: "
                             f"by {where}")
        dfa = _automaton_of(self.all_signatures)
        size = dfa.states * dfa.classes * 4
        if size > MAX_TABLE_BYTES:
            raise ValueError(f"{len(dfa.patterns)} contents compile to {dfa.states} DFA states x {dfa.classes} byte "
                             f"classes = {size >> 20} MiB, over the {MAX_TABLE_BYTES >> 20} MiB limit of the DPI "
                             "table; use fewer or shorter contents, or split the signatures over two dpi functions")
        return self


def _rules_path(v, info: ValidationInfo):
    chain_file = (info.context or {}).get("chain_file")
    if v is not None and chain_file and not os.path.isabs(v):
        return os.path.join(os.path.dirname(os.path.abspath(chain_file)), v)
    return v


@dataclass(frozen=True)
class Content:
    """One content as the data path sees it: its signature (list index), its
    bit in that signature's progress word, and the payload positions where
    its last byte may lie."""

    text: bytes
    nocase: bool
    sig: int
    bit: int
    first_end: int
    last_end: int


def _contents(params) -> list[Content]:
    out = []
    for n, s in enumerate(params.all_signatures):
        for bit, text in enumerate(s.contents()):
            last = s.offset + s.depth - 1 if s.depth else params.max_scan - 1
            out.append(Content(text, s.nocase, n, bit, s.offset + len(text) - 1, min(last, params.max_scan - 1)))
    return out


@lru_cache(maxsize=4)
def _automaton(texts: tuple[bytes, ...], nocase: tuple[bool, ...]) -> Automaton:
    """Built once per content set (validation, map sizing and populate all ask)."""
    return build(list(texts), list(nocase), unit=4)   # entries are byte offsets


def _automaton_of(signatures) -> Automaton:
    texts = tuple(text for s in signatures for text in s.contents())
    return _automaton(texts, tuple(s.nocase for s in signatures for _ in s.contents()))


def _compiled(params) -> tuple[Automaton, list[Content]]:
    return _automaton_of(params.all_signatures), _contents(params)


def _table_size(dfa: Automaton) -> int:
    """Entries of the table's map value: a power of two (the data path masks
    offsets into it), with room to grow while small."""
    entries = dfa.states * dfa.classes
    size = 1024
    while size < entries or (size < 2 * entries and size < 1 << 20):
        size *= 2
    return size


def _match_count(dfa: Automaton) -> int:
    return sum(len(o) for o in set(dfa.output))


_POPULATED = ('cfg', 'classes', 'heads', 'hits', 'matches', 'progress', 'scratch', 'sigs', 'table')   # the maps populate() writes itself (l7_maps writes its own)
CUT_SHORT = 0       # hits key of scans cut short (signature ids start at 1)


def _events(params) -> int:
    """FOUND events one packet's scan may note"""
    return headroom(params.max_scan, 16) // 2


class Dpi(FunctionType):
    name = "dpi"
    summary = "payload signatures (content, nocase, offset, depth; rules files) in one Aho–Corasick DFA; drop/pass/label/alert"
    Params = DpiParams
    reasons = ("signature", "app_rule", "app_unreadable")

    def maps(self, params):
        dfa, contents = _compiled(params)
        sigs = headroom(len(params.all_signatures), 16)
        # config maps hold two versions (see ConfigWriter): twice the entries,
        # or two values of classes and table
        return [
            MapSpec("cfg", "array", 1, U32, CFG, "which config version packets use"),
            MapSpec("classes", "array", 2, U32, CLASSES, "per version: byte -> byte class"),
            MapSpec("table", "array", 2, U32, table_layout(_table_size(dfa)),
                    "per version: the DFA table, one value: (state, class) -> next state"),
            MapSpec("heads", "array", 2 * _heads(dfa), U32, HEAD, "per version: state -> its run of match entries"),
            MapSpec("matches", "array", 2 * _matches(dfa), U32, MATCH, "per version: contents that end in a state"),
            MapSpec("sigs", "array", 2 * sigs, U32, SIG, "per version: signatures in order"),
            MapSpec("progress", "percpu_array", sigs, U32, PROGRESS, "contents of a signature seen in this packet"),
            MapSpec("scratch", "percpu_array", 1, U32, scratch_layout(_events(params)),
                    "this packet's match events"),
            MapSpec("hits", "percpu_hash", sigs + 1, U32, U64, "packets per signature id; id 0: scans cut short"),
        ] + l7_maps.map_specs(params.apps, sigs)

    def structs(self, params):
        return super().structs(params) + l7_maps.structs()

    def warnings(self, params):
        out = []
        for n, s in enumerate(params.all_signatures):
            end = s.offset + max(len(c) for c in s.contents())
            if end > params.max_scan:
                where = ("signatures", n) if n < len(params.signatures) else ("rules_file",)
                out.append((where, f"signature {s.id} can never match: its content ends at payload byte {end}, "
                                   f"past max_scan {params.max_scan}; raise max_scan or lower the offset", None))
        return out

    def labels(self, params):
        return {s.label for s in [*params.all_signatures, *params.apps] if s.label}

    def template_vars(self, params, ctx):
        dfa, _ = _compiled(params)
        return {"max_scan": params.max_scan, "sigs": headroom(len(params.all_signatures), 16),
                "unparsed": "vc_drop_unparsed(meta)" if params.unparsed == "drop" else "VC_CONTINUE",
                "table": _table_size(dfa), "heads": _heads(dfa), "matches": _matches(dfa),
                "events": _events(params), "work": WORK,
                **l7_maps.template_vars(params.apps)}

    def populate(self, tables, params, ctx):
        ConfigWriter(tables, params, ctx).write()

    def read_counters(self, maps, params):
        with maps.open("hits") as hits:
            out = {f"sig{s.id}_hits": n for s in params.all_signatures if (n := _count(hits, s.id))}
            if n := _count(hits, CUT_SHORT):
                out["scans_cut_short"] = n
        return out | l7_maps.read_counters(maps, params.apps)

    def decode_event(self, raw: bytes) -> dict:
        return l7_maps.decode_event(raw)


def _count(hits, key: int) -> int:
    return sum(hits.sum_u64(U32.pack(key)))


def _heads(dfa: Automaton) -> int:
    """heads entries of one version"""
    return headroom(dfa.states, 64)


def _matches(dfa: Automaton) -> int:
    """matches entries of one version"""
    return headroom(_match_count(dfa), 64)


class ConfigWriter:
    """Writes a config into the idle version of the maps, then switches to it
    (one word, cfg.active), as the firewall does: a packet sees the old config
    or the new one, never part of each. Counters are keyed by id and kept."""

    def __init__(self, tables, params, ctx):
        self.tables, self.params, self.ctx = tables, params, ctx

    def write(self) -> None:
        with contextlib.ExitStack() as stack:
            self.maps = {n: stack.enter_context(self.tables.open(n)) for n in _POPULATED}
            self.l7 = l7_maps.open_maps(self.tables, stack)
            self._write()

    def _write(self) -> None:
        cfg_map = self.maps["cfg"]
        cfg = CFG.unpack(cfg_map.lookup(U32.pack(0))[0])
        digest = self._digest()
        if cfg["initialized"] and cfg["digest"][cfg["active"] & 1] == digest:
            return      # already the running config, in these very maps
        new = 1 - (cfg["active"] & 1) if cfg["initialized"] else 0
        scratch = bpfsys.map_info(self.maps["scratch"].fd)["id"]
        if scratch != cfg["scratch_id"]:
            # progress entries carry the packet generation of the scratch map,
            # which a new map restarts: clear them so no old entry looks current
            cleared = pack_percpu(PROGRESS, [None] * bpfsys.possible_cpus())
            write_array(self.maps["progress"], 0, [cleared] * self.maps["progress"].max_entries)
        self.write_version(new)
        ids = [s.id for s in self.params.all_signatures]
        l7_maps.keep_counters(self.maps["hits"], [CUT_SHORT, *ids])
        l7_maps.keep_counters(self.l7["app_hits"], l7.rule_ids(self.params.apps))
        digests = list(cfg["digest"])
        digests[new] = digest
        cfg.update(active=new, initialized=1, digest=digests, scratch_id=scratch)
        cfg_map.update(U32.pack(0), CFG.pack(cfg))   # the switch

    def _digest(self) -> int:
        """Of what the maps hold: the signatures (rules_file's too), app rules,
        max_scan, the label ids; and which maps they are (a new map is empty)."""
        labels = {r.label: self.ctx.label_ids[r.label] for r in [*self.params.all_signatures, *self.params.apps]
                  if r.label}
        maps = sorted(bpfsys.map_info(m.fd)["id"] for m in [*self.maps.values(), *self.l7.values()])
        dump = json.dumps([[s.model_dump(mode="json") for s in self.params.all_signatures],
                           [a.model_dump(mode="json") for a in self.params.apps],
                           self.params.max_scan, self.params.unreadable_policy, labels, maps], sort_keys=True)
        return int.from_bytes(hashlib.sha256(dump.encode()).digest()[:8], "little")

    def write_version(self, v: int) -> None:
        """Fill version v of every config map (the idle one: no packet reads it)."""
        maps, params = self.maps, self.params
        dfa, contents = _compiled(params)
        write_array(maps["classes"], v, [CLASSES.pack({"of": [c * 4 for c in dfa.byte_class],
                                                       "row_bytes": dfa.classes * 4})])
        write_array(maps["table"], v, [table_layout(_table_size(dfa)).pack({"next": dfa.table.tobytes()})])
        heads, matches, runs = [], [], {}
        for out in dfa.output:
            if out and out not in runs:
                runs[out] = len(matches)
                matches += [contents[c] for c in sorted(out)]
            heads.append(HEAD.pack({"first": runs.get(out, 0), "count": len(out)}))
        write_array(maps["heads"], v * (maps["heads"].max_entries // 2), heads)
        write_array(maps["matches"], v * (maps["matches"].max_entries // 2),
                    [MATCH.pack({"sig": c.sig, "bit": c.bit, "first_end": c.first_end, "last_end": c.last_end})
                     for c in matches])
        sigs = [SIG.pack({"contents": (1 << len(s.contents())) - 1, "verdict": _verdict(s, self.ctx),
                          "proto": PROTOS.get(s.proto, 0), "dport": s.dport or 0})
                for s in params.all_signatures]
        per = maps["sigs"].max_entries // 2
        unused = SIG.pack({"verdict": UNUSED})
        write_array(maps["sigs"], v * per, sigs + [unused] * (per - len(sigs)))  # clear what a longer list left
        l7_maps.write_version(self.l7, v, params.apps, [_verdict(r, self.ctx) for r in params.apps],
                              [s.id for s in params.all_signatures], params.unreadable_policy)


def _verdict(rule, ctx) -> int:
    """A signature's or app rule's verdict as the kernel spells it."""
    return LABEL_BASE + ctx.label_ids[rule.label] if rule.action == "label" else VERDICTS[rule.action]
