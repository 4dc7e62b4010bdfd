"""Firewall conntrack under floods of spoofed new flows, through BPF_PROG_TEST_RUN
in both chain modes, with both tables made small by parameter: established
flows (TCP, UDP, ICMP echo) keep carrying data both ways through floods of
spoofed SYNs and DNS queries many times the size of the tables, even though
the server answers every one of them (a listening server answers whoever a
SYN claims to be from); a new connection opened during the flood completes;
and the flows a full table pushed out are counted, exactly.

The ruleset is a public web and DNS server's: anyone may open TCP to port 80
and UDP to port 53, the client network anything, and the rest comes in only as
`established` or `related`."""
from __future__ import annotations

import contextlib
import os
import random

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Ether

from vnfchain import Chain, bpfsys
from vnfchain.chain import deploy as deploy_mod
from vnfchain.firewall import conntrack
from vnfchain.testrun import run_xdp
from tests.chain_fixtures import MODES, chain_name, delta
from tests.conntrack_peers import C, S, Tcp, data_flows, open_flow, ports
from tests.frames import eth, spoofed_syns

pytestmark = pytest.mark.root

MAX_FLOWS, MAX_UNCONFIRMED = 128, 64
RULES = """
    rules:
      - {action: allow, ct: [established, related]}
      - {action: allow, proto: tcp, dport: 80, ct: new}
      - {action: allow, proto: udp, dport: 53, ct: new}
      - {action: allow, src: 198.18.1.0/24, ct: new}
"""


def chain(max_flows: int, max_unconfirmed: int, name: str = "ctflood") -> str:
    return (f"name: {name}\nfunctions:\n  fw:\n    type: firewall\n    conntrack: true\n    default: drop\n"
            f"    max_flows: {max_flows}\n    max_unconfirmed: {max_unconfirmed}\n" + RULES)


@pytest.fixture(params=MODES)
def fw(request, deployed):
    return deployed(chain(MAX_FLOWS, MAX_UNCONFIRMED), request.param)


def flood(n: int, seed: int) -> list[bytes]:
    """n spoofed SYNs to the web server from 198.19.0.0/16, each answered by the
    server's SYN-ACK, and n/4 spoofed DNS queries, each answered too; nobody
    answers back."""
    rng = random.Random(seed)
    frames = []
    for syn in spoofed_syns(n, S, 80, seed):
        sent = Ether(syn)
        frames += [syn, bytes(eth(IP(src=S, dst=sent[IP].src) / TCP(
            sport=80, dport=sent[TCP].sport, flags="SA", seq=rng.getrandbits(32), ack=(sent[TCP].seq + 1) % 2**32)))]
    for _ in range(n // 4):
        src, sport = f"198.19.{rng.randrange(256)}.{rng.randrange(1, 255)}", rng.randrange(1024, 65536)
        frames += [bytes(eth(IP(src=src, dst=S) / UDP(sport=sport, dport=53) / b"query")),
                   bytes(eth(IP(src=S, dst=src) / UDP(sport=53, dport=sport) / b"answer"))]
    return frames


@pytest.fixture(scope="module")
def spray():
    """A flood 30 times the unconfirmed table, built once for both modes."""
    return flood(30 * MAX_UNCONFIRMED, seed=1)


def run_all(dep, frames) -> list[str]:
    fd = dep.entry_fd()
    try:
        return [run_xdp(fd, f).action for f in frames]
    finally:
        os.close(fd)


class Udp:
    """A UDP flow from the client, answered, and the client speaks again."""

    def __init__(self, dep):
        self.port = next(ports)
        self.dep = dep
        assert self.send(0) == self.send(1) == self.send(0) == "XDP_PASS"

    def send(self, side: int) -> str:
        ip = IP(src=C, dst=S) if side == 0 else IP(src=S, dst=C)
        sport, dport = (self.port, 4500) if side == 0 else (4500, self.port)
        return self.dep.run(eth(ip / UDP(sport=sport, dport=dport) / b"u")).action


def ping(dep, ident: int) -> list[str]:
    """An echo request, its reply and the next request."""
    return [dep.run(eth(p)).action for p in (IP(src=C, dst=S) / ICMP(type=8, id=ident, seq=1),
                                             IP(src=S, dst=C) / ICMP(type=0, id=ident, seq=1),
                                             IP(src=C, dst=S) / ICMP(type=8, id=ident, seq=2))]


def test_established_flows_outlive_a_flood_of_answered_spoofed_flows(fw, spray):
    conns = [open_flow(fw) for _ in range(32)]
    udp = Udp(fw)
    ident = next(ports)
    assert ping(fw, ident) == ["XDP_PASS"] * 3
    before = fw.stats()

    actions = run_all(fw, spray)

    assert actions.count("XDP_PASS") == len(spray)        # the rules let the flood in, and its answers out
    changed = delta(before, fw.stats())["fw"]
    lost = [c.port[0] for c in conns if not data_flows(fw, c)]
    assert not lost, f"{len(lost)} of 32 connections no longer carry data"
    assert udp.send(1) == udp.send(0) == "XDP_PASS"
    assert fw.run(eth(IP(src=S, dst=C) / ICMP(type=0, id=ident, seq=2))).action == "XDP_PASS"
    assert changed["ct_evicted_unconfirmed"] >= len(spray) // 2 - MAX_UNCONFIRMED
    assert "ct_flows" not in changed and "ct_evicted_flows" not in changed


def test_a_connection_opens_during_a_flood_and_after_it(fw, spray):
    """Between each step of the handshake the flood goes on; the SYN's entry
    outlives the few new flows that come before the SYN-ACK."""
    conn, step = Tcp(), len(spray) // 8
    chunks = [spray[i:i + MAX_UNCONFIRMED // 4] for i in range(0, 8 * step, step)]
    for i, (side, flags) in enumerate(((0, "S"), (1, "SA"), (0, "A"))):
        run_all(fw, chunks[i])
        assert fw.run(conn.send(side, flags)).action == "XDP_PASS", flags
    run_all(fw, spray)
    assert data_flows(fw, conn)
    assert data_flows(fw, open_flow(fw))


def test_a_server_answer_alone_does_not_make_a_flow_established(fw):
    """A spoofed DNS query and its answer stay in the unconfirmed table (ct_flows
    does not grow) and are refused once the flood pushed them out."""
    before = fw.stats()
    query = IP(src="198.19.7.7", dst=S) / UDP(sport=5353, dport=53)
    answer = IP(src=S, dst="198.19.7.7") / UDP(sport=53, dport=5353)
    assert [fw.run(eth(p)).action for p in (query, answer, answer)] == ["XDP_PASS"] * 3
    assert "ct_flows" not in delta(before, fw.stats())["fw"]
    run_all(fw, flood(4 * MAX_UNCONFIRMED, seed=2))
    assert fw.run(eth(answer)).action == "XDP_DROP"


def probe_dead(dep, frames) -> int:
    """How many of these frames (each of a flow that was let in) are refused now."""
    return run_all(dep, frames).count("XDP_DROP")


@pytest.mark.parametrize("mode", MODES)
def test_every_evicted_flow_is_counted(deployed, mode):
    """Each table overflowed in turn; probing a flow (the client's next data,
    or the server's SYN-ACK again) moves nothing, and as many flows are gone
    as the counters say were evicted."""
    dep = deployed(chain(64, 64), mode)
    before = dep.stats()
    conns = [open_flow(dep) for _ in range(160)]
    changed = delta(before, dep.stats())["fw"]
    dead = probe_dead(dep, [c.send(0, "PA", payload=b"d") for c in conns])
    assert dead > 0 and changed["ct_evicted_flows"] == dead
    assert changed["ct_flows"] == 160 - dead and changed.get("ct_evicted_unconfirmed", 0) == 0

    spoofed = flood(400, seed=3)
    syns, answers = spoofed[:800:2], spoofed[1:800:2]
    before = dep.stats()
    assert set(run_all(dep, syns)) == {"XDP_PASS"}
    changed = delta(before, dep.stats())["fw"]
    assert changed["ct_evicted_unconfirmed"] == probe_dead(dep, answers) >= 400 - 64
    assert "ct_evicted_flows" not in changed


@pytest.fixture(params=MODES)
def upgraded(request, deployed):   # deployed: skips without root/BCC
    """A chain whose conntrack counters started afresh beside a table of live
    flows (as after an upgrade that kept the table), then changed live."""
    name = chain_name(f"ctup{request.param[0]}")
    text = chain(64, 64, name) + f"mode: {request.param}\n"
    try:
        dep = Chain.from_yaml_text(text).deploy(attach=[])
        conns = [open_flow(dep) for _ in range(24)]
        events = next(path for key, path in dep.record.maps.items() if key.endswith("_ct_events"))
        with bpfsys.PinnedMap(events) as m:
            for i in range(conntrack.COUNTERS):
                m.update(i.to_bytes(4, "little"), bytes(8 * bpfsys.possible_cpus()))
        another_rule = "      - {action: drop, proto: tcp, dport: 9}\n      - {action: allow, ct:"
        yield Chain.from_yaml_text(text.replace("      - {action: allow, ct:", another_rule)).deploy(attach=[]), conns
    finally:
        with contextlib.suppress(Exception):
            deploy_mod.undeploy(name)


def test_flows_kept_from_before_the_counters_are_counted_when_evicted(upgraded):
    dep, old = upgraded
    assert dep.stats()["fw"]["ct_flows"] == 24
    new = [open_flow(dep) for _ in range(136)]
    dead = probe_dead(dep, [c.send(0, "PA", payload=b"d") for c in old + new])
    assert dead > 0 and dep.stats()["fw"]["ct_evicted_flows"] == dead
