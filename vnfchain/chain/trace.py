"""Trace: one packet through a running chain, with the path it took.

The packet runs through the chain's own programs with BPF_PROG_TEST_RUN, in
the namespace of the interface it is said to arrive on (so FIB lookups see
what real traffic sees). The path is read from the per-function counters
before and after, so live traffic arriving at the same moment can blur it;
``interference`` says when that happened.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import SpecError
from .deployment import Deployment
from .record import Attachment
from .render import ENTRY

VERDICT_COUNTERS = ("continue", "branch", "drop", "pass", "tx", "redirect", "tail_call_miss")


@dataclass(frozen=True)
class Step:
    function: str
    type: str
    verdict: str        # continue, branch, drop, pass, tx, redirect, tail_call_miss
    reason: str = ""    # drop reason, for drops


@dataclass(frozen=True)
class Trace:
    packet_in: bytes
    packet_out: bytes
    action: str
    duration_ns: int
    steps: tuple[Step, ...]
    interference: bool   # other packets were counted during the trace


def build_packet(expression: str):
    """A scapy packet from an expression such as "Ether()/IP(dst='198.18.0.1')/TCP()"."""
    import scapy.all as scapy_all
    names = {k: v for k, v in vars(scapy_all).items() if not k.startswith("_")}
    try:
        packet = eval(expression, {"__builtins__": {}}, names)  # noqa: S307 - the user's own CLI input
    except Exception as exc:
        raise SpecError(f"cannot build the packet from '{expression}': {exc}; write scapy layers, "
                        f"e.g. \"Ether()/IP(dst='198.18.0.100')/TCP(dport=80)\"") from None
    if not hasattr(packet, "build"):
        raise SpecError(f"'{expression}' is not a packet; write scapy layers, e.g. Ether()/IP()/TCP()")
    from ..testrun import frame_bytes
    frame_bytes(packet)   # fixes unset MAC addresses so that building never sends ARP
    return packet


def trace(dep: Deployment, packet, interface: str | None = None) -> Trace:
    attachment = _arrival(dep, interface)
    before = dep.stats()
    result = dep.run(packet, ingress_ifindex=attachment.ifindex if attachment else None,
                     netns=attachment.netns if attachment else None)
    after = dep.stats()
    steps = []
    for f in dep.record.functions:
        delta = {k: after[f.name].get(k, 0) - before[f.name].get(k, 0) for k in after[f.name]}
        if delta.get("rx_packets", 0) <= 0:
            continue
        verdict = next((v for v in VERDICT_COUNTERS if delta.get(v, 0) > 0), "?")
        reason = next((k[len("drop_"):] for k, v in delta.items() if k.startswith("drop_") and v > 0), "")
        steps.append(Step(f.name, f.type, verdict, reason))
    seen = after[ENTRY]["rx_packets"] - before[ENTRY]["rx_packets"]
    return Trace(bytes(packet), result.data, result.action, result.duration_ns, tuple(steps),
                 interference=seen != 1)


def _arrival(dep: Deployment, interface: str | None) -> Attachment | None:
    attachments = dep.record.attachments
    if interface is None:
        return attachments[0] if attachments else None
    for a in attachments:
        if interface in (a.interface, f"{a.interface}@{a.netns}"):
            return a
    names = ", ".join(a.where for a in attachments) or "none"
    raise SpecError(f"chain '{dep.name}' is not attached to '{interface}'; its interfaces: {names}")


def differences(before: bytes, after: bytes) -> list[str]:
    """Header fields that differ between two Ethernet frames, as "IP.ttl: 64 -> 63"."""
    from scapy.layers.l2 import Ether
    a, b = Ether(before), Ether(after)
    out = []
    while a and b and type(a) is type(b):
        for field in a.fields_desc:
            old, new = a.getfieldval(field.name), b.getfieldval(field.name)
            if old != new:
                out.append(f"{a.name}.{field.name}: {field.i2repr(a, old)} -> {field.i2repr(b, new)}")
        a, b = a.payload, b.payload
        if not a.fields_desc or not b.fields_desc:
            break
    if len(before) != len(after):
        out.append(f"length: {len(before)} -> {len(after)}")
    return out
