"""The dpi function's map layouts (vnfchain/layout.py), and the verdict
spellings both halves of the function write into its maps: the signatures'
(__init__.py) and the app rules' (l7_maps.py). Sizes that depend on the config
(the DFA table, the scan's events) are functions of it."""
from __future__ import annotations

from ...chain.verdicts import VERDICTS as CHAIN_VERDICTS
from ...dpi.l7 import NAME_MAX
from ...layout import BE16, BE32, CHAR, S32, U8, U16, U32, U64, Member, Struct

VERDICTS = {action: CHAIN_VERDICTS.index(verdict)
            for action, verdict in (("drop", "drop"), ("pass", "pass"), ("alert", "continue"))}
UNUSED = -1         # verdict of an unused sigs/apps slot, which the data path ignores

CFG = Struct("cfg", "which version of the config maps packets use", [
    Member("active", U32),
    Member("initialized", U32),
    Member("digest", U64, "of the config each version holds (user space only)", count=2),
    Member("scratch_id", U64, "the scratch map progress entries belong to (user space only)"),
])
# the row's size is data, not a constant: a new content set stays a map update
CLASSES = Struct("classes", "byte -> its byte class x 4 (the class's byte offset in a row), and the row's size", [
    Member("of", U16, count=256),
    Member("row_bytes", U32),
    Member("pad", U32),
])
HEAD = Struct("head", "the run of matches entries of a FOUND state", [
    Member("first", U32),
    Member("count", U32),
])
MATCH = Struct("match", "a content ending in a state: its signature, its progress bit, and the payload positions "
                        "where its last byte may lie (offset/depth/max_scan)", [
    Member("sig", U32),
    Member("bit", U8),
    Member("pad", U8),
    Member("first_end", U16),
    Member("last_end", U16),
    Member("pad2", U16),
])
SIG = Struct("sig", "a signature", [
    Member("contents", U64, "one bit per content: all must be seen"),
    Member("verdict", S32, "VC_DROP, VC_PASS, VC_CONTINUE (alert), VC_LABEL(id) or UNUSED"),
    Member("proto", U8, "0: any"),
    Member("pad", U8),
    Member("dport", BE16, "0: any"),
])
PROGRESS = Struct("progress", "contents of a signature seen in packet generation gen", [
    Member("gen", U64),
    Member("seen", U64),
])


def table_layout(entries: int) -> Struct:
    # chars: BCC emits code per element of any other array in a map value,
    # which takes it minutes for a few MiB
    return Struct("table", "the DFA table in one map value: at byte offset (row start + class x 4), the next "
                           "entry (u32)", [Member("next", CHAR, count=entries * 4)])


def scratch_layout(events: int) -> Struct:
    """Kept in memory so that every path through the examining loop's body
    meets the verifier in the same register state."""
    return Struct("scratch", "per CPU: this packet's FOUND events and the state of the loop that examines them", [
        Member("gen", U64),
        Member("events", U32),
        Member("at", U32, "next event to examine"),
        Member("cur", U32, "matches entries of the current event"),
        Member("end", U32),
        Member("pos", U32, "its payload position"),
        Member("best", U32, "deciding signature so far"),
        Member("ver", U32, "config version of this packet"),
        Member("pad", U32),
        Member("event", U64, "position << 32 | entry", count=events),
    ])


# -- app rules (l7_maps.py) ----------------------------------------------------------

L7_KEY = Struct("l7_key", "trie key: a kind byte (its top bit: the config version), then a name reversed and "
                          "terminated (or a path)", [
    Member("prefixlen", U32),
    Member("kind", U8),
    Member("name", U8, "name, terminator, padding to a multiple of 4", count=NAME_MAX + 3),
])
SPAN = Struct("vc_l7_span", "where a name lies in the packet", [
    Member("off", U32),
    Member("len", U32),
], shared=True)
REQ = Struct("vc_l7_req", "what the parsers read of a request (vc_l7.h), and their scratch", [
    Member("name", SPAN, "http: the first Host header's host; tls: the SNI; dns: see vc_l7_dns_query"),
    Member("target", SPAN, "http: the host of an absolute- or authority-form target (len 0: none)"),
    Member("path", SPAN, "http: the target's path, at most VC_L7_NAME_MAX bytes"),
    Member("token", U64, "http: the method and a space, little endian (\"GET \" -> 0x20544547)"),
    Member("hosts", U64, "http: all ones once a Host header line was seen"),
    Member("dup", U64, "http: not 0 if there are two"),
    Member("folded", U64, "http: not 0 if a line is folded, or a Host has blanks before its colon"),
    Member("cause", U32, "VC_L7_<CAUSE>, or 0"),
    Member("slash", U32, "http: the path is \"/\" and then path (an absolute-form target without one)"),
    *[Member(name, U32, "parser scratch")
      for name in ("at", "mark", "cut", "none", "rest", "start", "end", "authority", "host_at", "ended", "userinfo")],
    Member("pad", U32),
], shared=True)
CLASSES_L7 = Struct("vc_l7_classes", "the byte classes the parsers test (VC_L7_C_* bits), and each byte lowercased "
                                     "(vnfchain/dpi/l7.py byte_classes)", [
    Member("of", U16, count=256),
    Member("lower", U8, count=256),
], shared=True)
L7_BUF = Struct("l7_buf", "per-CPU scratch of the app parsers (too big for the stack)", [
    Member("key", L7_KEY, "the key being built for this packet"),
    Member("req", REQ, "what the parsers read"),
    Member("alert_sig", U32, "1 + index of a signature that alerted, see note_alert"),
    Member("ver", U32, "this packet's config version"),
    Member("app", U32, "the kind of application the packet starts, or 0 (see vc_l7_req)"),
    Member("pad", U32),
])
METHOD_RULES = Struct("method_rules", "an HTTP method's rules, per version", [
    Member("rules", U64, count=2),
])
APP = Struct("app", "an app rule", [
    Member("verdict", S32, "VC_DROP, VC_PASS, VC_CONTINUE (alert), VC_LABEL(id) or UNUSED"),
    Member("id", U32),
])
EVENT = Struct("event", "one alert, as `vnfchain events` reads it", [
    Member("ktime_ns", U64, "CLOCK_MONOTONIC"),
    Member("id", U32, "signature or app rule id"),
    Member("ifindex", U32),
    Member("saddr", BE32, count=4),
    Member("daddr", BE32, count=4),
    Member("sport", BE16),
    Member("dport", BE16),
    Member("ip_version", U8),
    Member("proto", U8),
    Member("app", U8, "0 for a payload signature, else its kind"),
    Member("pad", U8),
    Member("name", U8, "the name matched, reversed, as in the trie key", count=NAME_MAX + 1),
    Member("pad2", U8, count=7),
])
ALERT_COUNT = Struct("alert_count", "alerts sent", [
    Member("sent", U64),
    Member("lost", U64, "the ring was full: nobody reads it, or not fast enough"),
])
