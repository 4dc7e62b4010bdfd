"""The load balancer through BPF_PROG_TEST_RUN, in both chain modes, in a
namespace whose FIB knows the backends (lan0 198.18.1.1/24 towards clients,
srv0 198.18.2.1/24 towards backends, neighbour entries for .11-.13): what a
Katran-class LB is tested on — non-VIP traffic untouched, VIP traffic rewritten
with valid checksums, replies translated back, fragments and IP options by the
stated policy, the connection table, ICMP to the VIP, weights over many flows,
DSR and IPIP output bytes; how a flow is confirmed, and that a flood of spoofed
SYNs pushes no established flow out of the connection table (where a backend
change would move it) in any mode."""
from __future__ import annotations

import os
import subprocess
from collections import Counter

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_RR
from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, IPv6, IPv6ExtHdrFragment
from scapy.layers.l2 import Ether

import yaml

from tests.chain_fixtures import MODES, chain_name, delta
from tests.frames import checksums_valid, eth, spoofed_syns
from tests.scratch_netns import scratch_netns
from vnfchain import Chain
from vnfchain.chain import deploy as deploy_mod
from vnfchain.testrun import call_in_netns, run_xdp

pytestmark = pytest.mark.root

NS = f"vctl{os.getpid()}"
CLIENT, VIP, VIP_DSR, VIP_IPIP, VIP_NONEIGH = "198.18.1.11", "198.18.0.100", "198.18.0.101", "198.18.0.102", \
    "198.18.0.103"
BACKEND_MACS = {"198.18.2.11": "02:00:00:00:02:11", "198.18.2.12": "02:00:00:00:02:12",
                "198.18.2.13": "02:00:00:00:02:13"}
SRV_MAC = "02:00:00:00:02:01"
# IPv6 only inside test runs (never on a wire): 2001:db8::/32
CLIENT6, VIP6, VIP6_DSR, VIP6_IPIP = "2001:db8:1::11", "2001:db8::100", "2001:db8::101", "2001:db8::102"
BACKEND6_MACS = {"2001:db8:2::11": "02:00:00:00:06:11", "2001:db8:2::12": "02:00:00:00:06:12",
                 "2001:db8:2::13": "02:00:00:00:06:13"}

CHAIN = """
name: lb
functions:
  lb:
    type: loadbalancer
    encap_src: 198.18.2.1
    services:
      - name: web
        vip: 198.18.0.100
        port: 80
        backends: [{ip: 198.18.2.11}, {ip: 198.18.2.12, weight: 2}, {ip: 198.18.2.13, port: 8080}]
      - {vip: 198.18.0.100, port: 53, proto: udp, backends: [{ip: 198.18.2.11, port: 5353}]}
      - {vip: 198.18.0.101, port: 80, mode: dsr, backends: [{ip: 198.18.2.12}]}
      - {vip: 198.18.0.102, port: 80, mode: ipip, backends: [{ip: 198.18.2.13}]}
      - {vip: 198.18.0.103, port: 80, mode: ipip, backends: [{ip: 198.18.2.14}]}
      - {vip: "2001:db8::100", port: 80, backends: [{ip: "2001:db8:2::11"}, {ip: "2001:db8:2::12", port: 8080}]}
      - {vip: "2001:db8::101", port: 80, mode: dsr, backends: [{ip: "2001:db8:2::12"}]}
      - {vip: "2001:db8::102", port: 80, mode: ipip, backends: [{ip: "2001:db8:2::13"}]}
    encap_src6: "2001:db8:2::1"
"""


@pytest.fixture(scope="module")
def netns():
    with scratch_netns(NS, {"lan0": ["198.18.1.1/24"], "srv0": ["198.18.2.1/24"]},
                       forwarding=True, macs={"srv0": SRV_MAC}) as (ns, index, ip):
        for addr, mac in BACKEND_MACS.items():
            ip("neigh", "add", addr, "lladdr", mac, "dev", "srv0", "nud", "permanent")
        for dev, addr in (("lan0", "2001:db8:1::1/64"), ("srv0", "2001:db8:2::1/64")):
            for setting in (f"net.ipv6.conf.{dev}.disable_ipv6=0", "net.ipv6.conf.all.forwarding=1"):
                subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw", setting], check=True)
            ip("addr", "add", addr, "dev", dev, "nodad")
        for addr, mac in BACKEND6_MACS.items():
            ip("neigh", "add", addr, "lladdr", mac, "dev", "srv0", "nud", "permanent")
        yield ns, index


@pytest.fixture(params=MODES)
def lb(request, deployed, netns):
    """(deployment, run(frame)) with frames arriving on lan0."""
    ns, index = netns
    dep = deployed(CHAIN, request.param)

    def run(frame, side="lan0"):
        return dep.run(frame, ingress_ifindex=index[side], netns=ns)
    return dep, run


def syn(sport, dst=VIP, dport=80, src=CLIENT, flags="S"):
    return eth(IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags=flags))


def test_traffic_not_to_a_service_passes_untouched(lb):
    dep, run = lb
    for frame in (syn(1000, dst="198.18.2.11"),                  # not a VIP
                  syn(1000, dport=443),                          # the VIP, no service on 443
                  eth(IP(src=CLIENT, dst=VIP) / UDP(sport=1, dport=80))):   # udp, service is tcp
        out = run(frame)
        assert out.action == "XDP_PASS" and out.data == bytes(frame)


def test_nat_rewrites_destination_and_translates_the_reply(lb):
    dep, run = lb
    before = dep.stats()
    out = run(syn(2000))
    backend = out.packet[IP].dst
    assert out.action == "XDP_PASS" and backend in BACKEND_MACS
    assert out.packet[TCP].dport == (8080 if backend == "198.18.2.13" else 80)
    assert out.packet[IP].src == CLIENT and out.packet[TCP].sport == 2000
    assert checksums_valid(out.data)
    reply = run(eth(IP(src=backend, dst=CLIENT) / TCP(sport=out.packet[TCP].dport, dport=2000, flags="SA")),
                "srv0")
    assert reply.action == "XDP_PASS"
    assert (reply.packet[IP].src, reply.packet[TCP].sport) == (VIP, 80)
    assert checksums_valid(reply.data)
    counted = delta(before, dep.stats())["lb"]
    assert counted["new_flows"] == 1 and counted["replies"] == 1


def test_udp_service_with_another_backend_port(lb):
    dep, run = lb
    out = run(eth(IP(src=CLIENT, dst=VIP) / UDP(sport=3000, dport=53) / b"query"))
    assert (out.packet[IP].dst, out.packet[UDP].dport) == ("198.18.2.11", 5353)
    assert checksums_valid(out.data) and out.packet[UDP].load == b"query"
    reply = run(eth(IP(src="198.18.2.11", dst=CLIENT) / UDP(sport=5353, dport=3000) / b"answer"), "srv0")
    assert (reply.packet[IP].src, reply.packet[UDP].sport) == (VIP, 53) and checksums_valid(reply.data)


def test_a_second_packet_hits_the_connection_table(lb):
    dep, run = lb
    first = run(syn(4000))
    before = dep.stats()
    again = run(syn(4000, flags="A"))
    assert again.packet[IP].dst == first.packet[IP].dst
    counted = delta(before, dep.stats())["lb"]
    assert counted.get("table_hits") == 1 and "new_flows" not in counted


def test_weights_are_respected_over_many_flows(lb):
    dep, run = lb
    template = bytearray(bytes(syn(0)))
    sport_at = 14 + 20
    seen = Counter()
    for i in range(4000):
        template[sport_at:sport_at + 2] = (10000 + i).to_bytes(2, "big")
        template[26:30] = bytes([198, 18, 1, 20 + i % 50])     # several clients too
        seen[IP(run(bytes(template)).data[14:]).dst] += 1
    total = sum(seen.values())
    for backend, weight in (("198.18.2.11", 1), ("198.18.2.12", 2), ("198.18.2.13", 1)):
        assert seen[backend] / total == pytest.approx(weight / 4, rel=0.10)


def test_echo_request_to_the_vip_is_answered(lb):
    dep, run = lb
    request = Ether(src="02:00:00:00:01:02", dst="02:00:00:00:01:01") / IP(src=CLIENT, dst=VIP, ttl=9) / \
        ICMP(type=8, id=7, seq=1) / b"ping"
    out = run(request)
    assert out.action == "XDP_REDIRECT"      # back out of lan0 (veths drop XDP_TX)
    assert (out.packet.src, out.packet.dst) == ("02:00:00:00:01:01", "02:00:00:00:01:02")
    assert (out.packet[IP].src, out.packet[IP].dst) == (VIP, CLIENT)
    assert (out.packet[ICMP].type, out.packet[ICMP].id, out.packet[ICMP].seq) == (0, 7, 1)
    assert out.packet[ICMP].load == b"ping" and checksums_valid(out.data)
    unreachable = eth(IP(src=CLIENT, dst=VIP) / ICMP(type=3, code=3) / IP(src=VIP, dst=CLIENT) / UDP())
    assert run(unreachable).data == bytes(unreachable)


def test_fragments_to_a_vip_are_dropped_and_counted(lb):
    dep, run = lb
    before = dep.stats()
    first = eth(IP(src=CLIENT, dst=VIP, flags="MF", id=5) / TCP(sport=5000, dport=80) / (b"x" * 16))
    later = eth(IP(src=CLIENT, dst=VIP, frag=3, id=5, proto=6) / (b"x" * 16))
    assert run(first).action == "XDP_DROP" and run(later).action == "XDP_DROP"
    other = eth(IP(src=CLIENT, dst="198.18.2.11", flags="MF") / TCP(sport=5000, dport=80))
    assert run(other).data == bytes(other)          # not to a VIP: none of our business
    assert delta(before, dep.stats())["lb"]["drop_lb_fragment"] == 2


def test_ipv4_options_are_kept(lb):
    dep, run = lb
    frame = eth(IP(src=CLIENT, dst=VIP, options=[IPOption_RR()]) / TCP(sport=6000, dport=80) / b"data")
    out = run(frame)
    assert out.packet[IP].ihl > 5 and out.packet[IP].options[0].option == IPOption_RR().option
    assert out.packet[IP].dst in BACKEND_MACS and out.packet[TCP].load == b"data"
    assert checksums_valid(out.data)


def test_dsr_changes_only_the_ethernet_addresses(lb):
    dep, run = lb
    frame = syn(7000, dst=VIP_DSR)
    out = run(frame)
    assert out.action == "XDP_REDIRECT"
    assert (out.packet.dst, out.packet.src) == (BACKEND_MACS["198.18.2.12"], SRV_MAC)
    assert out.data[12:] == bytes(frame)[12:]        # the IP packet as the client sent it


def test_ipip_wraps_the_packet_for_the_backend(lb):
    dep, run = lb
    frame = syn(8000, dst=VIP_IPIP)
    out = run(frame)
    assert out.action == "XDP_REDIRECT"
    assert (out.packet.dst, out.packet.src) == (BACKEND_MACS["198.18.2.13"], SRV_MAC)
    outer = out.packet[IP]
    assert (outer.src, outer.dst, outer.proto, outer.ihl) == ("198.18.2.1", "198.18.2.13", 4, 5)
    assert outer.len == len(frame) - 14 + 20
    assert out.data[34:] == bytes(frame)[14:]        # the inner packet, byte for byte
    assert checksums_valid(out.data)


def test_ipip_to_an_unresolved_backend_goes_to_the_stack_encapsulated(lb):
    dep, run = lb
    frame = syn(8001, dst=VIP_NONEIGH)
    out = run(frame)
    assert out.action == "XDP_PASS"
    assert (out.packet[IP].dst, out.packet[IP].proto) == ("198.18.2.14", 4)
    assert out.data[:12] == bytes(frame)[:12]     # addressed to this host, as it arrived


def syn6(sport, dst=VIP6, dport=80):
    return eth(IPv6(src=CLIENT6, dst=dst) / TCP(sport=sport, dport=dport, flags="S"))


def test_ipv6_nat_and_its_reply(lb):
    dep, run = lb
    seen = set()
    for sport in range(9000, 9040):
        out = run(syn6(sport))
        backend = out.packet[IPv6].dst
        assert out.action == "XDP_PASS" and backend in ("2001:db8:2::11", "2001:db8:2::12")
        assert out.packet[TCP].dport == (8080 if backend.endswith("12") else 80) and checksums_valid(out.data)
        seen.add(backend)
        reply = run(eth(IPv6(src=backend, dst=CLIENT6) / TCP(sport=out.packet[TCP].dport, dport=sport, flags="SA")),
                    "srv0")
        assert (reply.packet[IPv6].src, reply.packet[TCP].sport) == (VIP6, 80) and checksums_valid(reply.data)
    assert len(seen) == 2
    other = eth(IPv6(src=CLIENT6, dst="2001:db8:9::1") / TCP(sport=1, dport=80))
    assert run(other).data == bytes(other)


def test_ipv6_echo_fragments_dsr_and_ipip(lb):
    dep, run = lb
    out = run(eth(IPv6(src=CLIENT6, dst=VIP6) / ICMPv6EchoRequest(id=3, seq=4, data=b"ping6")))
    assert out.action == "XDP_REDIRECT" and out.packet.haslayer(ICMPv6EchoReply)
    assert (out.packet[IPv6].src, out.packet[IPv6].dst, out.packet[ICMPv6EchoReply].id) == (VIP6, CLIENT6, 3)
    assert checksums_valid(out.data)

    fragment = eth(IPv6(src=CLIENT6, dst=VIP6) / IPv6ExtHdrFragment(m=1, id=9) / TCP(sport=9100, dport=80))
    assert run(fragment).action == "XDP_DROP"

    frame = syn6(9101, dst=VIP6_DSR)
    out = run(frame)
    assert out.action == "XDP_REDIRECT"
    assert (out.packet.dst, out.packet.src) == (BACKEND6_MACS["2001:db8:2::12"], SRV_MAC)
    assert out.data[12:] == bytes(frame)[12:]

    frame = syn6(9102, dst=VIP6_IPIP)
    out = run(frame)
    assert out.action == "XDP_REDIRECT"
    outer = out.packet[IPv6]
    assert (outer.src, outer.dst, outer.nh, outer.plen) == ("2001:db8:2::1", "2001:db8:2::13", 41, len(frame) - 14)
    assert out.packet.dst == BACKEND6_MACS["2001:db8:2::13"]
    assert out.data[14 + 40:] == bytes(frame)[14:]      # the inner packet, byte for byte


def test_a_nat_flow_is_confirmed_by_the_clients_ack_of_the_backends_syn_ack(lb):
    dep, run = lb
    before = dep.stats()
    syn_out = run(syn(11000))
    backend, port = syn_out.packet[IP].dst, syn_out.packet[TCP].dport
    run(eth(IP(src=backend, dst=CLIENT) / TCP(sport=port, dport=11000, flags="SA", seq=500, ack=1)), "srv0")
    run(syn(11000, flags="A"))                        # a blind ACK: acknowledges nothing we saw
    assert "confirmed_flows" not in delta(before, dep.stats())["lb"]
    ack = eth(IP(src=CLIENT, dst=VIP) / TCP(sport=11000, dport=80, flags="A", seq=1, ack=501))
    assert run(ack).packet[IP].dst == backend
    counted = delta(before, dep.stats())["lb"]
    assert counted["confirmed_flows"] == 1 and counted["new_flows"] == 1 and counted["table_hits"] == 2
    reply = run(eth(IP(src=backend, dst=CLIENT) / TCP(sport=port, dport=11000, flags="A", seq=501, ack=1)), "srv0")
    assert (reply.packet[IP].src, reply.packet[TCP].sport) == (VIP, 80)     # from the connection's reply table


B1, B2, B3 = "198.18.2.11", "198.18.2.12", "198.18.2.13"
MAC_OWNER = {mac: ip for ip, mac in BACKEND_MACS.items()}
FLOOD_SERVICES = {"nat": VIP, "dsr": VIP_DSR, "ipip": VIP_IPIP}


def flood_chain(name, mode, backends):
    return yaml.safe_dump({"name": name, "mode": mode, "functions": {"lb": {
        "type": "loadbalancer", "table_size": 251, "max_flows": 1024, "max_unconfirmed": 16,
        "encap_src": "198.18.2.1",
        "services": [{"vip": vip, "port": 80, "mode": lb_mode, "backends": [{"ip": b} for b in backends]}
                     for lb_mode, vip in FLOOD_SERVICES.items()]}}})


def backend_of(out, lb_mode):
    """The backend a balanced frame goes to: rewritten destination (nat), MAC (dsr), outer header (ipip)."""
    assert out.action in ("XDP_PASS", "XDP_REDIRECT"), out.action
    return MAC_OWNER[out.packet.dst] if lb_mode == "dsr" else out.packet[IP].dst


def establish(run, lb_mode, vip, sport):
    """A client connection through the LB, handshake done: its backend."""
    out = run(syn(sport, dst=vip))
    backend = backend_of(out, lb_mode)
    isn = 1000 + sport
    if lb_mode == "nat":            # the backend's SYN-ACK comes back through the chain
        run(eth(IP(src=backend, dst=CLIENT) / TCP(sport=80, dport=sport, flags="SA", seq=isn, ack=1)), "srv0")
    ack = run(eth(IP(src=CLIENT, dst=vip) / TCP(sport=sport, dport=80, flags="A", seq=1, ack=isn + 1)))
    assert backend_of(ack, lb_mode) == backend
    return backend


@pytest.mark.parametrize("mode", MODES)
def test_a_syn_flood_pushes_no_flow_onto_another_backend_after_a_backend_change(deployed, netns, mode):
    ns, index = netns
    name = chain_name(f"lbflood{mode[0]}")

    def deploy(backends):
        return Chain.from_yaml_text(flood_chain(name, mode, backends)).deploy(attach=[])

    def run(frame, side="lan0"):
        return dep.run(frame, ingress_ifindex=index[side], netns=ns)

    try:
        dep = deploy([B1, B2])
        flows = {lb_mode: {sport: establish(run, lb_mode, vip, sport) for sport in range(50000, 50060)}
                 for lb_mode, vip in FLOOD_SERVICES.items()}
        assert dep.stats()["lb"]["confirmed_flows"] == 180
        dep = deploy([B1, B2, B3])      # a third of the hash now points at B3 (new config maps: code change)
        before = dep.stats()
        fd = dep.entry_fd()
        try:
            for lb_mode, vip in FLOOD_SERVICES.items():
                # >> max_unconfirmed and > max_flows; each SYN retransmitted, as stacks do: in a
                # plain LRU that second packet would make the spoofed flow outrank idle real ones
                frames = [f for f in spoofed_syns(3000, vip, 80, seed=len(lb_mode)) for _ in range(2)]
                actions = call_in_netns(ns, lambda: [run_xdp(fd, f, ingress_ifindex=index["lan0"]).action
                                                     for f in frames])
                assert set(actions) == {"XDP_PASS" if lb_mode == "nat" else "XDP_REDIRECT"}, lb_mode
        finally:
            os.close(fd)
        counted = delta(before, dep.stats())["lb"]
        assert counted["new_flows"] == 9000 and counted["evicted_unconfirmed"] == 9000 - 16
        assert "confirmed_flows" not in counted

        before = dep.stats()
        for lb_mode, vip in FLOOD_SERVICES.items():
            for sport, backend in flows[lb_mode].items():
                ack = eth(IP(src=CLIENT, dst=vip) / TCP(sport=sport, dport=80, flags="A", seq=1, ack=1))
                assert backend_of(run(ack), lb_mode) == backend, (lb_mode, sport)
        counted = delta(before, dep.stats())["lb"]
        assert counted["table_hits"] == 180 and "moved_flows" not in counted and "new_flows" not in counted

        # and new connections are balanced and confirmed, B3 among their backends
        before = dep.stats()
        fresh = {lb_mode: {establish(run, lb_mode, vip, sport) for sport in range(51000, 51030)}
                 for lb_mode, vip in FLOOD_SERVICES.items()}
        assert all(B3 in backends for backends in fresh.values()), fresh
        assert delta(before, dep.stats())["lb"]["confirmed_flows"] == 90
    finally:
        deploy_mod.undeploy(name)
