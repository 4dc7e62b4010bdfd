"""dpi: payload signatures, matched in the kernel by one Aho–Corasick DFA.

A signature is one or more ``content``s (text with ``|hex|`` blocks; all must
be present), optionally with ``offset``/``depth`` (where in the payload a
content may lie), ``proto`` and ``dport``, and an action: ``drop``, ``pass``
(to the kernel stack, skipping the rest of the chain), ``label`` (branch to
``next: {label: ...}``) or ``alert`` (counted, the packet continues). The
first signature in the list whose contents were all seen decides.

Limits (this first version): up to 64 contents over all signatures, case-
sensitive matching, the first ``max_scan`` bytes of a single packet's TCP/UDP
payload — no stream reassembly, so a pattern split across packets or beyond
``max_scan`` is not seen.

App rules (``apps``) name an application and, optionally, what it asks for:
``http`` (``host``, ``method``, ``path`` prefix), ``tls`` (``sni``, from the
ClientHello) or ``dns`` (``qname`` of a UDP/53 query). Names are compared
case-insensitively, exactly or as ``*.domain`` (any name below domain, not
domain itself); a rule without a name matches the whole application, e.g.
``{app: http, action: label, label: web}`` sends HTTP one way and
``{app: tls, action: label, label: tls}`` TLS another. App rules see what the
signatures let continue; the first matching rule decides. ``action: alert``
(signatures too) also sends an event with the rule id, the 5-tuple and the
name: ``vnfchain events CHAIN`` prints them.

Limits of app rules: up to 64; the request line and Host must be in the
first packet of the connection, Host within its first 512 bytes and before
the end of the headers; the SNI in the first packet of the ClientHello; one
DNS question, UDP only, no TCP/53. Names are compared on their last 64 bytes
(a longer name matches wildcards of up to 64 bytes, never an exact name);
paths on their first 64 bytes, raw (no %-decoding).
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from .. import bpfsys
from ..dpi import l7, l7_maps
from ..dpi.automaton import build, parse_content
from .base import FunctionType, MapSpec, Params, headroom, write_array

MAX_CONTENTS = 64
PROTOS = {"tcp": 6, "udp": 17}
VERDICTS = {"drop": 1, "pass": 2, "alert": 0}   # VC_DROP, VC_PASS, VC_CONTINUE
LABEL_BASE = 16


class Signature(Params):
    id: int = Field(ge=1, description="signature id, shown in stats")
    content: str | list[str] = Field(description="text with |hex| blocks; a list: all must be present")
    offset: int = Field(0, ge=0, le=65535, description="contents start at or after this payload byte")
    depth: int | None = Field(None, ge=1, le=65535, description="contents end within offset+depth bytes")
    proto: Literal["tcp", "udp"] | None = Field(None, description="only this protocol")
    dport: int | None = Field(None, ge=1, le=65535, description="only this destination port")
    action: Literal["drop", "pass", "label", "alert"] = Field(description="what a match does")
    label: str | None = Field(None, pattern=r"^[a-z][a-z0-9_]{0,23}$", description="branch label for action: label")

    @field_validator("content")
    @classmethod
    def _contents(cls, v):
        for text in v if isinstance(v, list) else [v]:
            parse_content(text)
        return v

    @model_validator(mode="after")
    def _label(self):
        if (self.action == "label") != (self.label is not None):
            raise ValueError("action: label needs label: NAME, and only label takes one")
        return self

    def contents(self) -> list[bytes]:
        return [parse_content(t) for t in (self.content if isinstance(self.content, list) else [self.content])]


class DpiParams(Params):
    signatures: list[Signature] = Field([], description="ordered; the first full match decides")
    apps: list[l7.AppRule] = Field([], max_length=l7.MAX_RULES, description="ordered app rules (HTTP, TLS SNI, DNS), after the signatures")
    max_scan: int = Field(256, ge=16, le=1500, description="payload bytes scanned per packet")

    @model_validator(mode="after")
    def _limits(self):
        n = sum(len(s.contents()) for s in self.signatures)
        if n > MAX_CONTENTS:
            raise ValueError(f"{n} contents; this version matches up to {MAX_CONTENTS} in all")
        if not self.signatures and not self.apps:
            raise ValueError("a dpi function needs signatures, apps or both")
        ids = [s.id for s in self.signatures] + l7.rule_ids(self.apps)
        if len(set(ids)) != len(ids):
            raise ValueError("signature and app rule ids must be unique")
        return self


def _compiled(params):
    contents, windows = [], []
    for s in params.signatures:
        for c in s.contents():
            contents.append(c)
            last = s.offset + s.depth - 1 if s.depth else params.max_scan - 1
            windows.append((s.offset + len(c) - 1, last))
    return build(contents), windows


class Dpi(FunctionType):
    name = "dpi"
    summary = "payload signatures (content, offset, depth) in one Aho–Corasick DFA; drop/pass/label/alert"
    Params = DpiParams
    reasons = ("signature", "app_rule")

    def maps(self, params):
        automaton, _ = _compiled(params)
        states = headroom(automaton.states, 64)
        return [
            MapSpec("delta", "array", states * 256, "state x byte -> next state (FOUND bit)"),
            MapSpec("found", "array", states, "contents that end in a state"),
            MapSpec("window", "array", params.max_scan, "contents allowed to end at a payload byte"),
            MapSpec("sigs", "array", headroom(len(params.signatures), 16), "signatures in order"),
            MapSpec("hits", "percpu_array", headroom(len(params.signatures), 16), "packets per signature"),
        ] + l7_maps.map_specs(params.apps, len(params.signatures))

    def labels(self, params):
        return {s.label for s in [*params.signatures, *params.apps] if s.label}

    def template_vars(self, params, ctx):
        return {"max_scan": params.max_scan, "sigs": headroom(len(params.signatures), 16),
                **l7_maps.template_vars(params.apps)}

    def populate(self, tables, params, ctx):
        automaton, windows = _compiled(params)
        delta = []
        for row in automaton.delta:
            for nxt in row:
                delta.append(nxt | (0x80000000 if automaton.output[nxt] else 0))
        write_array(tables["delta"], 0, [v.to_bytes(4, "little") for v in delta])
        write_array(tables["found"], 0, [sum(1 << p for p in out).to_bytes(8, "little") for out in automaton.output])
        window = [sum(1 << p for p, (lo, hi) in enumerate(windows) if lo <= i <= hi) for i in range(params.max_scan)]
        write_array(tables["window"], 0, [w.to_bytes(8, "little") for w in window])
        sigs, first = [], 0
        for s in params.signatures:
            n = len(s.contents())
            mask = ((1 << n) - 1) << first
            first += n
            verdict = _verdict(s, ctx)
            dport = ((s.dport & 0xFF) << 8 | s.dport >> 8) if s.dport else 0
            sigs.append(mask.to_bytes(8, "little") + verdict.to_bytes(4, "little", signed=True)
                        + bytes([PROTOS.get(s.proto, 0), 0]) + dport.to_bytes(2, "little"))
        sigs += [bytes(16)] * (tables["sigs"].max_entries - len(sigs))   # clear what a longer list left
        write_array(tables["sigs"], 0, sigs)
        write_array(tables["hits"], 0, [bytes(8 * bpfsys.possible_cpus())] * tables["hits"].max_entries)
        l7_maps.populate(tables, params.apps, [_verdict(r, ctx) for r in params.apps],
                         [s.id for s in params.signatures])

    def read_counters(self, maps, params):
        out = {}
        with maps.open("hits") as hits:
            for i, s in enumerate(params.signatures):
                n = sum(hits.sum_u64(i.to_bytes(4, "little")))
                if n:
                    out[f"sig{s.id}_hits"] = n
        return out | l7_maps.read_counters(maps, params.apps)

    def decode_event(self, raw: bytes) -> dict:
        return l7_maps.decode_event(raw)


def _verdict(rule, ctx) -> int:
    """A signature's or app rule's verdict as the kernel spells it."""
    return LABEL_BASE + ctx.label_ids[rule.label] if rule.action == "label" else VERDICTS[rule.action]

