"""How the dpi function's app rules and alerts become map contents, counters
and events (the model and the trie logic are in l7.py)."""
from __future__ import annotations

import socket
import struct

from .. import bpfsys
from ..functions.base import MapSpec, headroom, replace_contents, write_array
from .l7 import (HTTP_SCAN, KINDS, MAX_RULES, METHODS, NAME_MAX, PATH_KIND, TRUNCATED, AppRule,
                 method_masks, method_token, rule_ids, trie_entries)

EVENT_RING_BYTES = 256 * 1024
EVENT = struct.Struct("<QII16s16sHHBBBx")       # struct <p>_event without its name
PROTO_NAMES = {6: "tcp", 17: "udp"}
APP_NAMES = {0: "signature", **{v: k for k, v in KINDS.items()}}


def map_specs(rules: list[AppRule], signatures: int) -> list[MapSpec]:
    return [
        MapSpec("names", "lpm_trie", headroom(len(trie_entries(rules)), 16), "reversed name or path -> rules"),
        MapSpec("methods", "hash", headroom(len(METHODS), 16), "HTTP method -> rules"),
        MapSpec("apps", "array", MAX_RULES, "app rules in order"),
        MapSpec("app_hits", "percpu_array", MAX_RULES, "packets per app rule"),
        MapSpec("sig_ids", "array", headroom(signatures, 16), "signature ids, for events"),
        MapSpec("events", "ringbuf", EVENT_RING_BYTES, "alert events"),
    ]


def template_vars(rules: list[AppRule]) -> dict:
    # whether there are rules, not how many: adding one stays a config change
    return {"l7": {"name_max": NAME_MAX, "http_scan": HTTP_SCAN, "on": int(bool(rules)),
                   "kinds": {**KINDS, "path": PATH_KIND}}}


def populate(tables, rules: list[AppRule], verdicts: list[int], signature_ids: list[int]) -> None:
    """``verdicts``: each rule's verdict as the kernel spells it."""
    key_bytes = 4 + 1 + NAME_MAX + 3
    with tables.open("names") as names:
        replace_contents(names, [((8 * len(data)).to_bytes(4, "little") + data.ljust(key_bytes - 4, b"\0"),
                                  mask.to_bytes(8, "little")) for data, mask in trie_entries(rules).items()])
    with tables.open("methods") as methods:
        replace_contents(methods, [(method_token(m).to_bytes(8, "little"), mask.to_bytes(8, "little"))
                                   for m, mask in method_masks(rules).items()])
    ids = rule_ids(rules)
    apps = [v.to_bytes(4, "little", signed=True) + i.to_bytes(4, "little") for v, i in zip(verdicts, ids)]
    with tables.open("apps") as table:
        write_array(table, 0, apps + [bytes(8)] * (MAX_RULES - len(apps)))
    with tables.open("app_hits") as table:
        write_array(table, 0, [bytes(8 * bpfsys.possible_cpus())] * MAX_RULES)
    with tables.open("sig_ids") as sig_ids:
        write_array(sig_ids, 0, [i.to_bytes(4, "little") for i in signature_ids]
                    + [bytes(4)] * (sig_ids.max_entries - len(signature_ids)))


def read_counters(maps, rules: list[AppRule]) -> dict[str, int]:
    out = {}
    with maps.open("app_hits") as hits:
        for i, rule_id in enumerate(rule_ids(rules)):
            n = sum(hits.sum_u64(i.to_bytes(4, "little")))
            if n:
                out[f"app{rule_id}_hits"] = n
    with maps.open("alerts") as alerts:
        sent, lost = alerts.sum_u64(bytes(4))
    return out | {"alerts_sent": sent, "alerts_lost": lost}


def decode_event(raw: bytes) -> dict:
    """One alert event as ``vnfchain events`` shows it."""
    ktime, rule_id, ifindex, saddr, daddr, sport, dport, version, proto, app = EVENT.unpack_from(raw)
    family = socket.AF_INET6 if version == 6 else socket.AF_INET
    size = 16 if version == 6 else 4
    name = raw[EVENT.size:EVENT.size + NAME_MAX + 1]
    truncated = TRUNCATED in name
    name = name.split(b"\0")[0].split(bytes([TRUNCATED]))[0][::-1].decode(errors="replace")
    return {
        "ktime_ns": ktime, "id": rule_id, "ifindex": ifindex, "app": APP_NAMES.get(app, str(app)),
        "proto": PROTO_NAMES.get(proto, str(proto)),
        "src": socket.inet_ntop(family, saddr[:size]), "sport": socket.ntohs(sport),
        "dst": socket.inet_ntop(family, daddr[:size]), "dport": socket.ntohs(dport),
        "name": ("…" + name if truncated else name) or None,
    }
