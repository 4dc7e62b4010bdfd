"""How the dpi function's app rules and alerts become map contents, counters
and events (the model and the trie logic are in l7.py)."""
from __future__ import annotations

import socket
import struct

from .. import bpfsys
from ..functions.base import MapSpec, headroom, write_array
from . import l7
from .l7 import (KINDS, MAX_RULES, NAME_MAX, PATH_KIND, TRUNCATED, UNREADABLE, AppRule, fails_closed,
                 method_masks, method_token, rule_ids, trie_entries)

EVENT_RING_BYTES = 256 * 1024
EVENT = struct.Struct("<QII16s16sHHBBBx")       # struct <p>_event without its name
PROTO_NAMES = {6: "tcp", 17: "udp"}
APP_NAMES = {0: "signature", **{v: k for k, v in KINDS.items()}}
UNREADABLE_SLOTS = 8     # per version: one per app kind (kind & 7)


def map_specs(rules: list[AppRule], sigs: int) -> list[MapSpec]:
    """``sigs``: signature entries of one version. Config maps hold two
    versions (the dpi function's ConfigWriter switches between them)."""
    return [
        MapSpec("names", "lpm_trie", headroom(2 * len(trie_entries(rules)), 16),
                "version and kind byte, reversed name or path -> rules"),
        MapSpec("methods", "hash", headroom(len(method_masks([])), 16),
                "HTTP method (or its start) -> rules, per version"),
        MapSpec("apps", "array", 2 * MAX_RULES, "per version: app rules in order"),
        MapSpec("app_hits", "percpu_hash", MAX_RULES, "packets per app rule id"),
        MapSpec("unreadable", "array", 2 * UNREADABLE_SLOTS, "per version and app: what an unreadable request gets"),
        MapSpec("unreadable_counts", "percpu_array", len(UNREADABLE) + 1, "unreadable requests per cause"),
        MapSpec("l7_classes", "array", 1, "byte -> its classes for the parsers, and lowercased"),
        MapSpec("sig_ids", "array", 2 * sigs, "per version: signature ids, for counters and events"),
        MapSpec("events", "ringbuf", EVENT_RING_BYTES, "alert events"),
    ]


def template_vars(rules: list[AppRule]) -> dict:
    # whether there are rules, not how many: adding one stays a config change
    limits = {name: getattr(l7, name) for name in (
        "NAME_MAX", "HTTP_LEADING", "HTTP_GAP", "SCHEME_MAX", "HOST_MAX", "HTTP_SCAN", "SNI_NAMES",
        "DNS_MAX_LABELS")}
    return {"l7": {"limits": limits, "on": int(bool(rules)), "kinds": {**KINDS, "path": PATH_KIND},
                   "causes": {cause: i + 1 for i, cause in enumerate(UNREADABLE)},
                   "classes": {name: 1 << i for i, name in enumerate(l7.BYTE_CLASSES)},
                   "connect": method_token(b"CONNECT ")}}


_POPULATED = ("names", "methods", "apps", "app_hits", "sig_ids", "unreadable", "l7_classes")


def open_maps(tables, stack) -> dict:
    return {n: stack.enter_context(tables.open(n)) for n in _POPULATED}


def write_version(maps: dict, v: int, rules: list[AppRule], verdicts: list[int], signature_ids: list[int],
                  unreadable: dict[str, str]) -> None:
    """Fill version v (the idle one) of the app rule maps. ``verdicts``: each
    rule's verdict as the kernel spells it; ``unreadable``: the policy per app."""
    from ..functions.dpi import UNUSED, VERDICTS
    names = maps["names"]
    for key in list(names.keys()):      # whatever this version held before
        if key[4] >> 7 == v:
            del names[key]
    key_bytes = 4 + 1 + NAME_MAX + 3
    for data, mask in trie_entries(rules).items():
        data = bytes([data[0] | v << 7]) + data[1:]
        names[(8 * len(data)).to_bytes(4, "little") + data.ljust(key_bytes - 4, b"\0")] = mask.to_bytes(8, "little")
    methods = maps["methods"]
    for token, mask in method_masks(rules).items():
        key = method_token(token).to_bytes(8, "little")
        both = list(struct.unpack("<2Q", (methods.lookup(key) or [bytes(16)])[0]))
        both[v] = mask
        methods[key] = struct.pack("<2Q", *both)
    apps = [x.to_bytes(4, "little", signed=True) + i.to_bytes(4, "little") for x, i in zip(verdicts, rule_ids(rules))]
    unused = UNUSED.to_bytes(4, "little", signed=True) + bytes(4)
    write_array(maps["apps"], v * MAX_RULES, apps + [unused] * (MAX_RULES - len(apps)))
    write_array(maps["l7_classes"], 0, [l7.byte_classes()])     # the same for every version
    app_of = {kind: app for app, kind in KINDS.items()}
    # VC_DROP, or VC_CONTINUE (the alert verdict): matched as far as it was read
    policy = [VERDICTS["drop"] if kind in app_of and fails_closed(rules, app_of[kind], unreadable)
              else VERDICTS["alert"] for kind in range(UNREADABLE_SLOTS)]
    write_array(maps["unreadable"], v * UNREADABLE_SLOTS, [x.to_bytes(4, "little", signed=True) for x in policy])
    sig_ids = maps["sig_ids"]
    per = sig_ids.max_entries // 2
    write_array(sig_ids, v * per, [i.to_bytes(4, "little") for i in signature_ids]
                + [bytes(4)] * (per - len(signature_ids)))


def keep_counters(hits, ids: list[int]) -> None:
    """Make a per-CPU hash of counters by id hold exactly ``ids``: the counts of
    ids it has are kept, new ids start at 0, others go (first, to make room)."""
    wanted = {i.to_bytes(4, "little") for i in ids}
    for key in list(hits.keys()):
        if key not in wanted:
            del hits[key]
    zero = bytes(8 * bpfsys.possible_cpus())
    for key in sorted(wanted):
        if hits.lookup(key) is None:
            hits[key] = zero


def read_counters(maps, rules: list[AppRule]) -> dict[str, int]:
    out = {}
    with maps.open("app_hits") as hits:
        for rule_id in rule_ids(rules):
            n = sum(hits.sum_u64(rule_id.to_bytes(4, "little")))
            if n:
                out[f"app{rule_id}_hits"] = n
    with maps.open("unreadable_counts") as unread:
        for i, cause in enumerate(UNREADABLE):
            if n := sum(unread.sum_u64((i + 1).to_bytes(4, "little"))):
                out[f"unreadable_{cause}"] = n
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
