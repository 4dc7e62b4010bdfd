"""What the firewall's connection tracking accepts, defined once here and
rendered into the template (``fw_defines``), so the kernel and the tests read
the same table.

TCP is tracked per direction the way nf_conntrack's ``tcp_in_window`` does it
(simplified): each side's next sequence number, the furthest one the other side
allowed it (ack + window), its largest window (scaled by the factor the two SYNs
agreed on) and its largest ack. A segment outside those bounds is ``invalid``
and changes nothing; a RST must carry the exact next sequence number to close a
flow (RFC 5961). The counters below say why conntrack refused what it refused.

Flows live in two LRU tables (``TABLES``). A new flow goes into ``unconfirmed``
and is confirmed, moving to ``flows``, once its opener has shown that it got
the answer (TCP: it acks everything the answering side sent, which only who
received the SYN-ACK knows; UDP and ICMP echo: it sends again after the
answer). A server answers spoofed SYNs too, so the answer alone proves
nothing. A flood of new flows, spoofed or answered for the spoofer, thus
churns only ``unconfirmed``.
"""
from __future__ import annotations

from .rules import TCP_FLAGS, parse_flags

# nf_conntrack's tcp_valid_flags: the combinations a TCP stack sends. PSH, ECE
# and CWR may go with any of them and are left out of the lookup.
VALID_FLAG_SETS = ("syn", "syn,urg", "syn,ack", "rst", "rst,ack", "fin,ack", "fin,ack,urg", "ack", "ack,urg")
FLAGS_CHECKED = TCP_FLAGS["fin"] | TCP_FLAGS["syn"] | TCP_FLAGS["rst"] | TCP_FLAGS["ack"] | TCP_FLAGS["urg"]

# An ack may trail the data its receiver has sent by the sender's largest
# window, and never by less than this (nf_conntrack's MAXACKWINCONST): acks
# delayed or reordered behind a small window's worth of data.
MIN_ACK_WINDOW = 66000

# Per-firewall counters of conntrack's decisions (``ct_<name>`` in `vnfchain stats`).
EVENTS = {
    "bad_flags": "TCP flag combination no stack sends (SYN+FIN, no flags, FIN without ACK, ...): invalid",
    "bad_state": "TCP packet the flow's state does not allow (data before the SYN-ACK, a SYN on an open flow): invalid",
    "out_of_window": "TCP segment of a tracked flow outside its window (blind RST/FIN/data): invalid, flow unchanged",
    "rst_in_window": "RST inside the window but not at the next sequence number: passed for the endpoint "
                     "to challenge (RFC 5961), flow kept",
    "rst_closed": "flows closed by a RST at the exact next sequence number",
}


# The tables, in the order of their FW_TABLE_* numbers. After the events, the
# counters map holds for each table what went in and what conntrack took out
# (moved, closed, expired): the rest was pushed out by the LRU (evicted).
TABLES = ("flows", "unconfirmed")
TALLY = ("in", "out")


def tally_index(table: str, way: str) -> int:
    """Index of a table's in/out count in the counters map (after EVENTS)."""
    return len(EVENTS) + len(TALLY) * TABLES.index(table) + TALLY.index(way)


COUNTERS = len(EVENTS) + len(TALLY) * len(TABLES)


def valid_flag_mask() -> int:
    """Bit i set when TCP flags i (masked with FLAGS_CHECKED) are a valid combination."""
    mask = 0
    for text in VALID_FLAG_SETS:
        mask |= 1 << parse_flags(text)[1]
    return mask


def tcp_flags_valid(flags: int) -> bool:
    return bool(valid_flag_mask() >> (flags & FLAGS_CHECKED) & 1)


def c_defines() -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = [
        ("FW_TCP_FLAGS_CHECKED", FLAGS_CHECKED),
        ("FW_TCP_VALID_FLAGS", f"{valid_flag_mask():#x}ULL"),
        ("FW_MIN_ACK_WINDOW", MIN_ACK_WINDOW),
    ]
    out += [(f"FW_CTE_{name.upper()}", i) for i, name in enumerate(EVENTS)]
    out.append(("FW_CT_EVENTS", len(EVENTS)))
    out += [(f"FW_TABLE_{name.upper()}", i) for i, name in enumerate(TABLES)]
    out += [("FW_CT_TALLY", tally_index(TABLES[0], "in")), ("FW_CT_TALLY_STRIDE", len(TALLY)),
            ("FW_CT_TALLY_OUT", TALLY.index("out"))]
    return out
