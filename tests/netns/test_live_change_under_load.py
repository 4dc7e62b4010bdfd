"""Live change under load, end to end: a chain carrying a NAT and a load
balancer (tests/live_load.py, on the sfc bed) takes 20 changes of each kind -
config (a firewall rule, a dpi signature, a backend's weight, the load
balancer's idle timeout, the NAT's TCP timeout), code (the dpi's max_scan and
unparsed policy: compiled in) and topology (a function added and removed, tail-call <-> fused) - while
10,000 UDP datagrams a second cross it and 50 TCP connections through the NAT
and 50 through the load balancer echo every 100 ms (tests/load_traffic.py).

Not one datagram is lost, duplicated or reordered; every connection keeps
echoing; no counter ever goes back across a change; and at the end the chain
counted exactly the frames the wire delivered and the datagrams sent."""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field

import pytest

from tests.live_load import (UDP_RULE, Knobs, chain_under_load, deploy, disagreement, retransmitted, turned,
                             went_back, wire_frames)
from tests.load_traffic import LoadRun
from tests.testbed_fixtures import module_bed
from vnfchain.chain.deploy import Deployment

pytestmark = [pytest.mark.root, pytest.mark.netns]

CHANGES = 20        # of each kind, as the issue asks
RATE = 10_000       # UDP datagrams a second
HELD = 50           # TCP connections through the NAT, and as many through the load balancer
HOSTS = ("client", "server", "server2")


@pytest.fixture(scope="module")
def bed():
    pytest.importorskip("bcc")
    yield from module_bed("sfc.yaml", "llc")


@dataclass
class Running:
    """The chain, its load and where both stood when the load started."""

    tb: object
    load: LoadRun
    dep: Deployment
    knobs: Knobs
    start_stats: dict
    start_wire: int
    start_retransmitted: dict
    costs: dict = field(default_factory=dict)

    def change(self, kind: str, n: int) -> list[str]:
        """The n-th change of ``kind``, live; the counters it sent backwards."""
        before = self.dep.stats()
        self.knobs = turned(self.knobs, kind, n)
        self.dep, seconds = deploy(self.dep.name, self.tb.netns("dut"), self.knobs)
        assert self.dep.last_change == kind, (n, self.knobs)
        self.costs.setdefault(kind, []).append(seconds)
        return went_back(before, self.dep.stats())


def quiet_counts(tb, dep) -> tuple[dict, int]:
    """The chain's counters and the wire's frame count at one moment: read
    until the wire did not move while the counters were read."""
    for _ in range(50):
        wire = wire_frames(tb)
        stats = dep.stats()
        if wire_frames(tb) == wire:
            return stats, wire
    raise AssertionError("the wire never went quiet")


@pytest.fixture(scope="module")
def running(bed):
    def counts(dep):
        return quiet_counts(bed, dep), {host: retransmitted(bed, host) for host in HOSTS}

    with chain_under_load(bed, "load", Knobs(), rate=RATE, held=HELD, before_load=counts) as (dep, load, before):
        (stats, wire), resent = before
        yield Running(bed, load, dep, Knobs(), stats, wire, resent)


def nothing_lost(running: Running) -> None:
    now = running.load.report()
    udp, tcp = now.udp, now.tcp
    assert udp["received"] > 0
    assert (udp["missing"], udp["duplicates"], udp["reordered"]) == (0, 0, 0), udp
    assert tcp["failed"] == [] and sum(tcp["open"].values()) == 2 * HELD, tcp
    assert disagreement(running.dep) == []


@pytest.mark.parametrize("kind", ["config", "code", "topology"])
def test_20_live_changes_lose_no_packet_and_no_connection(running, kind):
    backwards = []
    for n in range(CHANGES):
        backwards += running.change(kind, n)
    assert backwards == [], f"counters went back across a {kind} change: {backwards}"
    nothing_lost(running)
    costs = running.costs[kind]
    print(f"{kind}: {len(costs)} changes, median {statistics.median(costs):.2f} s, max {max(costs):.2f} s")


def test_the_chain_counted_every_frame_and_every_datagram(running):
    result = running.load.finish()
    stats, wire = quiet_counts(running.tb, running.dep)
    udp = result.udp
    print(f"udp: {result.sent}, longest silence {udp['longest_silence_ms']} ms; tcp: {result.tcp['echoes']} "
          f"echoes, slowest {result.tcp['slowest_echo_ms']} ms")
    assert udp["lost"] == 0 and udp["duplicates"] == 0, {k: v for k, v in udp.items() if k != "per_second"}
    assert result.sent["rate"] >= 0.95 * RATE
    assert result.tcp["failed"] == [] and result.tcp_alive() == 2 * HELD
    resent = {host: retransmitted(running.tb, host) - running.start_retransmitted[host] for host in HOSTS}
    print(f"tcp segments sent again: {resent}")
    assert set(resent.values()) == {0}, f"TCP segments were lost on the way: {resent}"
    assert stats["fw"][UDP_RULE] - running.start_stats["fw"].get(UDP_RULE, 0) == result.sent["sent"]
    counted = stats["(entry)"]["rx_packets"] - running.start_stats["(entry)"]["rx_packets"]
    assert counted == wire - running.start_wire, "frames the chain counted, and the wire delivered"
