"""Verdicts, counters and drop reasons: defined once here, generated into C.

A function body returns one of the verdicts below (or a branch label, encoded as
``VC_LABEL_BASE + label id``); the chain wrapper turns it into the next hop or an
XDP action and counts it. Every function has one row of per-CPU counters in the
chain's ``stats`` map, laid out as ``COUNTERS``, one counter per drop reason, then
one per ``UNPARSED`` reason (counted by the entry program, which has the last row).
"""
from __future__ import annotations

from dataclasses import dataclass

# What a function body can return (C constant VC_<NAME>).
VERDICTS: tuple[str, ...] = ("continue", "drop", "pass", "tx", "redirect")
LABEL_BASE = 16  # a returned value >= LABEL_BASE is a branch label

# Per-function counters, in row order (C constant VC_CTR_<NAME>).
COUNTERS: tuple[str, ...] = (
    "rx_packets", "rx_bytes",
    "continue", "branch", "drop", "pass", "tx", "redirect",
    "tail_call_miss",
)

# Why the entry's parser could not classify a frame (meta->unparsed, C constant
# VC_UNPARSED_<NAME> = position + 1; 0 means parsed). Functions that drop such a
# frame count it under the drop reason ``unparsed_<name>``; the entry counts every
# one it saw as ``unparsed_<name>``. Meanings, for users: see UNPARSED_HELP.
UNPARSED: tuple[str, ...] = (
    "vlan", "ip_header", "ip_length", "ext_headers", "source_route",
    "l4_header", "tiny_fragment", "fragment_overlap", "later_fragment",
)
UNPARSED_HELP: dict[str, str] = {
    "vlan": "more VLAN tags (802.1Q/802.1ad) than the parser walks, or a tag cut short",
    "ip_header": "IP header cut short, wrong version, or IPv4 IHL < 5",
    "ip_length": "IP length field shorter than the header or longer than the frame "
                 "(or an IPv6 jumbogram)",
    "ext_headers": "IPv6 extension headers (hop-by-hop, routing, fragment, destination "
                   "options) more than the parser walks, cut short, hop-by-hop not first, or "
                   "a fragment header behind destination options or a routing header",
    "source_route": "IPv4 LSRR/SSRR option or IPv6 routing header with segments left "
                    "(the kernel would drop or re-route it)",
    "l4_header": "TCP/UDP/ICMP header cut short or lying (TCP data offset < 5 or past "
                 "the datagram, UDP length)",
    "tiny_fragment": "first fragment too small to hold the whole transport header (RFC 1858)",
    "fragment_overlap": "TCP fragment at offset 8, rewriting the first fragment's header "
                        "(RFC 1858)",
    "later_fragment": "a fragment other than the first: no transport header",
}
MAX_VLAN_TAGS = 4        # VLAN tags walked; a deeper stack is unparsed (vlan)
MAX_EXT_HEADERS = 8      # IPv6 extension headers walked before ext_headers

# Drop reasons every function may use; function types add their own.
COMMON_REASONS: tuple[str, ...] = (("policy", "malformed", "redirect_failed", "exit")
                                   + tuple(f"unparsed_{u}" for u in UNPARSED))


@dataclass(frozen=True)
class CounterLayout:
    """Where each named counter lives in a stats row, for one chain."""

    reasons: tuple[str, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return (COUNTERS + tuple(f"drop_{r}" for r in self.reasons)
                + tuple(f"unparsed_{u}" for u in UNPARSED))

    @property
    def width(self) -> int:
        return len(self.names)

    @property
    def slots(self) -> int:
        """Counters per row in the kernel: a power of two, so that an index can be
        masked into range (the verifier accepts a mask where a compare gets lost)."""
        n = 1
        while n < self.width:
            n *= 2
        return n

    def c_defines(self) -> list[tuple[str, int]]:
        defs = [(f"VC_{v.upper()}", i) for i, v in enumerate(VERDICTS)]
        defs.append(("VC_LABEL_BASE", LABEL_BASE))
        defs += [(f"VC_CTR_{c.upper()}", i) for i, c in enumerate(COUNTERS)]
        defs.append(("VC_CTR_REASON_BASE", len(COUNTERS)))
        defs += [(f"VC_REASON_{r.upper()}", i) for i, r in enumerate(self.reasons)]
        defs.append(("VC_NREASONS", len(self.reasons)))
        defs.append(("VC_REASON_UNPARSED_BASE", self.reasons.index(f"unparsed_{UNPARSED[0]}") - 1))
        defs += [(f"VC_UNPARSED_{u.upper()}", i + 1) for i, u in enumerate(UNPARSED)]
        defs.append(("VC_CTR_UNPARSED_BASE", len(COUNTERS) + len(self.reasons) - 1))
        defs.append(("VC_MAX_VLAN_TAGS", MAX_VLAN_TAGS))
        defs.append(("VC_MAX_EXT_HEADERS", MAX_EXT_HEADERS))
        defs.append(("VC_NCOUNTERS", self.width))
        defs.append(("VC_ROW_SLOTS", self.slots))
        return defs


def all_reasons(type_reasons) -> tuple[str, ...]:
    """Common reasons first, then each type's own, without repeats."""
    out = list(COMMON_REASONS)
    for reasons in type_reasons:
        out += [r for r in reasons if r not in out]
    return tuple(out)
