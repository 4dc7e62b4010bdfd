"""The attacker's differential: no crafted frame reaches a host guarded by the
chain's firewall that nftables with the same policy would stop -- the kernel
judges both.

    s ─ s-n ──── g0 (n)   nftables: the policy on the input hook, and conntrack
    │                      on (so IP fragments are reassembled before the filter,
    │                      as on any host with a stateful ruleset)
    └─ s-x ──── g0 (x)    the chain: one firewall function with the same rules,
                           exit: pass, at XDP on g0, in tailcall and fused mode

n and x are configured alike: the same MAC and addresses on g0 and on the VLAN
devices g0.10 (802.1Q), g0.20 (802.1ad) and g0.20.30 (802.1Q inside it),
rp_filter off, IPv6 on with addr_gen_mode none (no link-local address, so no
DAD and no router solicitation; only MLD reports leave, and s drops them).
s has IPv6 off and sends raw frames through AF_PACKET. Nobody has a route
beyond its own subnets, so whatever a guard would answer stays inside it.
Addresses: IPv4 from 198.18.0.0/15 and IPv6 only from its 6to4 image
2002:c612::/31 (tests/evasion_frames.py says which case uses which).

What a guard delivers is read where its stack is done with it: a raw socket
per IP protocol and family gets a copy of every datagram the IP layer delivers
locally -- after netfilter's input hook, after reassembly. Every case sends
from its own source address, so each delivered datagram names its case.

The property: for every case, what x delivers is part of what n delivers
(datagrams compared as protocol and transport bytes). Controls in every batch
keep it honest: well-formed frames the policy allows must reach both guards,
well-formed ones it refuses neither. A failure lists each evading case with
its frames (scapy summary and hex), what each guard delivered, and, after
sending it once more on its own, which nft rule judged it in n (or that it
never reached the filter) and the chain's counters and drop reasons in x.
"""
from __future__ import annotations

import collections
import itertools
import os
import selectors
import shutil
import socket
import time

import pytest
from hypothesis import HealthCheck, Phase, given, settings

from tests.chain_fixtures import MODES, chain_name, delta
from tests.evasion_frames import (
    GUARD_DEVICES,
    GUARD_MAC,
    IDENTS,
    KNOWN_TRICKS,
    SENDER_MAC,
    TPID_AD,
    Case,
    batches,
    case_number,
    controls,
    guard_address,
)
from tests.firewall_oracle import nft_counters
from tests.testbed_fixtures import bed_name
from vnfchain import Chain
from vnfchain.chain.deploy import undeploy
from vnfchain.firewall import nft
from vnfchain.firewall.rules import Rule
from vnfchain.testbed import Testbed, build, load_topology
from vnfchain.testbed.netlink import socket_in

pytestmark = [pytest.mark.root, pytest.mark.netns]

GUARDS = ("n", "x")
SENDER_IF = {"n": "s-n", "x": "s-x"}
BLOCKED_SOURCES = ["198.18.128.0/17", "2002:c612:8000::/33"]   # tests.evasion_frames.BLOCKED and its 6to4 image
POLICIES = {
    # default drop: only what is allowed gets in; a drop src before the allows
    "allowlist": {"default": "drop", "rules": [
        *({"action": "drop", "src": net} for net in BLOCKED_SOURCES),
        {"action": "allow", "proto": "tcp", "dport": 80},
        {"action": "allow", "proto": "udp", "dport": 53},
        {"action": "allow", "proto": "icmp", "icmp_type": "echo-request"},
        {"action": "allow", "proto": "icmpv6", "icmp_type": "echo-request"}]},
    # default allow: drops only, and what the parser cannot classify is dropped
    "blocklist": {"default": "allow", "unparsed": "drop", "rules": [
        {"action": "drop", "proto": "tcp", "dport": 22},
        {"action": "drop", "proto": "udp", "dport": 161},
        *({"action": "drop", "src": net} for net in BLOCKED_SOURCES)]},
}
# the IPv6 extension headers the stack walks: a raw socket on one of them would
# see datagrams before they are reassembled or their chain is checked
IPV6_WALKED = {43, 44, 60}
RAW = [(socket.AF_INET, p) for p in range(1, 255)] + [(socket.AF_INET6, p) for p in range(1, 255)
                                                      if p not in IPV6_WALKED]
VLAN_DEVICES = [d for d in GUARD_DEVICES if d != "g0"]   # in the order they stack
SO_RCVBUFFORCE = 33     # Linux; the socket module does not name it
QUIET = 0.25            # seconds without a delivery that end a batch
PATIENCE = 5.0          # seconds a batch may take to arrive

_GUARD_SYSCTLS = {
    "net.ipv4.conf.all.rp_filter": 0, "net.ipv4.conf.default.rp_filter": 0, "net.ipv4.conf.g0.rp_filter": 0,
    # IPv6 on, but silent: addr_gen_mode 1 (none) before IPv6 comes up
    "net.ipv6.conf.default.addr_gen_mode": 1, "net.ipv6.conf.g0.addr_gen_mode": 1,
    "net.ipv6.conf.default.accept_ra": 0, "net.ipv6.conf.g0.accept_ra": 0,
    "net.ipv6.conf.default.disable_ipv6": 0, "net.ipv6.conf.all.disable_ipv6": 0,
    "net.ipv6.conf.g0.disable_ipv6": 0,
    # room for every incomplete fragment set of a module run: a full queue would
    # drop later fragments in one guard and not in the other
    "net.ipv4.ipfrag_high_thresh": 64 << 20, "net.ipv6.ip6frag_high_thresh": 64 << 20,
}
TOPOLOGY = {
    "name": "evd",
    "description": "sender -- nftables guard, sender -- chain guard, for the evasion differential",
    "hosts": {"s": {}, "n": {"sysctls": _GUARD_SYSCTLS}, "x": {"sysctls": _GUARD_SYSCTLS}},
    # no GRO: the guards must see the frames one by one, as sent
    "links": [{"a": {"host": "s", "interface": SENDER_IF[g]}, "b": {"host": g, "interface": "g0"}, "gro": False}
              for g in GUARDS],
}
# conntrack in n: any ct expression turns it (and its defragmentation) on for the netns
CONNTRACK = """table inet vcevd {
\tchain pre {
\t\ttype filter hook prerouting priority -150; policy accept;
\t\tct state invalid counter comment "conntrack: invalid"
\t}
}
"""


class Delivered(collections.Counter):
    """(protocol, transport bytes) -> how often a guard delivered that datagram."""

    def show(self) -> str:
        if not self:
            return "nothing"
        return ", ".join(f"proto {proto} {len(data)} bytes x{n}" for (proto, data), n in sorted(self.items()))


class Guards:
    """The bed: the sender's packet sockets, each guard's raw sockets, n's nft
    tables and the chain in x."""

    def __init__(self, tb: Testbed):
        self.tb = tb
        self.numbers = itertools.count(1)
        self.tx: dict[str, socket.socket] = {}
        self.rx = selectors.DefaultSelector()
        self.dep = None
        self.running: tuple[str, str] | None = None
        self.devices: list[str] = []     # the guards' devices the kernel could make

    # --- set-up ------------------------------------------------------------------

    def open(self) -> Guards:
        for guard in GUARDS:
            self._configure(guard)
            for family, proto in RAW:
                sock = socket_in(self.tb.netns(guard), family, socket.SOCK_RAW, proto)
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 4 << 20)
                sock.setblocking(False)
                self.rx.register(sock, selectors.EVENT_READ, (guard, family, proto))
            sock = socket_in(self.tb.netns("s"), socket.AF_PACKET, socket.SOCK_RAW, 0)
            sock.bind((SENDER_IF[guard], 0))
            self.tx[guard] = sock
        self.nft(CONNTRACK)
        return self

    def _configure(self, guard: str) -> None:
        def ip(*args):
            self.tb.exec(guard, ["ip", *args], check=True)

        ip("link", "set", "g0", "address", GUARD_MAC)
        self.tb.exec("s", ["ip", "link", "set", SENDER_IF[guard], "address", SENDER_MAC], check=True)
        self.devices = ["g0"] + self._add_vlans(guard)
        for device in GUARD_DEVICES:
            # a device the kernel cannot make: its addresses on g0, so that every case's destination is local
            on = device if device in self.devices else "g0"
            ip("link", "set", on, "up")
            ip("addr", "add", f"{guard_address(device, 4)}/24", "dev", on)
            ip("addr", "add", f"{guard_address(device, 6)}/64", "dev", on, "nodad")
            self.tb.exec(guard, ["sysctl", "-qw", f"net.ipv4.conf.{on.replace('.', '/')}.rp_filter=0"], check=True)

    def _add_vlans(self, guard: str) -> list[str]:
        """Make the VLAN devices; none when the kernel has no 802.1Q support."""
        for device in VLAN_DEVICES:
            parent, _, vid = device.rpartition(".")
            proto = ["proto", "802.1ad"] if GUARD_DEVICES[device][0][-1][0] == TPID_AD else []
            proc = self.tb.exec(guard, ["ip", "link", "add", "link", parent, "name", device, "type", "vlan",
                                        *proto, "id", vid])
            if "Unknown device type" in proc.stderr:
                return []
            assert proc.returncode == 0, f"cannot make VLAN device {device} in {guard}: {proc.stderr.strip()}"
        return VLAN_DEVICES

    def close(self) -> None:
        if self.dep is not None:
            undeploy(self.dep.name)
        for key in list(self.rx.get_map().values()):
            self.rx.unregister(key.fileobj)
            key.fileobj.close()
        for sock in self.tx.values():
            sock.close()

    def nft(self, script: str) -> None:
        proc = self.tb.exec("n", ["nft", "-f", "-"], input=script)
        assert proc.returncode == 0, f"nft rejected the ruleset: {proc.stderr.strip()}\n{script}"

    def nft_counters(self) -> dict[str, int]:
        proc = self.tb.exec("n", ["nft", "-j", "list", "chain", "inet", nft.TABLE, nft.CHAIN], check=True)
        return nft_counters(proc.stdout)

    def guard(self, policy: str, mode: str) -> None:
        """Both guards enforce ``policy``; the chain runs in ``mode``. One chain
        serves the module: a new policy is a config change, a new mode a new
        generation swapped in."""
        if self.running == (policy, mode):
            return
        spec = POLICIES[policy]
        rules = [Rule.model_validate(r) for r in spec["rules"]]
        self.nft(nft.ruleset(rules, spec["default"], hook="input", counters=True, replace=True))
        self.running = None
        self.dep = Chain.from_dict({
            "name": chain_name("evd"), "mode": mode, "exit": "pass",
            "attach": [{"interface": "g0", "netns": self.tb.netns("x")}],
            "functions": {"fw": {"type": "firewall", **spec}},
        }).deploy()
        self.running = (policy, mode)

    # --- traffic -----------------------------------------------------------------

    def number(self) -> int:
        n = next(self.numbers)
        assert n <= IDENTS, f"this module ran out of source addresses after {IDENTS} cases"
        return n

    def run(self, cases: list[Case]) -> tuple[dict[int, Case], dict[int, list[bytes]], dict[str, dict]]:
        """Send every case's frames to both guards; {number: case}, {number: frames}
        and {guard: {number: Delivered}}."""
        numbered = {self.number(): case for case in cases}
        frames = {n: case.frames(n) for n, case in numbered.items()}
        awaited = {n for n, case in numbered.items() if case.expect == "delivered"}
        self._drain()
        for n in numbered:
            for frame in frames[n]:
                for guard in GUARDS:
                    self.tx[guard].send(frame)
        return numbered, frames, self._collect(set(numbered), awaited)

    def _drain(self) -> None:
        """Whatever a guard delivered after an earlier batch ended (a fragment set a
        later frame completed) must not be credited to this one."""
        while self.rx.select(timeout=0):
            self._read({g: collections.defaultdict(Delivered) for g in GUARDS}, set())

    def _collect(self, numbers: set[int], awaited: set[int]) -> dict[str, dict]:
        got = {g: collections.defaultdict(Delivered) for g in GUARDS}
        start = last = time.monotonic()
        while True:
            now = time.monotonic()
            complete = all(awaited <= set(got[g]) for g in GUARDS)
            if (complete and now - last > QUIET) or now - start > PATIENCE:
                return got
            if self.rx.select(timeout=0.05) and self._read(got, numbers):
                last = time.monotonic()

    def _read(self, got: dict[str, dict], numbers: set[int]) -> bool:
        anything = False
        for key, _ in self.rx.select(timeout=0):
            guard, family, proto = key.data
            while True:
                try:
                    data, addr = key.fileobj.recvfrom(65536)
                except BlockingIOError:
                    break
                n = case_number(addr[0])
                if n in numbers:
                    # an IPv4 raw socket gets the IP header too, an IPv6 one the transport on
                    payload = data[(data[0] & 15) * 4:] if family == socket.AF_INET else data
                    got[guard][n][(proto, payload)] += 1
                    anything = True
        return anything

    # --- the property ------------------------------------------------------------

    def check(self, cases: list[Case]) -> None:
        before = self.dep.stats()
        numbered, frames, got = self.run(list(cases) + controls(self.devices))
        stats = delta(before, self.dep.stats())
        problems = []
        for n, case in numbered.items():
            n_got, x_got = got["n"].get(n, Delivered()), got["x"].get(n, Delivered())
            if case.expect == "delivered" and not (n_got and x_got):
                problems.append(f"control not delivered: {case.describe()}: n {n_got.show()}, x {x_got.show()}")
            elif case.expect == "refused" and n_got:
                problems.append(f"control delivered by nftables: {case.describe()}: n {n_got.show()}")
        evasions = [n for n, case in numbered.items() if +(got["x"].get(n, Delivered()) - got["n"].get(n, Delivered()))]
        if not problems and not evasions:
            return
        lines = problems + [f"{len(evasions)} of {len(numbered)} cases reached x (the chain) but not n (nftables) "
                            f"[policy {self.running[0]}, {self.running[1]} mode]; the chain's counters for the "
                            f"batch: {stats}"]
        for n in evasions[:25]:
            lines += self._explain(numbered[n], frames[n], got["n"].get(n, Delivered()), got["x"].get(n, Delivered()))
        if len(evasions) > 25:
            lines.append("... and " + "; ".join(numbered[n].describe() for n in evasions[25:]))
        pytest.fail("\n".join(lines), pytrace=False)

    def _explain(self, case: Case, frames: list[bytes], n_got: Delivered, x_got: Delivered) -> list[str]:
        lines = [f"* {case.describe()}"]
        for i, frame in enumerate(frames):
            lines += [f"    frame {i}: {_summary(frame)}", f"             {frame.hex()}"]
        lines += [f"    n delivered {n_got.show()}", f"    x delivered {x_got.show()}"]
        nft_before, chain_before = self.nft_counters(), self.dep.stats()
        numbered, _, again = self.run([case])
        (n,) = numbered
        judged = {k: v - nft_before.get(k, 0) for k, v in self.nft_counters().items() if v != nft_before.get(k, 0)}
        lines.append(f"    sent alone again: n delivered {again['n'].get(n, Delivered()).show()}, nft counted "
                     f"{judged or 'nothing (it never reached the input hook: the stack or conntrack dropped it)'}; "
                     f"x delivered {again['x'].get(n, Delivered()).show()}, chain counters "
                     f"{delta(chain_before, self.dep.stats())}")
        return lines


def _summary(frame: bytes) -> str:
    from scapy.layers.l2 import Ether
    try:
        return Ether(frame).summary()
    except Exception as exc:   # scapy cannot dissect every lie; the hex below says it all
        return f"(scapy cannot dissect it: {exc})"


@pytest.fixture(scope="module")
def guards():
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, BPF)")
    if shutil.which("nft") is None:
        pytest.skip("nft is missing: install the Debian package nftables (scripts/setup.sh does)")
    name = bed_name("evd")
    build.down(name)  # a bed of ours left by a killed earlier run with the same pid
    tb = Testbed.up(load_topology(TOPOLOGY), name=name)
    bed = Guards(tb)
    try:
        yield bed.open()
    finally:
        bed.close()
        tb.down()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("policy", list(POLICIES))
def test_known_tricks_reach_no_further_than_nftables(guards, policy, mode):
    """One case per published trick (tests/evasion_frames.py KNOWN_TRICKS), in one batch."""
    guards.guard(policy, mode)
    guards.check(KNOWN_TRICKS)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("policy", list(POLICIES))
@settings(max_examples=10, deadline=None, phases=(Phase.explicit, Phase.reuse, Phase.generate),
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(batch=batches())
def test_generated_frames_reach_no_further_than_nftables(guards, policy, mode, batch):
    """Random mixes of the same ingredients, 40 cases a batch; not shrunk (each
    evading case is reported on its own, and a shrink step costs a batch)."""
    guards.guard(policy, mode)
    guards.check(batch)
