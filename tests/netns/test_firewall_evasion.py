"""The attacker's differential: no crafted frame reaches a host guarded by the
chain's firewall that nftables with the same policy would stop -- the kernel
judges all three.

    s ─┬─ s-n ──── g0 (n)   nftables: the policy on the input hook, with conntrack
       │                     on, so that fragments are reassembled before the filter
       ├─ s-m ──── g0 (m)   nftables: the same, stateless (no conntrack)
       └─ s-x ──── g0 (x)   the chain: one firewall function with the same rules,
                             exit: pass, at XDP on g0, in tailcall and fused mode

Two nftables guards, because conntrack changes more than reassembly: with it
on, the stack drops an IPv6 datagram whose fragment header follows a
destination options or routing header, and reads what follows an AH header
from the wrong place. A datagram counts as one nftables would stop when
neither guard delivers it.

The guards are configured alike: the same MAC and addresses on g0 and, when
the kernel has 802.1Q support, on the VLAN devices g0.10 (802.1Q), g0.20
(802.1ad) and g0.20.30 (802.1Q inside it) -- without it their addresses sit on
g0 and only untagged and priority-tagged (VID 0) frames can be delivered.
rp_filter is off; IPv6 is on with addr_gen_mode none (no link-local address,
so no DAD and no router solicitation; only MLD reports leave, and s drops
them). s has IPv6 off and sends raw frames through AF_PACKET. Nobody has a
route beyond its own subnets, so whatever a guard would answer stays inside
it. Addresses: IPv4 from 198.18.0.0/15 and IPv6 only from its 6to4 image
2002:c612::/31 (tests/evasion_frames.py says which case uses which).

What a guard delivers is read where its stack is done with it: a raw socket
per IP protocol and family gets a copy of every datagram the IP layer delivers
locally -- after netfilter's input hook, after reassembly. Every case sends
from its own source address, so each delivered datagram names its case.

The property: for every case, each datagram x delivers (its protocol and
transport bytes) is one n or m delivers too. Controls in every batch keep it
honest: well-formed frames the policy allows must reach all three guards,
well-formed ones it refuses neither nftables guard. A failure lists each
evading case with its frames (scapy summary and hex), what each guard
delivered, and, after sending it once more on its own, which nft rule judged
it in n and m (or that it never reached the filter) and the chain's counters
and drop reasons in x.
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
    BLOCKED,
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
    six_to_four_network,
)
from tests.firewall_oracle import nft_counters
from tests.testbed_fixtures import bed_name
from vnfchain import Chain
from vnfchain.chain.deploy import undeploy
from vnfchain.errors import VnfchainError
from vnfchain.firewall import nft
from vnfchain.firewall.rules import Rule
from vnfchain.testbed import Testbed, build, load_topology
from vnfchain.testbed.netlink import socket_in

pytestmark = [pytest.mark.root, pytest.mark.netns]

GUARDS = ("n", "m", "x")
NFT_GUARDS = ("n", "m")
SENDER_IF = {g: f"s-{g}" for g in GUARDS}
BLOCKED_SOURCES = [str(BLOCKED), str(six_to_four_network(BLOCKED))]
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
    "net.netfilter.nf_conntrack_frag6_high_thresh": 64 << 20,
}
TOPOLOGY = {
    "name": "evd",
    "description": "sender -- two nftables guards and a chain guard, for the evasion differential",
    "hosts": {"s": {}, **{g: {"sysctls": _GUARD_SYSCTLS} for g in GUARDS}},
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
    """The bed: the sender's packet sockets, each guard's raw sockets, the
    nftables guards' tables and the chain in x."""

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
        self.nft("n", CONNTRACK)
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
        undeploy(chain_name("evd"))     # idempotent: also after a deploy that failed half-way
        for key in list(self.rx.get_map().values()):
            self.rx.unregister(key.fileobj)
            key.fileobj.close()
        for sock in self.tx.values():
            sock.close()

    def nft(self, guard: str, script: str) -> None:
        proc = self.tb.exec(guard, ["nft", "-f", "-"], input=script)
        assert proc.returncode == 0, f"nft rejected the ruleset in {guard}: {proc.stderr.strip()}\n{script}"

    def nft_counters(self) -> dict[str, dict[str, int]]:
        """{guard: {rule comment: packets}} of the policy's chain in n and m."""
        return {g: nft_counters(self.tb.exec(g, ["nft", "-j", "list", "chain", "inet", nft.TABLE, nft.CHAIN],
                                             check=True).stdout) for g in NFT_GUARDS}

    def guard(self, policy: str, mode: str) -> None:
        """All guards enforce ``policy``; the chain runs in ``mode``. One chain
        serves the module: a new policy is a config change, a new mode a new
        generation swapped in."""
        if self.running == (policy, mode):
            return
        spec = POLICIES[policy]
        rules = [Rule.model_validate(r) for r in spec["rules"]]
        for guard in NFT_GUARDS:
            self.nft(guard, nft.ruleset(rules, spec["default"], hook="input", counters=True, replace=True))
        self.running = None
        try:
            self.dep = Chain.from_dict({
                "name": chain_name("evd"), "mode": mode, "exit": "pass",
                "attach": [{"interface": "g0", "netns": self.tb.netns("x")}],
                "functions": {"fw": {"type": "firewall", **spec}},
            }).deploy()
        except VnfchainError as exc:
            refused = str(exc)
        else:
            self.running = (policy, mode)
            return
        pytest.fail(f"the {policy} policy cannot run in the chain: {refused}", pytrace=False)

    # --- traffic -----------------------------------------------------------------

    def number(self) -> int:
        num = next(self.numbers)
        assert num <= IDENTS, f"this module ran out of source addresses after {IDENTS} cases"
        return num

    def run(self, cases: list[Case]) -> tuple[dict[int, Case], dict[int, list[bytes]], dict[str, dict]]:
        """Send every case's frames to every guard; {number: case}, {number: frames}
        and {guard: {number: Delivered}}."""
        numbered = {self.number(): case for case in cases}
        frames = {num: case.frames(num) for num, case in numbered.items()}
        awaited = {num for num, case in numbered.items() if case.expect == "delivered"}
        self._drain()
        lost = self._sender_drops()
        for num in numbered:
            for frame in frames[num]:
                for guard in GUARDS:
                    self.tx[guard].send(frame)
        got = self._collect(set(numbered), awaited)
        # a frame one guard never saw would look like a verdict
        assert self._sender_drops() == lost, "frames were lost on the way to the guards; send smaller batches"
        return numbered, frames, got

    def _sender_drops(self) -> list[int]:
        """What each veth towards a guard dropped (a full backlog or NAPI ring)."""
        return [int(self.tb.exec("s", ["cat", f"/sys/class/net/{SENDER_IF[g]}/statistics/tx_dropped"],
                                 check=True).stdout) for g in GUARDS]

    def _drain(self) -> None:
        """Whatever a guard delivered after an earlier batch ended (a fragment set a
        later frame completed) must not be credited to this one."""
        while self._read({g: collections.defaultdict(Delivered) for g in GUARDS}, set(), timeout=0):
            pass

    def _collect(self, numbers: set[int], awaited: set[int]) -> dict[str, dict]:
        got = {g: collections.defaultdict(Delivered) for g in GUARDS}
        start = last = time.monotonic()
        while True:
            now = time.monotonic()
            complete = all(awaited <= set(got[g]) for g in GUARDS)
            if (complete and now - last > QUIET) or now - start > PATIENCE:
                return got
            if self._read(got, numbers, timeout=0.05):
                last = time.monotonic()

    def _read(self, got: dict[str, dict], numbers: set[int], timeout: float) -> int:
        """Read what the raw sockets hold into ``got`` (datagrams of cases
        ``numbers`` only); how many datagrams were read."""
        read = 0
        for key, _ in self.rx.select(timeout=timeout):
            guard, family, proto = key.data
            while True:
                try:
                    data, addr = key.fileobj.recvfrom(65536)
                except BlockingIOError:
                    break
                read += 1
                num = case_number(addr[0])
                if num in numbers:
                    # an IPv4 raw socket gets the IP header too, an IPv6 one the transport on
                    payload = data[(data[0] & 15) * 4:] if family == socket.AF_INET else data
                    got[guard][num][(proto, payload)] += 1
        return read

    # --- the property ------------------------------------------------------------

    def check(self, cases: list[Case]) -> None:
        before = self.dep.stats()
        numbered, frames, got = self.run(list(cases) + controls(self.devices))
        stats = delta(before, self.dep.stats())
        problems, evasions = [], []
        for num, case in numbered.items():
            seen = {g: got[g].get(num, Delivered()) for g in GUARDS}
            if case.expect == "delivered" and not all(seen.values()):
                problems.append(f"control not delivered: {case.describe()}: {_show(seen)}")
            elif case.expect == "reassembled" and not (seen["n"] and seen["x"]):
                problems.append(f"control not delivered as nftables with conntrack (n) delivers it: "
                                f"{case.describe()}: {_show(seen)}")
            elif case.expect == "refused" and any(seen[g] for g in NFT_GUARDS):
                problems.append(f"control delivered by nftables: {case.describe()}: {_show(seen)}")
            if +(seen["x"] - (seen["n"] | seen["m"])):
                evasions.append(num)
        if not problems and not evasions:
            return
        lines = problems + [f"{len(evasions)} of {len(numbered)} cases delivered by x (the chain) beyond what "
                            f"nftables (n, m) delivered [policy {self.running[0]}, {self.running[1]} mode]; "
                            f"the chain's counters for the batch: {stats}"]
        for num in evasions[:25]:
            lines += self._explain(numbered[num], frames[num], {g: got[g].get(num, Delivered()) for g in GUARDS})
        if len(evasions) > 25:
            lines.append("... and " + "; ".join(numbered[num].describe() for num in evasions[25:]))
        pytest.fail("\n".join(lines), pytrace=False)

    def _explain(self, case: Case, frames: list[bytes], seen: dict[str, Delivered]) -> list[str]:
        lines = [f"* {case.describe()}"]
        for i, frame in enumerate(frames):
            lines += [f"    frame {i}: {_summary(frame)}", f"             {frame.hex()}"]
        lines.append(f"    delivered: {_show(seen)}")
        nft_before, chain_before = self.nft_counters(), self.dep.stats()
        numbered, _, again = self.run([case])
        (num,) = numbered
        nft_after = self.nft_counters()
        judged = {g: {k: v - nft_before[g].get(k, 0) for k, v in nft_after[g].items() if v != nft_before[g].get(k, 0)}
                  for g in NFT_GUARDS}
        lines.append(f"    sent alone again: delivered {_show({g: again[g].get(num, Delivered()) for g in GUARDS})}")
        lines.append("    nft counted " + "; ".join(
            f"{g}: {judged[g] or 'nothing (the stack or conntrack dropped it before the input hook)'}"
            for g in NFT_GUARDS))
        lines.append(f"    chain counters {delta(chain_before, self.dep.stats())}")
        return lines


def _show(seen: dict[str, Delivered]) -> str:
    return ", ".join(f"{g} {delivered.show()}" for g, delivered in seen.items())


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


@pytest.fixture(params=[(policy, mode) for policy in POLICIES for mode in MODES], ids="-".join)
def guarded(guards, request):
    """The guards enforcing one policy, the chain in one mode."""
    guards.guard(*request.param)
    return guards


def test_known_tricks_reach_no_further_than_nftables(guarded):
    """One case per published trick (tests/evasion_frames.py KNOWN_TRICKS), in one batch."""
    guarded.check(KNOWN_TRICKS)


@settings(max_examples=40, deadline=None, phases=(Phase.explicit, Phase.reuse, Phase.generate),
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
                                 HealthCheck.function_scoped_fixture])
@given(batch=batches())
def test_generated_frames_reach_no_further_than_nftables(guarded, batch):
    """Random mixes of the same ingredients, in batches of 10 to 40 cases; not
    shrunk (each evading case is reported on its own, a shrink step costs a batch)."""
    guarded.check(batch)
