"""firewall: ordered rules, first match wins, with a default action.

Rules match on source/destination CIDR (IPv4, IPv6), protocol, source and
destination ports (single, range, list), TCP flags, ICMP type, ingress
interface and, with ``conntrack: true``, connection state. Actions: allow (on
to the next function), drop, or goto a branch label. Matching costs O(fields),
not O(rules): each field's lookup yields a bit vector of candidate rules, the
vectors are ANDed and the lowest set bit wins (vnfchain/firewall/lbvs.py).

A rule change is a map update: the new ruleset is written beside the running
one and switched in with one word, so no packet sees half of each. So is a
change of default, unparsed, non_ip or the conntrack timeouts; turning
conntrack on or off and max_flows / max_unconfirmed change the program.
Connection tracking here is the firewall's own tables; the NAT keeps its own
translations (a NAT before or after the firewall sees other tuples).

Frames the parser cannot classify as the kernel would (too many VLAN tags or
IPv6 extension headers, lying lengths, cut transport headers, tiny first
fragments, TCP fragments at offset 8) get ``unparsed`` -- by default the
``default``, so a default-drop firewall drops them, counted as
``drop_unparsed_<reason>``. A later fragment gets the verdict of its datagram's
first fragment (remembered 30 s, 4,096 datagrams), or, if that was never seen,
``unparsed`` too.

Conntrack (conntrack: true) gives every packet a state the rules may match
(ct: new, established, related, invalid). A TCP flow opens only with a SYN
(without ACK) and is followed each way, as nf_conntrack does: the next sequence
number, the right edge the other side allowed (its ack + window, scaled when
both SYNs offered a window scale) and the largest window and ack. A segment
outside those bounds (data, FIN or RST), or acking data never sent, is invalid
and changes nothing, so a blind attacker who knows the ports cannot close or
move a flow. A RST closes the flow only at the receiver's next sequence number
(RFC 5961); one inside the window is passed on, the flow kept, for the
endpoint to answer with a challenge ACK. Flag combinations no TCP stack sends
(SYN+FIN, SYN+RST, FIN without ACK, URG alone, no flags) are invalid in any state.
Slack: a retransmission up to the receiver's largest window back, an ack up to
the sender's largest window (at least 66,000 bytes) behind, anything up to the
allowed right edge ahead (segments lost before the firewall); SACK blocks are
not read (the cumulative ack is checked). ICMP: an echo request belongs to its
flow only the way it was opened, an echo reply only back; other ICMP is never
established. An error (ICMPv4 unreachable, time exceeded, parameter problem;
ICMPv6 types 1-4) is related when it quotes a live flow and goes back to the
quoted packet's sender; a quoted TCP segment must lie in the last window its
sender sent.

Floods of spoofed new flows. A new flow is *unconfirmed* until its opener
shows that it got the answer: for TCP an ACK that acknowledges everything the
answering side sent (only who received the SYN-ACK knows that number), for
UDP and ICMP echo its next packet after a reply. A reply alone proves nothing:
a server behind the firewall answers spoofed SYNs too. Unconfirmed flows live
in their own LRU table (``max_unconfirmed``, default max_flows / 4) with the
short timeouts (timeouts.unreplied, udp, icmp) and move to the table of
established flows (``max_flows``) when confirmed, their TCP state intact. A
flood of new flows, spoofed or answered for the spoofer, therefore pushes out
only unconfirmed flows (``ct_evicted_unconfirmed``), never an established one;
a legitimate handshake completes under it if it takes less time than about
``max_unconfirmed`` new flows take to arrive (16,384 at a million a second:
16 ms). A full table of established flows evicts its least recently
used (``ct_evicted_flows``: size max_flows for the flows you carry). Both
tables are preallocated, 160 bytes a flow. ``vnfchain stats`` shows how many
flows each holds (``ct_flows``, ``ct_unconfirmed``).

Limits: a TCP flow first seen mid-stream (conntrack turned on under running
connections, an entry expired or evicted) is not picked up: its packets are
invalid until it reconnects; a port reused while the old flow is still open
(its close never seen) is refused until the entry expires
(timeouts.established); simultaneous open is not supported. A UDP flow whose opener never sends again
after the answer (a one-shot query, a stream only the other side sends) stays
unconfirmed and can be pushed out by a flood; a blind spoofer can confirm UDP
flows by sending twice, and hosts that complete handshakes from their real
addresses fill the established table like any clients. Changing max_flows or
max_unconfirmed makes that table anew, empty: the flows it held are invalid
until they reconnect. `vnfchain stats` counts ct_bad_flags, ct_bad_state,
ct_out_of_window, ct_rst_in_window and ct_rst_closed.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
from typing import Literal

from pydantic import Field, model_validator

from .. import bpfsys
from ..chain.verdicts import LABEL_BASE, VERDICTS
from ..contract import FunctionType, MapSpec, Params, headroom, max_unconfirmed_field, unconfirmed_room, write_array
from ..firewall import conntrack as ct_model
from ..firewall.lbvs import FIELDS, NOT_ICMP, NOT_TCP, NO_PORT, compile_rules
from ..firewall.rules import CT_STATES, Rule
from ..layout import BE16, BE32, S32, U8, U16, U32, U64, Member, Struct, pack_percpu, unpack_percpu

VERDICT = {"allow": VERDICTS.index("continue"), "drop": VERDICTS.index("drop")}
SHADOW_CHECK_LIMIT = 2000
FRAGMENTS = 4096   # fragmented datagrams whose later fragments can follow their first


class Timeouts(Params):
    unreplied: int = Field(30, ge=1, description="seconds an idle unconfirmed TCP flow is kept (no SYN-ACK "
                                                 "yet, or its opener has not acked it)")
    established: int = Field(3600, ge=1, description="seconds an idle established flow is kept")
    closing: int = Field(10, ge=1, description="seconds after FIN both ways")
    udp: int = Field(30, ge=1, description="seconds an idle unconfirmed UDP flow is kept")
    icmp: int = Field(30, ge=1, description="seconds an ICMP echo flow is kept")


class FirewallParams(Params):
    default: Literal["allow", "drop"] = Field("drop", description="what packets no rule matches get")
    rules: list[Rule] = Field([], max_length=100_000, description="ordered; the first match decides")
    conntrack: bool = Field(False, description="track flows: rules may match ct: new/established/"
                                               "related/invalid; replies of allowed flows are established, "
                                               "TCP only inside its windows (see above)")
    non_ip: Literal["allow", "drop"] = Field("allow", description="what frames that are not IP get (ARP!)")
    unparsed: Literal["default", "allow", "drop"] = Field(
        "default", description="what frames the parser cannot classify get (too many VLAN tags or "
                               "IPv6 extension headers, lying lengths, cut transport headers, tiny "
                               "or orphan fragments; see `vnfchain functions`): default = as `default`")
    timeouts: Timeouts = Field(Timeouts(), description="conntrack timeouts, in seconds")
    max_flows: int = Field(65536, ge=16, le=4_194_304,
                           description="conntrack's established flows (LRU, 160 bytes a flow): flows whose "
                                       "opener showed it got the answer; when full, the least recently used "
                                       "is evicted (ct_evicted_flows)")
    max_unconfirmed: int | None = max_unconfirmed_field(
        "conntrack's unconfirmed flows (LRU, apart from max_flows): not answered yet, or answered but not "
        "yet acknowledged by their opener; a flood of new flows churns only these (ct_evicted_unconfirmed)")

    @model_validator(mode="after")
    def _ct_needs_tracking(self):
        for i, rule in enumerate(self.rules):
            if rule.ct and not self.conntrack:
                raise ValueError(f"rules.{i} matches ct: {', '.join(rule.ct)}, which needs conntrack: true")
        return self


def words(params) -> int:
    return max(1, math.ceil(max(len(params.rules), 1) * 1.25 / 64))


def words_alloc(params) -> int:
    n = 1
    while n < words(params):
        n *= 2
    return n


def summary_words(params) -> int:
    return math.ceil(words(params) / 64)


def port_ranges(params, field: str) -> int:
    return sum(len(getattr(r, field) or ()) for r in params.rules)


def port_classes(params) -> int:
    """Classes per version in each port field: intervals between range ends, plus 'no port'."""
    return headroom(2 * max(port_ranges(params, "sport"), port_ranges(params, "dport")) + 2)


def prefixes(params, field: str, family: int) -> int:
    return len({n for r in params.rules for n in (getattr(r, field) or []) if n.version == family})


def bits_layout(params) -> Struct:
    return Struct("bits", "candidate rules: bit i of w set when rule i accepts the field's value", [
        Member("summary", U64, "bit j set when w[j] is not zero: only words every field has candidates in "
                               "are ANDed", count=summary_words(params)),
        Member("w", U64, "rounded up to a power of two: a masked index always lands inside",
               count=words_alloc(params)),
    ])


# version and family bytes first, so that each ruleset version and each family
# is its own subtree of one trie (one map per field keeps the verifier from
# walking every IPv4/IPv6 combination separately)
LPM = Struct("lpm", "address prefix of a version's rules", [
    Member("prefixlen", U32, "16 + the address prefix length"),
    Member("version", U8, "ruleset version"),
    Member("family", U8, "4 or 6"),
    Member("addr", U8, "IPv4 in the first 4 bytes", count=16),
], packed=True)
IIF_KEY = Struct("iif_key", "ingress interface of a version's rules", [
    Member("version", U32),
    Member("ifindex", U32, "0: any interface no rule names"),
])
VERSION = Struct("version", "per ruleset version: which fields some rule constrains, and the verdicts "
                            "of what no rule decides", [
    Member("used", U32, "bit per field, FW_F_*"),
    Member("nrules", U32),
    Member("default_verdict", U32, "what no rule matches gets"),
    Member("hash", U32, "of the compiled ruleset: an unchanged one is not rewritten"),
    Member("unparsed_verdict", U32, "what frames the parser could not classify get"),
    Member("non_ip_verdict", U32, "what frames that are not IP get"),
])
TIMEOUTS = Struct("timeouts", "conntrack timeouts, ns", [
    Member("unreplied", U64, "an unconfirmed TCP flow"),
    Member("established", U64),
    Member("closing", U64, "after FIN both ways"),
    Member("udp", U64, "an unconfirmed UDP flow"),
    Member("icmp", U64, "an ICMP echo flow"),
])
CFG = Struct("cfg", "the active ruleset version, both versions, and conntrack's timeouts", [
    Member("active", U32, "the version packets use"),
    Member("initialized", U32),
    Member("v", VERSION, count=2),
    Member("timeouts", TIMEOUTS),
])
ACTION = Struct("action", "rule i of version v at v * RULES + i", [
    Member("verdict", S32, "VC_*, or VC_LABEL(id) for goto"),
])
FLOW = Struct("flow", "a flow, in the direction of its first packet", [
    Member("saddr", BE32, count=4),
    Member("daddr", BE32, count=4),
    Member("sport", BE16, "ICMP echo: the identifier, both ways"),
    Member("dport", BE16),
    Member("proto", U8),
    Member("pad", U8, count=3),
])
TCP_DIR = Struct("fw_tcp_dir", "what one side of a TCP flow has shown, sequence numbers in host order "
                               "(nf_conntrack's ip_ct_tcp_state)", [
    Member("end", U32, "seq + length of the furthest segment it sent: its next sequence number"),
    Member("maxend", U32, "the furthest sequence number the other side allowed it: ack + window"),
    Member("maxwin", U32, "the largest window it advertised, scaled"),
    Member("maxack", U32, "the largest ack it sent: what it expects next (FW_DIR_ACKED)"),
    Member("wscale", U8, "its window scale; 0 unless both SYNs carried the option"),
    Member("flags", U8, "FW_DIR_*"),
    Member("pad", U8, count=2),
], shared=True)
FLOW_STATE = Struct("flow_state", "a tracked flow", [
    Member("last_seen", U64, "ns, bpf_ktime_get_ns"),
    Member("replied", U8, "a reply was allowed: the flow is established"),
    Member("fin", U8, "FW_FIN_ORIG | FW_FIN_REPLY"),
    Member("pad", U8, count=6),
    Member("tcp", TCP_DIR, "TCP: what each way has shown, the original way first", count=2),
])
FRAG_KEY = Struct("frag_key", "a fragmented datagram, keyed like the kernel's reassembly queue", [
    Member("saddr", BE32, count=4),
    Member("daddr", BE32, count=4),
    Member("id", U32),
    Member("proto", U8, "IPv4 only: IPv6 reassembles by addresses and id"),
    Member("family", U8),
    Member("pad", U8, count=2),
])
FRAG_VERDICT = Struct("frag_verdict", "a first fragment's verdict, which its later fragments follow", [
    Member("seen", U64, "ns, bpf_ktime_get_ns"),
    Member("verdict", S32),
    Member("rule", U32, "the rule that decided, RULES for the default"),
])
TCP_SEG = Struct("fw_tcp_seg", "a TCP segment as conntrack reads it", [
    Member("seq", U32),
    Member("ack", U32),
    Member("end", U32, "seq + payload, + 1 for SYN, + 1 for FIN"),
    Member("win", U32, "as on the wire: not scaled"),
    Member("opt_off", U16, "TCP options, from the packet's start, up to the payload"),
    Member("opt_end", U16),
    Member("flags", U8),
    Member("pad", U8, count=3),
], shared=True)
CT = Struct("ct", "what conntrack learnt of a packet, carried from its state past the rules to its update", [
    Member("key", FLOW, "the packet's tuple, and reversed", count=2),
    Member("seg", TCP_SEG, "TCP"),
    Member("now", U64),
    Member("state", U32, "FW_CT_*: what the rules match"),
    Member("found", U8, "the flow has an entry, in table"),
    Member("table", U8, "FW_TABLE_*"),
    Member("reply", U8, "the packet goes the flow's reply way: key[1] is the flow's"),
    Member("change", U8, "FW_CHANGE_*: what the packet does to the flow if allowed"),
    Member("confirm", U8, "the opener shows it got the answer: to the flows table"),
    Member("wscale", U8, "a SYN's window scale option (FW_NO_WSCALE: none)"),
    Member("pad", U8, count=6),
])
NS = 1_000_000_000


class Firewall(FunctionType):
    name = "firewall"
    summary = "ordered ACL (CIDR, proto, ports, TCP flags, ICMP, iif, conntrack state) in O(fields)"
    Params = FirewallParams
    reasons = ("rule", "default_policy", "fragment")

    def maps(self, params):
        w, bits = words(params), bits_layout(params)
        lpm = {f: 2 * headroom(prefixes(params, f, 4) + prefixes(params, f, 6) + 2, 16)
               for f in ("src", "dst")}
        specs = [MapSpec("cfg", "array", 1, U32, CFG, "active version; per version: used fields, verdicts, hash; "
                                                     "conntrack timeouts")]
        specs += [MapSpec(name, "lpm_trie", size, LPM, bits, "prefix -> candidate rules") for name, size in lpm.items()]
        specs += [
            MapSpec("proto", "array", 2 * 256, U32, bits, "protocol -> candidate rules"),
            MapSpec("sport_class", "array", 2 * 65536, U32, U32, "source port -> interval class"),
            MapSpec("dport_class", "array", 2 * 65536, U32, U32, "destination port -> interval class"),
            MapSpec("sport_bits", "array", 2 * port_classes(params), U32, bits,
                    "source port class -> candidate rules"),
            MapSpec("dport_bits", "array", 2 * port_classes(params), U32, bits,
                    "destination port class -> candidate rules"),
            MapSpec("flags", "array", 2 * 257, U32, bits, "TCP flags byte -> candidate rules"),
            MapSpec("icmp", "array", 2 * 257, U32, bits, "ICMP type -> candidate rules"),
            MapSpec("iif", "hash", 2 * headroom(len({r.iif for r in params.rules}) + 1, 16), IIF_KEY, bits,
                    "(version, ifindex) -> candidate rules"),
            MapSpec("ct_bits", "array", 2 * (len(CT_STATES) + 1), U32, bits, "conntrack state -> candidate rules"),
            MapSpec("actions", "array", 2 * w * 64, U32, ACTION, "rule -> verdict"),
            MapSpec("hits", "percpu_array", w * 64 + 1, U32, U64, "packets per rule; the default's last"),
            MapSpec("frags", "lru_hash", FRAGMENTS, FRAG_KEY, FRAG_VERDICT,
                    "first fragment (src, dst, id; IPv4: proto) -> verdict"),
            MapSpec("frag_drops", "lru_hash", FRAGMENTS, FRAG_KEY, FRAG_VERDICT,
                    "condemned datagrams (src, dst, id; IPv4: proto)"),
        ]
        sizes = {"flows": params.max_flows, "unconfirmed": unconfirmed_room(params)}
        specs += [MapSpec(table, "lru_hash", sizes[table] if params.conntrack else 1, FLOW, FLOW_STATE, help)
                  for table, help in (("flows", "established flows"), ("unconfirmed", "flows not yet confirmed"))]
        specs.append(MapSpec("ct_events", "percpu_array", ct_model.COUNTERS, U32, U64,
                             "packets conntrack refused or acted on; flows into and out of each table"))
        specs.append(MapSpec("ct_notes", "percpu_array", 1, U32, CT, "this packet's conntrack notes"))
        return specs

    def labels(self, params):
        return {r.label for r in params.rules if r.action == "goto"}

    def template_vars(self, params, ctx):
        return {
            "words": words(params),
            "summary_words": summary_words(params),
            "words_alloc": words_alloc(params),
            "port_classes": port_classes(params),
            "conntrack": int(params.conntrack),
            "fw_defines": fw_defines(),
        }

    def warnings(self, params):
        from ..firewall.rules import shadowed
        out = []
        if params.default == "allow" and params.unparsed == "default":
            out.append((("default",), "default: allow also lets through frames the parser cannot "
                                      "classify, which a drop rule then never sees; add "
                                      "`unparsed: drop` unless you want that", None))
        if len(params.rules) > SHADOW_CHECK_LIMIT:
            return out + [(("rules",), f"{len(params.rules)} rules: the shadowed-rule check (quadratic) "
                                       f"runs up to {SHADOW_CHECK_LIMIT} rules only", None)]
        out += [(("rules", later), f"rule {later} can never match: rule {earlier} before it "
                                   f"matches everything it does", ("rules", earlier))
                for earlier, later in shadowed(params.rules)]
        return out + _first_packets_only(params)

    def populate(self, tables, params, ctx):
        RulesetWriter(tables, params, ctx).write()
        if params.conntrack:
            with tables.open("ct_events") as events:
                for table in ct_model.TABLES:
                    _adopt_flows(tables, events, table)

    def read_counters(self, maps, params):
        out = {}
        with maps.open("hits") as hits:
            for i in range(len(params.rules)):
                n = sum(hits.sum_u64(i.to_bytes(4, "little")))
                if n:
                    out[f"rule{i}_hits"] = n
            n = sum(hits.sum_u64((hits.max_entries - 1).to_bytes(4, "little")))
            if n:
                out["default_hits"] = n
        if params.conntrack:
            with maps.open("ct_events") as events:
                for i, name in enumerate(ct_model.EVENTS):
                    out[f"ct_{name}"] = sum(events.sum_u64(i.to_bytes(4, "little")))
                for table in ct_model.TABLES:
                    entries, went_in, taken_out = _table_tally(maps, events, table)
                    out[f"ct_{table}"] = entries
                    out[f"ct_evicted_{table}"] = max(0, went_in - taken_out - entries)
        return out


def _table_tally(maps, events, table: str) -> tuple[int, int, int]:
    """(entries now, flows that went in, flows conntrack took out) of one table."""
    with maps.open(table) as flows:
        entries = flows.count()
    went_in, taken_out = (sum(events.sum_u64(ct_model.tally_index(table, way).to_bytes(4, "little")))
                          for way in ct_model.TALLY)
    return entries, went_in, taken_out


def _adopt_flows(maps, events, table: str) -> None:
    """Count as gone in the flows a table holds that its tally never saw go in
    (a table kept from a version that did not count, beside fresh counters), so
    that what is missing later is what the LRU evicted. A table made afresh
    beside an older tally (its size changed) keeps the difference: those flows
    were dropped with the old table."""
    entries, went_in, taken_out = _table_tally(maps, events, table)
    unseen = entries - (went_in - taken_out)
    if unseen <= 0:
        return
    key = U32.pack(ct_model.tally_index(table, "in"))
    counts = unpack_percpu(U64, events.lookup(key))
    counts[0] += unseen
    events.update(key, pack_percpu(U64, counts))


def _first_packets_only(params) -> list:
    """A goto (to a DPI, say) after a rule that allows established flows sees only
    the packets that open a flow: the rest are allowed before they reach it."""
    from ..firewall.rules import covers
    if not params.conntrack:
        return []
    out = []
    for j, rule in enumerate(params.rules):
        if rule.action != "goto" or (rule.ct and "established" not in rule.ct):
            continue
        established = rule.model_copy(update={"ct": ["established"]})
        for i in range(j):
            earlier = params.rules[i]
            if earlier.action != "goto" and covers(earlier, established):
                out.append((("rules", j), f"rule {j} (goto {rule.label}) sees only the first packets of a "
                            f"flow: rule {i} before it {earlier.action}s the established ones, so they "
                            f"never reach '{rule.label}'; put rule {j} first if every packet should",
                            ("rules", i)))
                break
    return out


def fw_defines() -> list[tuple[str, int | str]]:
    """The constants the template shares with lbvs.py, generated from it."""
    names = {"src": "SRC", "dst": "DST", "proto": "PROTO", "sport": "SPORT", "dport": "DPORT",
             "flags": "FLAGS", "icmp_type": "ICMP", "iif": "IIF", "ct": "CT"}
    out = [(f"FW_F_{names[f]}", 1 << i) for i, f in enumerate(FIELDS)]
    out += [("FW_NO_PORT", NO_PORT), ("FW_NOT_TCP", NOT_TCP), ("FW_NOT_ICMP", NOT_ICMP)]
    out += [(f"FW_CT_{s.upper()}", i) for i, s in enumerate(CT_STATES)]
    out += [("FW_CT_UNTRACKED", len(CT_STATES)), ("FW_CT_CLASSES", len(CT_STATES) + 1)]
    return out + ct_model.c_defines()


class RulesetWriter:
    """Writes a ruleset into the idle version of the maps, then switches to it."""

    MAPS = ("cfg", "src", "dst", "proto", "sport_class", "dport_class", "sport_bits", "dport_bits", "flags",
            "icmp", "iif", "ct_bits", "actions", "hits")

    def __init__(self, tables, params, ctx):
        self.tables, self.params, self.ctx = tables, params, ctx
        self.words = words(params)
        self.port_classes = port_classes(params)
        self.bits = bits_layout(params)

    def write(self) -> None:
        with contextlib.ExitStack() as stack:
            self.t = {name: stack.enter_context(self.tables.open(name)) for name in self.MAPS}
            self._write()

    def _write(self) -> None:
        cfg_map = self.t["cfg"]
        cfg = CFG.unpack(cfg_map.lookup(U32.pack(0))[0])
        running_default = cfg["v"][cfg["active"] & 1]["default_verdict"] if cfg["initialized"] else None
        cfg["v"] = list(cfg["v"])
        # the timeouts first, whether the ruleset changed or not: no version holds them
        cfg["timeouts"] = {name: seconds * NS for name, seconds in self.params.timeouts.model_dump().items()}
        cfg_map.update(U32.pack(0), CFG.pack(cfg))
        self.ifindexes = {name: self.ctx.resolve_ifindex(name) if self.ctx.resolve_ifindex else None
                          for name in sorted({r.iif for r in self.params.rules if r.iif})}
        digest = self._digest()
        if cfg["initialized"] and cfg["v"][cfg["active"] & 1]["hash"] == digest:
            return  # this ruleset is already the running one
        new = (1 - (cfg["active"] & 1)) if cfg["initialized"] else 0
        c = compile_rules(self.params.rules, self.words)
        self._clear_hashed(new)   # whatever an interrupted earlier write left there
        self._fill(new, c)
        unparsed = self.params.default if self.params.unparsed == "default" else self.params.unparsed
        cfg["v"][new] = {
            "used": sum(1 << i for i, f in enumerate(FIELDS) if f in c.used), "nrules": c.nrules,
            "default_verdict": VERDICT[self.params.default], "hash": digest,
            "unparsed_verdict": VERDICT[unparsed], "non_ip_verdict": VERDICT[self.params.non_ip]}
        cfg_map.update(U32.pack(0), CFG.pack(cfg))        # the idle version is complete
        cfg.update(active=new, initialized=1)
        cfg_map.update(U32.pack(0), CFG.pack(cfg))        # the switch
        self._restart_hits(running_default)

    def _digest(self) -> int:
        """Of everything the maps hold: the rules, but also the chain-wide label
        ids goto rules store and the interfaces' current ifindexes."""
        labels = {r.label: self.ctx.label_ids[r.label] for r in self.params.rules if r.label}
        config = self.params.model_dump(mode="json", exclude={"timeouts", "max_flows", "max_unconfirmed"})
        dump = json.dumps([config, labels, self.ifindexes], sort_keys=True)
        return int.from_bytes(hashlib.sha256(dump.encode()).digest()[:4], "little")

    def _bits(self, value: int) -> bytes:
        """A bit vector as the kernel reads it: summary words, then the words."""
        summary = 0
        for j in range(self.words):
            if (value >> (64 * j)) & 0xFFFFFFFFFFFFFFFF:
                summary |= 1 << j
        return self.bits.pack({"summary": summary.to_bytes(summary_words(self.params) * 8, "little"),
                               "w": value.to_bytes(words_alloc(self.params) * 8, "little")})

    def _fill(self, v: int, c) -> None:
        t = self.t
        for name, table in (("src", c.src4 + c.src6), ("dst", c.dst4 + c.dst6)):
            for net, bits in table:
                t[name].update(LPM.pack({"prefixlen": 16 + net.prefixlen, "version": v, "family": net.version,
                                         "addr": net.network_address.packed}), self._bits(bits))
        write_array(t["proto"], v * 256, [self._bits(b) for b in c.proto])
        for f in ("sport", "dport"):
            classes = getattr(c, f"{f}_class")
            bits = getattr(c, f"{f}_bits")
            if len(bits) > self.port_classes:
                raise ValueError(f"{len(bits)} port classes exceed the map's {self.port_classes}")
            write_array(t[f"{f}_class"], v * 65536, [U32.pack(x) for x in classes])
            write_array(t[f"{f}_bits"], v * self.port_classes, [self._bits(b) for b in bits])
        write_array(t["flags"], v * 257, [self._bits(b) for b in c.flags])
        write_array(t["icmp"], v * 257, [self._bits(b) for b in c.icmp])
        write_array(t["ct_bits"], v * (len(CT_STATES) + 1), [self._bits(b) for b in c.ct])
        t["iif"].update(IIF_KEY.pack({"version": v, "ifindex": 0}), self._bits(c.iif_other))
        for name, bits in c.iif.items():
            index = self.ifindexes.get(name)
            if index:
                t["iif"].update(IIF_KEY.pack({"version": v, "ifindex": index}), self._bits(bits))
        verdicts = [VERDICT[r.action] if r.action != "goto" else LABEL_BASE + self.ctx.label_ids[r.label]
                    for r in self.params.rules]
        write_array(t["actions"], v * self.words * 64, [ACTION.pack({"verdict": x}) for x in verdicts])

    def _clear_hashed(self, v: int) -> None:
        """Empty one version's prefix and interface entries (arrays are just
        overwritten). Done to the idle version before it is filled, not to the
        old one right after the switch: a packet on another CPU may still be
        reading the old version then."""
        for name, key_layout in (("src", LPM), ("dst", LPM), ("iif", IIF_KEY)):
            table = self.t[name]
            for key in list(table.keys()):
                if key_layout.unpack(key)["version"] == v:
                    del table[key]

    def _restart_hits(self, running_default: int | None) -> None:
        """Zero the hit counters of the rules this ruleset changed: a new,
        edited or moved rule (its count was another rule's), the slots past
        the last rule, the default if its verdict changed. A rule that stays
        as it was, where it was, keeps counting: its slot is not written."""
        before = (self.ctx.running or {}).get("rules")
        now = [r.model_dump(mode="json", exclude_defaults=True, exclude_none=True) for r in self.params.rules]
        kept = {i for i, rule in enumerate(now) if before and i < len(before) and before[i] == rule}
        if running_default == VERDICT[self.params.default]:
            kept.add(self.words * 64)
        slots, zero = self.words * 64 + 1, pack_percpu(U64, [0] * bpfsys.possible_cpus())
        i = 0
        while i < slots:                  # each run of slots to zero in one write
            end = i
            while end < slots and end not in kept:
                end += 1
            write_array(self.t["hits"], i, [zero] * (end - i))
            i = end + 1

