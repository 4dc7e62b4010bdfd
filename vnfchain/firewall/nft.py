"""Firewall rules as an nftables ruleset: the kernel's own matcher, used by the
tests as the correctness oracle for ``rules.first_match`` and the XDP program.

    text = ruleset(rules, default="drop", hook="forward", counters=True)
    subprocess.run(["nft", "-f", "-"], input=text, text=True, check=True)

gives one table ``inet vcfw`` with one base chain ``filter``; rule ``i`` becomes
one nft rule (or a few, see fragments below) commented ``rule i`` (so
``nft -j list`` maps counters back to rules), and with ``counters=True`` a last rule ``counter comment "default"``
counts what falls through to the chain policy.

Translation, field by field::

    family (addresses, icmp, icmpv6)  meta nfproto ipv4|ipv6
    src / dst                         ip saddr {..} / ip6 daddr {..}  (prefixes collapsed)
    proto                             meta l4proto N
    sport / dport                     th sport {80, 8000-8080}        (intervals merged)
    flags "syn,!ack"                  tcp flags & 0x12 == 0x2
    icmp_type                         icmp type N / icmpv6 type N
    iif                               iifname "eth0"
    ct                                ct state {new, established}
    allow / drop                      accept / drop
    goto LABEL                        meta mark set MARK accept       (see goto_marks)

Why these choices (and where nft's semantics and ours meet):

- ``meta nfproto`` is written out for every rule with a family, because in an
  ``inet`` chain ``meta l4proto 58`` or ``icmpv6 type`` alone would also match
  an IPv4 packet whose protocol field is 58; in our model ``proto: icmpv6``
  makes the rule IPv6-only (``Rule.family``) and ``proto: icmp`` IPv4-only.
- A goto is a branch of the chain graph, which nft cannot express; it becomes
  ``accept`` with a packet mark per label, so that a test can tell "goto LABEL"
  apart from "allow" (the mark is visible to later hooks of the same netns).
- Fragments: here nft and our model differ, and the translation makes nft
  follow ours. In our model a later (non-first) fragment has no ports, TCP
  flags or ICMP type (``Packet`` fields None), so a rule naming any of them
  cannot match it -- as iptables' ``-p tcp --dport`` behaves. nft, on kernel
  6.18, *does* match ``th dport``, ``tcp flags`` and ``icmp type`` against the
  first bytes of a later fragment's payload (observed by the oracle test with a
  bait header in a fragment at offset 24; the kernel's payload fast path reads
  at the transport offset without looking at the fragment offset). So a rule
  that reads transport fields is guarded: ``ip frag-off & 0x1fff == 0`` for
  IPv4, ``exthdr frag missing`` or ``frag frag-off 0`` for IPv6 -- a rule of
  either family becomes two or three adjacent, mutually exclusive nft rules
  with the same comment. ``meta l4proto`` matches every fragment, as ``proto``
  does in our model; a *first* fragment carries its transport header and
  matches ports in both. (Without conntrack in the netns nothing reassembles
  fragments before the hook, so the oracle sees them one by one.)
- For IPv6, ``meta l4proto`` is the transport protocol after extension headers;
  our ``Packet.proto`` is meant the same way.
- Conntrack: ``ct state`` is translated, but nft's conntrack differs from ours
  in details (TCP window tracking, ``invalid`` for out-of-window segments,
  ``related`` for ICMP errors), so the differential tests are stateless.
- An interface name containing ``"`` cannot be written in an nft string (the
  scanner has no escapes); such a rule raises ``ValueError``.

Hook: the tests use ``forward`` on a router between sender and receiver: a
packet's fate is visible at the receiver (accept: it arrives, drop: it does
not), the router's own stack never answers it, every destination in the
benchmarking range is reachable, and ``iifname`` is a real ingress interface,
which is where a chain's firewall sits. ``prerouting`` and ``input`` work too
(``hook=``); ``input`` would only see packets addressed to the router itself.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from .rules import Rule

TABLE = "vcfw"
CHAIN = "filter"
HOOKS = ("prerouting", "input", "forward", "output", "postrouting")
#: goto LABEL sets mark GOTO_MARK_BASE + n, n = 1, 2, ... in order of first appearance
GOTO_MARK_BASE = 0x7663_0000


def goto_marks(rules: Iterable[Rule], base: int = GOTO_MARK_BASE) -> dict[str, int]:
    """The packet mark each goto label gets: ``base + 1``, ``base + 2``, ... in
    the order labels first appear in ``rules``."""
    marks: dict[str, int] = {}
    for rule in rules:
        if rule.action == "goto" and rule.label not in marks:
            marks[rule.label] = base + len(marks) + 1
    return marks


def ruleset(rules: list[Rule], default: str = "drop", *, table: str = TABLE, chain: str = CHAIN,
            hook: str = "forward", priority: int = 0, counters: bool = False,
            marks: dict[str, int] | None = None, replace: bool = False) -> str:
    """The nft script (for ``nft -f -``) of ``rules`` with policy ``default``
    (allow or drop) in table ``inet <table>``, chain ``<chain>`` on ``hook``.

    ``counters`` adds a counter to every rule and a last counting rule for the
    default; ``marks`` maps goto labels to packet marks (``goto_marks``);
    ``replace`` makes the script delete an existing table of that name first,
    in the same transaction (so a reload is atomic)."""
    if default not in ("allow", "drop"):
        raise ValueError(f"default action '{default}' must be allow or drop")
    if hook not in HOOKS:
        raise ValueError(f"hook '{hook}' must be one of {', '.join(HOOKS)}")
    marks = goto_marks(rules) if marks is None else marks
    policy = "accept" if default == "allow" else "drop"
    lines = []
    if replace:
        lines += [f"add table inet {table}", f"delete table inet {table}"]
    lines += [f"table inet {table} {{", f"\tchain {chain} {{",
              f"\t\ttype filter hook {hook} priority {priority}; policy {policy};"]
    for i, rule in enumerate(rules):
        lines += [f"\t\t{line}" for line in rule_text(rule, i, counter=counters, marks=marks).splitlines()]
    if counters:
        lines.append('\t\tcounter comment "default"')
    lines += ["\t}", "}"]
    return "\n".join(lines) + "\n"


#: "this is not a later fragment", per family: the transport header is really there
FIRST_FRAGMENT_GUARDS = {
    4: ["ip frag-off & 0x1fff == 0"],
    6: ["exthdr frag missing", "frag frag-off 0"],
}


def rule_text(rule: Rule, index: int, *, counter: bool = False, marks: dict[str, int] | None = None) -> str:
    """Rule ``index`` as nft rules (one per line; several when it reads transport
    fields, see the fragment note above), each commented ``rule INDEX``."""
    matches = _matches(rule)
    reads_transport = rule.sport or rule.dport or rule.flags or rule.icmp_type is not None
    if not reads_transport:
        return _one_rule(rule, index, matches, counter, marks)
    lines = []
    for family in (4, 6) if rule.family is None else (rule.family,):
        for guard in FIRST_FRAGMENT_GUARDS[family]:
            head = [] if rule.family is not None else [f"meta nfproto ipv{family}"]
            # the guard right after the family/address matches, before any transport field
            at = sum(1 for m in matches if m.startswith(("meta nfproto", "ip ", "ip6 ")))
            lines.append(_one_rule(rule, index, head + matches[:at] + [guard] + matches[at:], counter, marks))
    return "\n".join(lines)


def _one_rule(rule: Rule, index: int, matches: list[str], counter: bool, marks: dict[str, int] | None) -> str:
    parts = list(matches)
    if counter:
        parts.append("counter")
    if rule.action == "allow":
        parts.append("accept")
    elif rule.action == "drop":
        parts.append("drop")
    else:
        mark = (goto_marks([rule]) if marks is None else marks).get(rule.label)
        if mark is None:
            raise ValueError(f"goto label '{rule.label}' of rule {index} has no mark")
        parts.append(f"meta mark set {mark:#x} accept")
    parts.append(f'comment "rule {index}"')
    return " ".join(parts)


def _matches(rule: Rule) -> list[str]:
    out = []
    family = rule.family
    if family is not None:
        out.append(f"meta nfproto ipv{family}")
    ip = "ip" if family == 4 else "ip6"
    if rule.src:
        out.append(f"{ip} saddr {_set(str(n) for n in _collapse(rule.src))}")
    if rule.dst:
        out.append(f"{ip} daddr {_set(str(n) for n in _collapse(rule.dst))}")
    if rule.proto is not None:
        out.append(f"meta l4proto {rule.proto}")
    for name, spec in (("sport", rule.sport), ("dport", rule.dport)):
        if spec:
            out.append(f"th {name} {_set(lo if lo == hi else f'{lo}-{hi}' for lo, hi in _merge(spec))}")
    if rule.flags:
        mask, value = rule.flags
        out.append(f"tcp flags & {mask:#x} == {value:#x}")
    if rule.icmp_type is not None:
        out.append(f"{'icmp' if rule.proto == 1 else 'icmpv6'} type {rule.icmp_type}")
    if rule.iif is not None:
        if '"' in rule.iif:
            raise ValueError(f"interface name {rule.iif!r} contains '\"', which nft cannot quote")
        out.append(f'iifname "{rule.iif}"')
    if rule.ct:
        out.append(f"ct state {_set(rule.ct)}")
    return out


def _set(items: Iterable) -> str:
    items = [str(i) for i in items]
    return items[0] if len(items) == 1 else "{ " + ", ".join(items) + " }"


def _collapse(networks):
    """nft refuses overlapping elements in one set: merge nested/adjacent prefixes."""
    return list(ipaddress.collapse_addresses(networks))


def _merge(intervals) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for lo, hi in sorted(intervals):
        if out and lo <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return [(lo, hi) for lo, hi in out]
