"""How the dpi function's app rules and alerts become map contents, counters
and events (the model and the trie logic are in l7.py)."""
from __future__ import annotations

import socket

from ... import bpfsys
from ...contract import MapSpec, headroom, write_array
from ...dpi import l7
from ...dpi.l7 import (KINDS, MAX_RULES, PATH_KIND, TRUNCATED, UNREADABLE, AppRule, fails_closed, method_masks,
                       method_token, rule_ids, trie_entries)
from ...layout import S32, U32, U64, Layout, pack_percpu
from .layouts import ALERT_COUNT, APP, CLASSES_L7, EVENT, L7_BUF, L7_KEY, METHOD_RULES, UNUSED, VERDICTS

EVENT_RING_BYTES = 256 * 1024
PROTO_NAMES = {6: "tcp", 17: "udp"}
APP_NAMES = {0: "signature", **{v: k for k, v in KINDS.items()}}
UNREADABLE_SLOTS = 8     # per version: one per app kind (kind & 7)


def map_specs(rules: list[AppRule], sigs: int) -> list[MapSpec]:
    """``sigs``: signature entries of one version. Config maps hold two
    versions (the dpi function's ConfigWriter switches between them)."""
    return [
        MapSpec("names", "lpm_trie", headroom(2 * len(trie_entries(rules)), 16), L7_KEY, U64,
                "version and kind byte, reversed name or path -> rules"),
        MapSpec("methods", "hash", headroom(len(method_masks([])), 16), U64, METHOD_RULES,
                "HTTP method (or its start) -> rules, per version"),
        MapSpec("apps", "array", 2 * MAX_RULES, U32, APP, "per version: app rules in order"),
        MapSpec("app_hits", "percpu_hash", MAX_RULES, U32, U64, "packets per app rule id"),
        MapSpec("unreadable", "array", 2 * UNREADABLE_SLOTS, U32, S32,
                "per version and app: what an unreadable request gets"),
        MapSpec("l7_classes", "array", 1, U32, CLASSES_L7, "byte -> its classes for the parsers, and lowercased"),
        MapSpec("unreadable_counts", "percpu_array", len(UNREADABLE) + 1, U32, U64, "unreadable requests per cause"),
        MapSpec("l7_buf", "percpu_array", 1, U32, L7_BUF, "this packet's request as the parsers read it"),
        MapSpec("sig_ids", "array", 2 * sigs, U32, U32, "per version: signature ids, for counters and events"),
        MapSpec("alerts", "percpu_array", 1, U32, ALERT_COUNT, "alert events sent and lost"),
        MapSpec("events", "ringbuf", EVENT_RING_BYTES, None, None, "alert events"),
    ]


def structs() -> list[Layout]:
    """Layouts the template needs beside its maps': the events' record."""
    return [EVENT]


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
    names = maps["names"]
    for key in list(names.keys()):      # whatever this version held before
        if L7_KEY.unpack(key)["kind"] >> 7 == v:
            del names[key]
    for data, mask in trie_entries(rules).items():
        names[L7_KEY.pack({"prefixlen": 8 * len(data), "kind": data[0] | v << 7, "name": data[1:]})] = U64.pack(mask)
    methods = maps["methods"]
    for token, mask in method_masks(rules).items():
        key = U64.pack(method_token(token))
        both = list(METHOD_RULES.unpack((methods.lookup(key) or [METHOD_RULES.pack()])[0])["rules"])
        both[v] = mask
        methods[key] = METHOD_RULES.pack({"rules": both})
    apps = [APP.pack({"verdict": x, "id": i}) for x, i in zip(verdicts, rule_ids(rules))]
    unused = APP.pack({"verdict": UNUSED})
    write_array(maps["apps"], v * MAX_RULES, apps + [unused] * (MAX_RULES - len(apps)))
    write_array(maps["l7_classes"], 0, [CLASSES_L7.pack(l7.byte_classes())])     # the same for every version
    app_of = {kind: app for app, kind in KINDS.items()}
    # VC_DROP, or VC_CONTINUE (the alert verdict): matched as far as it was read
    policy = [VERDICTS["drop"] if kind in app_of and fails_closed(rules, app_of[kind], unreadable)
              else VERDICTS["alert"] for kind in range(UNREADABLE_SLOTS)]
    write_array(maps["unreadable"], v * UNREADABLE_SLOTS, [S32.pack(x) for x in policy])
    sig_ids = maps["sig_ids"]
    per = sig_ids.max_entries // 2
    write_array(sig_ids, v * per, [U32.pack(i) for i in signature_ids] + [U32.pack(0)] * (per - len(signature_ids)))


def keep_counters(hits, ids: list[int]) -> None:
    """Make a per-CPU hash of counters by id hold exactly ``ids``: the counts of
    ids it has are kept, new ids start at 0, others go (first, to make room)."""
    wanted = {U32.pack(i) for i in ids}
    for key in list(hits.keys()):
        if key not in wanted:
            del hits[key]
    zero = pack_percpu(U64, [0] * bpfsys.possible_cpus())
    for key in sorted(wanted):
        if hits.lookup(key) is None:
            hits[key] = zero


def read_counters(maps, rules: list[AppRule]) -> dict[str, int]:
    out = {}
    with maps.open("app_hits") as hits:
        for rule_id in rule_ids(rules):
            n = sum(hits.sum_u64(U32.pack(rule_id)))
            if n:
                out[f"app{rule_id}_hits"] = n
    with maps.open("unreadable_counts") as unread:
        for i, cause in enumerate(UNREADABLE):
            if n := sum(unread.sum_u64(U32.pack(i + 1))):
                out[f"unreadable_{cause}"] = n
    with maps.open("alerts") as alerts:
        sent, lost = alerts.sum_u64(U32.pack(0))
    return out | {"alerts_sent": sent, "alerts_lost": lost}


def decode_event(raw: bytes) -> dict:
    """One alert event as ``vnfchain events`` shows it."""
    ev = EVENT.unpack(raw[:EVENT.size])
    family = socket.AF_INET6 if ev["ip_version"] == 6 else socket.AF_INET
    size = 16 if ev["ip_version"] == 6 else 4
    name = ev["name"]
    truncated = TRUNCATED in name
    name = name.split(b"\0")[0].split(bytes([TRUNCATED]))[0][::-1].decode(errors="replace")
    return {
        "ktime_ns": ev["ktime_ns"], "id": ev["id"], "ifindex": ev["ifindex"],
        "app": APP_NAMES.get(ev["app"], str(ev["app"])), "proto": PROTO_NAMES.get(ev["proto"], str(ev["proto"])),
        "src": socket.inet_ntop(family, ev["saddr"][:size]), "sport": ev["sport"],
        "dst": socket.inet_ntop(family, ev["daddr"][:size]), "dport": ev["dport"],
        "name": ("…" + name if truncated else name) or None,
    }
