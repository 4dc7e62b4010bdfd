"""Both ends of TCP connections (and their verdicts) as a conntrack firewall in
the middle sees them, for packet tests: a client network and a server, in IPv4
and their 6to4 images in IPv6."""
from __future__ import annotations

import itertools

from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6

from tests.chain_fixtures import delta
from tests.frames import eth

C, S = "198.18.1.2", "198.18.2.2"
C6, S6 = "2002:c612:102::2", "2002:c612:202::2"   # 6to4 images of the above

ports = itertools.count(20000)   # client ports: every connection its own


def verdict(dep, frame) -> tuple[str, dict]:
    """The chain's action on one frame, and the firewall counters it moved."""
    before = dep.stats()
    action = dep.run(frame).action
    return action, delta(before, dep.stats()).get("fw", {})


LINUX_SYN_OPTIONS = [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (1, 0)), ("NOP", None)]


class Tcp:
    """Both ends of one TCP connection as the firewall in the middle sees them.

    ``send`` builds a side's next segment with the numbers that side would
    use and moves the connection along; ``forge`` builds one with numbers of
    the test's choosing and moves nothing. Side 0 is the client, 1 the server.
    Windows are given raw (as on the wire); ``wscale`` is each SYN's option
    (None: no option)."""

    def __init__(self, *, family=4, isn=(1_000_000, 3_000_000_000), wscale=(7, 7), win=(1000, 1000)):
        self.ip = (lambda **kw: IP(**kw)) if family == 4 else (lambda **kw: IPv6(**kw))
        self.addr = (C, S) if family == 4 else (C6, S6)
        self.port = (next(ports), 80)
        self.nxt = list(isn)
        self.win = win
        self.syn_options = [LINUX_SYN_OPTIONS + ([("WScale", ws)] if ws is not None else []) for ws in wscale]

    def _frame(self, side, flags, seq, ack, payload, win):
        other = 1 - side
        options = self.syn_options[side] if "S" in flags else []
        tcp = TCP(sport=self.port[side], dport=self.port[other], flags=flags, seq=seq % 2**32,
                  ack=(ack % 2**32) if "A" in flags else 0, window=self.win[side] if win is None else win,
                  options=options)
        return eth(self.ip(src=self.addr[side], dst=self.addr[other]) / tcp / payload)

    def forge(self, side, flags, *, seq=None, ack=None, payload=b"", win=None):
        seq = self.nxt[side] if seq is None else seq
        ack = self.nxt[1 - side] if ack is None else ack
        return self._frame(side, flags, seq, ack, payload, win)

    def send(self, side, flags, *, payload=b"", win=None):
        frame = self.forge(side, flags, payload=payload, win=win)
        self.nxt[side] += len(payload) + ("S" in flags) + ("F" in flags)
        return frame

    def open(self, dep):
        """The three-way handshake, each step allowed."""
        for side, flags in ((0, "S"), (1, "SA"), (0, "A")):
            assert dep.run(self.send(side, flags)).action == "XDP_PASS", flags
        return self


def open_flow(dep, **kw) -> Tcp:
    return Tcp(**kw).open(dep)


def data_flows(dep, conn) -> bool:
    """Does the connection still carry data both ways (as established)?"""
    return all(verdict(dep, conn.send(side, "PA", payload=b"x" * 100))[0] == "XDP_PASS" for side in (1, 0))
