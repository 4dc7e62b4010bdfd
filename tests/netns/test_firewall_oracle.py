"""The firewall's correctness oracle: the kernel's own nftables.

A random ruleset (1 to 1,000 rules) is translated by ``vnfchain.firewall.nft``
and loaded on the forward hook of a router; a batch of random packets, each
tagged by its IP id, crosses it; what reaches the receiver (and the per-rule
nft counters) must be what ``rules.first_match`` and the compiled classifier
(``lbvs``) say, packet by packet::

    snd:s0 ── fw-in0:fw:fw-out ── r0:rcv        (fw: ip_forward, nft table inet vcfw)
    snd:s1 ── fw-in1:fw

Verdicts seen at the receiver: absent = drop, arrived = allow, arrived with
DSCP n = goto to the n-th label (goto sets a packet mark, a postrouting chain
turns the mark into a DSCP value the receiver can read).

Deliberate limits, so that the two sides judge the same packet:
- IPv4 packets only (test traffic stays in 198.18.0.0/15, RFC 2544);
  rulesets still contain IPv6 rules, which IPv4 packets must never match.
  IPv6 packets are covered against ``first_match`` in tests/unit/test_firewall_rules.py.
- Stateless: no ``ct`` rules. nft's conntrack decides ``new``/``established``/
  ``invalid`` by its own TCP tracking, which ours does not copy; and conntrack
  would also reassemble fragments before the hook.
- Fragments travel one by one (no conntrack, so no defragmentation): a later
  fragment carries a bait transport header in its payload, which neither side
  may read as ports, flags or ICMP type.
"""
from __future__ import annotations

import collections
import os
import shutil
import socket
import struct
import time

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.firewall_oracle import (
    LABELS,
    RandomPick,
    Wire,
    describe,
    nft_counters,
    packet_lists,
    random_packets,
    random_rules,
    rule_lists,
    verdict,
)
from tests.frames import pseudo_header, with_checksum
from tests.testbed_fixtures import bed_name
from vnfchain.firewall import nft
from vnfchain.firewall.lbvs import compile_rules
from vnfchain.firewall.rules import Packet, Rule, first_match
from vnfchain.testbed import Testbed, build, load_topology
from vnfchain.testbed.netlink import socket_in

pytestmark = [pytest.mark.root, pytest.mark.netns]

IFACES = ("fw-in0", "fw-in1")
SENDER_IF = {"fw-in0": "s0", "fw-in1": "s1"}
RECEIVER = "198.19.255.10"
TOPOLOGY = {
    "name": "fwo",
    "description": "sender -- nft router -- receiver, for the firewall oracle",
    "hosts": {
        "snd": {},
        "fw": {
            "sysctls": {"net.ipv4.ip_forward": 1, "net.ipv4.conf.all.rp_filter": 0,
                        "net.ipv4.conf.default.rp_filter": 0, "net.ipv4.conf.fw-in0.rp_filter": 0,
                        "net.ipv4.conf.fw-in1.rp_filter": 0},
            "routes": [{"dst": "198.18.0.0/15", "via": RECEIVER}],
        },
        "rcv": {},
    },
    # every address of the bed lies in tests.firewall_oracle.RESERVED, which packets never use;
    # no GRO: it would merge the TCP packets of a batch
    "links": [
        {"a": {"host": "snd", "interface": "s0", "addresses": ["198.19.255.1/30"]},
         "b": {"host": "fw", "interface": "fw-in0", "addresses": ["198.19.255.2/30"]}, "gro": False},
        {"a": {"host": "snd", "interface": "s1", "addresses": ["198.19.255.5/30"]},
         "b": {"host": "fw", "interface": "fw-in1", "addresses": ["198.19.255.6/30"]}, "gro": False},
        {"a": {"host": "fw", "interface": "fw-out", "addresses": ["198.19.255.9/30"]},
         "b": {"host": "rcv", "interface": "r0", "addresses": [RECEIVER + "/30"]}, "gro": False},
    ],
}
ETH_P_IP = 0x0800
PACKET_OUTGOING = 4
SO_RCVBUFFORCE = 33   # Linux; the socket module does not name it
# what a later fragment carries where a transport header would be: an echo request
# (ICMP), ports 2128 -> 22 (TCP, UDP), SYN (TCP); a matcher that reads it is caught
BAIT = bytes.fromhex("0850001600000001000000005002ffff00000000") + b"later-fragment.."


class OracleBed:
    """The router bed, its packet sockets and the nft table on its forward hook."""

    def __init__(self, tb: Testbed):
        self.tb = tb
        self.tx: dict[str, socket.socket] = {}
        self.rx: socket.socket | None = None

    def open(self) -> OracleBed:
        tb = self.tb
        self.fw_mac = {ifname: tb.mac("fw", ifname) for ifname in IFACES}
        self.snd_mac = {ifname: tb.mac("snd", SENDER_IF[ifname]) for ifname in IFACES}
        # a permanent neighbour: no packet of a batch waits for (or is lost to) ARP
        tb.exec("fw", ["ip", "neigh", "replace", RECEIVER, "lladdr", tb.mac("rcv", "r0"), "dev", "fw-out",
                       "nud", "permanent"], check=True)
        for ifname in IFACES:
            sock = socket_in(tb.netns("snd"), socket.AF_PACKET, socket.SOCK_RAW, 0)
            sock.bind((SENDER_IF[ifname], 0))
            self.tx[ifname] = sock
        self.rx = socket_in(tb.netns("rcv"), socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IP))
        self.rx.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 32 << 20)
        self.rx.bind(("r0", ETH_P_IP))
        return self

    def close(self) -> None:
        for sock in (*self.tx.values(), self.rx):
            if sock is not None:
                sock.close()

    def nft(self, script: str, *args: str) -> str:
        proc = self.tb.exec("fw", ["nft", *args, "-f", "-"], input=script)
        if proc.returncode != 0:
            raise AssertionError(f"nft rejected the ruleset: {proc.stderr.strip()}\n{script[:3000]}")
        return proc.stdout

    def load(self, rules: list[Rule], default: str) -> None:
        """Replace the table atomically: the translated chain plus a postrouting
        chain that writes each goto label's mark into the DSCP field."""
        marks = nft.goto_marks(rules)
        script = nft.ruleset(rules, default, counters=True, replace=True, marks=marks)
        script += (f"table inet {nft.TABLE} {{\n\tchain mark_to_dscp {{\n"
                   "\t\ttype filter hook postrouting priority 0; policy accept;\n")
        for label, mark in marks.items():
            script += f"\t\tmeta mark {mark:#x} ip dscp set {LABELS.index(label) + 1}\n"
        script += "\t}\n}\n"
        self.nft(script)

    def counters(self) -> dict[str, int]:
        """Packets counted per rule comment ("rule 12", "default")."""
        proc = self.tb.exec("fw", ["nft", "-j", "list", "chain", "inet", nft.TABLE, nft.CHAIN], check=True)
        return nft_counters(proc.stdout)

    def run(self, wires: list[Wire], accepting: set[str]) -> tuple[dict[int, str], dict[str, int]]:
        """Send ``wires`` (packet i gets IP id i + 1); the verdict the receiver saw
        per packet index, and the nft counters. ``accepting``: the counter names
        (``rule 3``, ``default``) whose packets go through, i.e. how many to wait for."""
        assert len(wires) < 65535
        self._drain()
        for i, wire in enumerate(wires):
            self.tx[wire.packet.iif].send(frame(wire, i + 1, self.snd_mac[wire.packet.iif],
                                                self.fw_mac[wire.packet.iif]))
        counters = self._wait_counted(len(wires))
        seen = self._receive(wires, sum(n for name, n in counters.items() if name in accepting))
        return {i: seen.get(i + 1, "drop") for i in range(len(wires))}, counters

    def _drain(self) -> None:
        self.rx.setblocking(False)
        try:
            while True:
                self.rx.recv(65536)
        except BlockingIOError:
            pass
        finally:
            self.rx.setblocking(True)

    def _wait_counted(self, sent: int) -> dict[str, int]:
        deadline = time.monotonic() + 5
        while True:
            counters = self.counters()
            if sum(counters.values()) >= sent or time.monotonic() > deadline:
                assert sum(counters.values()) == sent, (
                    f"nft counted {sum(counters.values())} of {sent} packets: the router lost some "
                    "before its forward hook (routing, rp_filter, backlog)")
                return counters
            time.sleep(0.02)

    def _receive(self, wires: list[Wire], expected: int) -> dict[int, str]:
        """IP id -> verdict of what arrives: until ``expected`` packets came and a
        short quiet spell showed nothing else follows, or a timeout."""
        seen: dict[int, str] = {}
        stray = []
        deadline = time.monotonic() + 3
        while (left := deadline - time.monotonic()) > 0:
            self.rx.settimeout(0.05 if len(seen) >= expected else left)
            try:
                data, addr = self.rx.recvfrom(65536)
            except TimeoutError:
                break
            if addr[2] == PACKET_OUTGOING:
                continue
            ident = int.from_bytes(data[18:20], "big")
            wire = wires[ident - 1] if 1 <= ident <= len(wires) else None
            if wire is None or data[26:34] != socket.inet_aton(wire.packet.src) + socket.inet_aton(wire.packet.dst):
                stray.append(data[14:34].hex())   # e.g. an ICMP error the router made: not ours
                continue
            assert ident not in seen, f"packet {ident - 1} ({wire}) arrived twice"
            dscp = data[15] >> 2
            seen[ident] = "allow" if dscp == 0 else f"goto:{LABELS[dscp - 1]}"
        assert not stray, f"the receiver got IP packets that were not sent: {stray[:3]}"
        return seen


def frame(wire: Wire, ident: int, src_mac: str, dst_mac: str) -> bytes:
    """The Ethernet frame of ``wire``: the packet its fields describe, IP id
    ``ident``. Built by hand (scapy takes ~1.4 ms a packet); equal to
    ``scapy_frame``, as test_frames_are_what_scapy_builds checks."""
    p = wire.packet
    src, dst = socket.inet_aton(p.src), socket.inet_aton(p.dst)
    payload = b"vnfchain-oracle-%05d" % ident
    frag = 0x2000 if wire.frag == "first" else 0                  # MF, offset 0
    if wire.frag == "later":
        frag = 3 | (0x2000 if ident % 2 else 0)                   # a middle or the last fragment
        l4 = BAIT
    elif p.proto == 6:
        l4 = struct.pack("!HHIIBBHHH", p.sport, p.dport, ident, 0, 5 << 4, p.tcp_flags, 8192, 0, 0) + payload
        l4 = with_checksum(l4, 16, pseudo_header(src, dst, 6, len(l4)))
    elif p.proto == 17:
        l4 = struct.pack("!HHHH", p.sport, p.dport, 8 + len(payload), 0) + payload
        l4 = with_checksum(l4, 6, pseudo_header(src, dst, 17, len(l4)), udp=True)
    elif p.proto == 1:
        l4 = with_checksum(struct.pack("!BBHI", p.icmp_type, 0, 0, 0) + payload, 2)
    else:
        l4 = payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), ident, frag, 64, p.proto, 0, src, dst)
    ip = with_checksum(ip, 10)
    return bytes.fromhex(dst_mac.replace(":", "")) + bytes.fromhex(src_mac.replace(":", "")) + b"\x08\x00" + ip + l4


def scapy_frame(wire: Wire, ident: int, src_mac: str, dst_mac: str) -> bytes:
    """``frame`` spelled with scapy: the reference it is tested against."""
    from scapy.layers.inet import ICMP, IP, TCP, UDP
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw

    p = wire.packet
    ip = IP(src=p.src, dst=p.dst, id=ident, ttl=64, proto=p.proto)
    payload = Raw(b"vnfchain-oracle-%05d" % ident)
    if wire.frag == "later":
        ip.frag, ip.flags = 3, ("MF" if ident % 2 else 0)
        l4 = Raw(BAIT)
    elif p.proto == 6:
        l4 = TCP(sport=p.sport, dport=p.dport, flags=p.tcp_flags, seq=ident) / payload
    elif p.proto == 17:
        l4 = UDP(sport=p.sport, dport=p.dport) / payload
    elif p.proto == 1:
        l4 = ICMP(type=p.icmp_type, code=0) / payload
    else:
        l4 = payload
    if wire.frag == "first":
        ip.flags = "MF"
    return bytes(Ether(src=src_mac, dst=dst_mac) / ip / l4)


@pytest.fixture(scope="module")
def oracle_bed():
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    if shutil.which("nft") is None:
        pytest.skip("nft is missing: install the Debian package nftables (scripts/setup.sh does)")
    name = bed_name("fwo")
    build.down(name)  # a bed of ours left by a killed earlier run with the same pid
    tb = Testbed.up(load_topology(TOPOLOGY), name=name)
    bed = OracleBed(tb)
    try:
        yield bed.open()
    finally:
        bed.close()
        tb.down()


def check(bed: OracleBed, rules: list[Rule], default: str, wires: list[Wire]) -> None:
    """nft, first_match and the compiled classifier agree on every packet of ``wires``."""
    classifier = compile_rules(rules)
    expected_index = [first_match(rules, w.packet) for w in wires]
    for wire, index in zip(wires, expected_index):
        assert classifier.match(wire.packet) == index, (
            f"{wire}: classifier says {describe(rules, classifier.match(wire.packet))}, "
            f"first_match says {describe(rules, index)}")
    bed.load(rules, default)
    accepting = {f"rule {i}" for i, r in enumerate(rules) if r.action != "drop"}
    accepting |= {"default"} if default == "allow" else set()
    seen, counters = bed.run(wires, accepting)
    wrong = []
    for i, (wire, index) in enumerate(zip(wires, expected_index)):
        want = verdict(rules, index, default)
        if seen[i] != want:
            text = "" if index is None else "\n      nft: " + nft.rule_text(rules[index], index)
            wrong.append(f"packet {i} ({wire}): nft {seen[i]}, first_match {want} by "
                         f"{describe(rules, index)}{text}")
    assert not wrong, f"{len(wrong)} of {len(wires)} packets judged differently:\n  " + "\n  ".join(wrong[:8])
    hits = collections.Counter("default" if i is None else f"rule {i}" for i in expected_index)
    got = {k: v for k, v in counters.items() if v}
    assert got == dict(hits), f"nft counters {got} != first_match {dict(hits)}"


# --- the property ---------------------------------------------------------------------

@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data(), default=st.sampled_from(["drop", "allow"]), seed=st.integers(0, 2**32 - 1))
def test_small_rulesets_agree_with_nftables(oracle_bed, data, default, seed):
    """Up to 40 rules, shrinkable rule by rule; hypothesis' own packets plus 300 seeded ones."""
    rules = data.draw(rule_lists(1, 40, families=(4, 6), ifaces=IFACES), label="rules")
    wires = data.draw(packet_lists(rules, 1, 30, families=(4,), ifaces=IFACES), label="packets")
    wires += random_packets(RandomPick(seed), rules, 300, families=(4,), ifaces=IFACES)
    check(oracle_bed, rules, default, wires)


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 1000), seed=st.integers(0, 2**32 - 1), default=st.sampled_from(["drop", "allow"]))
@example(n=1000, seed=20251, default="drop")
@example(n=1000, seed=7, default="allow")
def test_long_rulesets_agree_with_nftables(oracle_bed, n, seed, default):
    """1 to 1,000 rules from a seed (hypothesis' buffer is too small to draw them);
    mostly narrow rules, so that the packets reach deep into the list."""
    pick = RandomPick(seed)
    rules = random_rules(pick, n, families=(4, 6), ifaces=IFACES, specific=max(0.0, 1 - 20 / n))
    wires = random_packets(pick, rules, 1000, families=(4,), ifaces=IFACES)
    check(oracle_bed, rules, default, wires)


# --- hand-picked cases: what the property relies on -----------------------------------

def _wire(frag="whole", **fields) -> Wire:
    base = {"family": 4, "src": "198.18.1.1", "dst": "198.18.2.2", "proto": 6, "sport": 1000, "dport": 22,
            "tcp_flags": 0x02, "iif": "fw-in0"}
    base.update(fields)
    return Wire(Packet(**base), frag)


def test_fragments_goto_and_interfaces(oracle_bed):
    rules = [Rule(action="drop", proto="tcp", dport=22),
             Rule(action="goto", label="dns", proto="udp", dport=53, iif="fw-in1"),
             Rule(action="drop", proto="icmp", icmp_type="echo-request"),
             Rule(action="goto", label="web", proto="tcp", flags="syn,!ack"),
             Rule(action="drop", proto="icmpv6"),              # IPv6 only, even with no address
             Rule(action="drop", src="2001:db8::/32")]
    wires = [
        _wire(),                                                    # rule 0
        _wire("first"),                                             # a first fragment has its ports: rule 0
        _wire("later", sport=None, dport=None, tcp_flags=None),     # no ports, no flags: default
        _wire(proto=17, dport=53, tcp_flags=None, iif="fw-in1"),    # rule 1
        _wire(proto=17, dport=53, tcp_flags=None),                  # wrong interface: default
        _wire(proto=1, sport=None, dport=None, tcp_flags=None, icmp_type=8),               # rule 2
        _wire("later", proto=1, sport=None, dport=None, tcp_flags=None),                   # default
        _wire(dport=80),                                            # rule 3
        _wire(dport=80, tcp_flags=0x12),                            # SYN+ACK: default
        _wire(proto=58, sport=None, dport=None, tcp_flags=None),    # protocol 58 in IPv4: default
    ]
    assert [first_match(rules, w.packet) for w in wires] == [0, 0, None, 1, None, 2, None, 3, None, None]
    check(oracle_bed, rules, "allow", wires)


def test_every_field_translates_to_nft_that_loads(oracle_bed):
    rules = [Rule(action="allow", src=["198.18.0.0/16", "198.18.1.0/24", "198.19.0.0/16"],
                  dst="198.18.7.7", proto="tcp", sport="1024-65535", dport=[80, "8000-8080", "8050-9000"],
                  flags="syn,!ack,!rst", iif="fw-in0"),
             Rule(action="drop", src="2001:db8::/48", proto="icmpv6", icmp_type="echo-request"),
             Rule(action="goto", label="web", proto="icmp", icmp_type=0),
             Rule(action="allow", ct=["established", "related"]),
             Rule(action="drop", proto=132, dst=["2001:db8::1", "2001:db8::/64"])]
    # -c: checked by the kernel, never committed (ct would start conntrack in the router)
    oracle_bed.nft(nft.ruleset(rules, "drop", counters=True, replace=True), "-c")


def test_frames_are_what_scapy_builds():
    """The hand-built frames are byte for byte scapy's (checksums included)."""
    rules = random_rules(RandomPick(3), 50, families=(4,), ifaces=IFACES)
    for i, wire in enumerate(random_packets(RandomPick(4), rules, 400, families=(4,), ifaces=IFACES)):
        macs = ("02:00:00:00:00:01", "02:00:00:00:00:02")
        assert frame(wire, i + 1, *macs) == scapy_frame(wire, i + 1, *macs), wire
