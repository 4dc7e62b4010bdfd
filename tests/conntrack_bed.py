"""The test bed of the conntrack end-to-end tests: a client and a server with a
dut between them, and an attacker on a third dut port whose raw frames may
claim any source address.

    client 198.18.1.2 -- dut-lan [dut] dut-wan -- 198.18.2.2 server (http :80, tcp-echo :7)
                             dut-att
                                |
                     attacker 198.18.3.2

``conntrack_firewall`` runs a conntrack firewall and a forward function on all
three dut interfaces."""
from __future__ import annotations

import contextlib
import random
import socket
import textwrap

from vnfchain import Chain
from vnfchain.testbed import Testbed
from vnfchain.testbed.netlink import socket_in
from tests.chain_fixtures import chain_name

C, S = "198.18.1.2", "198.18.2.2"
TOPOLOGY = {
    "name": "cts",
    "description": "client -- dut -- server, and an attacker on a third dut port",
    "hosts": {
        "client": {"routes": [{"dst": "198.18.0.0/15", "via": "198.18.1.1"}]},
        "dut": {"sysctls": {"net.ipv4.ip_forward": 1}},
        "server": {"routes": [{"dst": "198.18.0.0/15", "via": "198.18.2.1"}],
                   "services": [{"type": "http", "port": 80}, {"type": "tcp-echo", "port": 7}]},
        "attacker": {"routes": [{"dst": "198.18.0.0/15", "via": "198.18.3.1"}]},
    },
    "links": [
        {"a": {"host": "client", "interface": "eth0", "addresses": [C + "/24"]},
         "b": {"host": "dut", "interface": "dut-lan", "addresses": ["198.18.1.1/24"]}},
        {"a": {"host": "dut", "interface": "dut-wan", "addresses": ["198.18.2.1/24"]},
         "b": {"host": "server", "interface": "eth0", "addresses": [S + "/24"]}},
        {"a": {"host": "attacker", "interface": "eth0", "addresses": ["198.18.3.2/24"]},
         "b": {"host": "dut", "interface": "dut-att", "addresses": ["198.18.3.1/24"]}},
    ],
}


@contextlib.contextmanager
def conntrack_firewall(bed: Testbed, tag: str, *rules: str, params: str = ""):
    """A deployed chain whose firewall lets anything in as established or
    related, then what ``rules`` (YAML flow mappings) say; ``params``: more
    firewall parameters, YAML lines."""
    dut = bed.netns("dut")
    listed = "".join(f"\n      {rule}" for rule in rules)
    extra = "".join(f"\n    {line}" for line in params.splitlines())
    text = textwrap.dedent(f"""\
        name: {chain_name(tag)}
        attach:
          - {{interface: dut-lan, netns: {dut}}}
          - {{interface: dut-wan, netns: {dut}}}
          - {{interface: dut-att, netns: {dut}}}
        functions:
          fw:
            type: firewall
            conntrack: true
            default: drop
            next: out
            rules:
              - {{action: allow, ct: [established, related]}}""") + listed + extra + """
  out: {type: forward}
"""
    dep = Chain.from_yaml_text(text).deploy()
    try:
        yield dep
    finally:
        dep.undeploy()


class Attacker:
    """Raw frames out of the attacker's interface, towards the dut."""

    def __init__(self, tb: Testbed):
        from scapy.layers.l2 import Ether   # scapy is slow to import
        self.ether = Ether(src=tb.mac("attacker", "eth0"), dst=tb.peer_mac("attacker", "eth0"))
        self.sock = socket_in(tb.netns("attacker"), socket.AF_PACKET, socket.SOCK_RAW, 0)
        self.sock.bind(("eth0", 0))
        self.sent = 0

    def rst(self, src: str, sport: int, dst: str, dport: int, seq: int) -> None:
        from scapy.layers.inet import IP, TCP
        self.sock.send(bytes(self.ether / IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags="R",
                                                                    seq=seq % 2**32)))
        self.sent += 1

    def blind_rsts(self, tap, port: int, service: int, rng: random.Random) -> None:
        """One RST each way of the connection, each at least 2^30 away from the
        live sequence number: outside any window TCP can have."""
        for way in ((S, service, C, port), (C, port, S, service)):
            live = tap.next_seq.get(way, 0)
            self.rst(*way, seq=live + 2**31 + rng.randrange(-2**30, 2**30))

    def close(self) -> None:
        self.sock.close()
