"""NAT implementations the end-to-end NAT scenario runs against (tests/netns/test_nat_e2e.py).

The scenario (two LAN hosts behind the dut, a WAN server, a port forward to lan2)
is written once against the small interface below; each implementation puts its
NAT on the dut of a running ``nat`` bed (topologies/nat.yaml)::

    impl = IMPLEMENTATIONS["nftables"]()
    impl.setup(bed, snat_to="198.18.100.1", port_forward=(8080, "198.18.1.12", 8080))
    impl.translations()        # [Translation(proto="tcp", inside=("198.18.1.11", 41234), ...)]
    impl.set_udp_timeout(2)
    impl.teardown()

``NftNat`` — the kernel's nftables on the dut (masquerade + dnat) — is the oracle:
if the scenario passes with it, a failure with another implementation is that
implementation's bug, not the test's.

The interface a NAT implementation provides (``NatImpl``)
---------------------------------------------------------
``name``                         the pytest id, e.g. ``"nftables"``.
``unavailable() -> str | None``  (class method) why it cannot run here (a tool or
                                 BCC missing), or None; the test skips with that text.
``setup(bed, *, snat_to, port_forward)``
                                 make the dut translate: traffic from the LAN leaving
                                 ``dut-wan`` gets source ``snat_to`` (the dut-wan
                                 address) and a fresh port/ICMP id; TCP to
                                 ``snat_to:port_forward[0]`` arriving on ``dut-wan``
                                 goes to ``port_forward[1]:port_forward[2]``; replies
                                 are translated back. Returns once traffic is translated.
``teardown()``                   remove exactly what ``setup`` made and forget its
                                 state, so the bed forwards untranslated again and the
                                 next implementation starts clean; safe to call twice
                                 and after a failed ``setup``.
``translations() -> list[Translation]``
                                 the live mappings (expired ones excluded).
``set_udp_timeout(seconds)``     idle time after which a UDP mapping expires, for
                                 mappings made from now on; ``teardown`` restores the
                                 default.
``unconfirmed_limit``            how many unconfirmed flows (half-open TCP, unanswered
                                 UDP) it holds before it evicts one.
``evicted() -> int``             unconfirmed flows evicted for new ones so far.

The vnfchain implementation (``ChainNat``, added with the NAT function) deploys a
chain ``nat -> forward`` attached to ``dut-lan`` and ``dut-wan`` in the dut's
namespace (``Chain.from_yaml_text(...).deploy()``), with ``outside: dut-wan``,
``snat: [{src: 198.18.1.0/24, to: masquerade}]`` (``to: <snat_to>`` when that is
not dut-wan's address) and ``dnat: [{proto: tcp, port, to, to_port}]`` from
``port_forward``, and small tables (``max_flows: 4096``, ``max_unconfirmed:
1024``) so that a flood test's spoofed SYNs are many times what they hold;
``teardown`` is ``undeploy()`` (pins and maps go with it).
``translations`` turns the rows of ``Deployment.state()["nat"]`` (proto, inside,
translated, remote, state, idle) into ``Translation``s, leaving out rows idle
longer than their protocol's timeout (expired, not yet reclaimed); a row is
"dnat" when its inside and translated ends are the port forward's. Timeouts are
rendered into the program, so ``set_udp_timeout`` redeploys the chain under the
same name with ``timeouts: {udp: N}`` (a live code change; the pinned flow table
stays). The dut then has no nft table and an empty conntrack table
(``NftNat.teardown`` flushes it): every translation must come from the chain.
"""
from __future__ import annotations

import os
import re
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Protocol

from vnfchain.testbed.netlink import NETNS_DIR

if TYPE_CHECKING:
    from vnfchain.testbed import Testbed

Endpoint = tuple[str, int]  # (address, port); for ICMP echo the port is the identifier

INSIDE_IF, OUTSIDE_IF = "dut-lan", "dut-wan"


@dataclass(frozen=True)
class Translation:
    """One live mapping: ``inside`` talks to ``remote`` as ``outside``.

    kind "snat": a LAN host (inside) reaching out, seen outside as ``outside``;
    kind "dnat": a WAN host (remote) reaching ``outside``, a port forward to ``inside``."""

    kind: str      # "snat" | "dnat"
    proto: str     # "tcp" | "udp" | "icmp"
    inside: Endpoint
    outside: Endpoint
    remote: Endpoint


class NatImpl(Protocol):
    name: ClassVar[str]

    @classmethod
    def unavailable(cls) -> str | None: ...

    def setup(self, bed: Testbed, *, snat_to: str = "198.18.100.1",
              port_forward: tuple[int, str, int] = (8080, "198.18.1.12", 8080)) -> None: ...

    def teardown(self) -> None: ...

    def translations(self) -> list[Translation]: ...

    def set_udp_timeout(self, seconds: float) -> None: ...

    @property
    def unconfirmed_limit(self) -> int: ...

    def evicted(self) -> int: ...


# --- nftables: the oracle ------------------------------------------------------------

class NftNat:
    """The kernel's NAT on the dut: an ``ip vcnat`` nft table with ``masquerade`` on
    ``oifname dut-wan`` (postrouting) and ``dnat`` for the port forward
    (prerouting, ``iifname dut-wan``). Mappings live in the dut's conntrack table,
    read from ``/proc/net/nf_conntrack`` inside its namespace.

    The UDP timeout is the namespace's ``nf_conntrack_udp_timeout`` sysctls (per
    netns). An nft ``ct timeout`` object loads on this kernel but was not applied
    to the flows, so it is not used."""

    name = "nftables"
    TABLE = "vcnat"
    _UDP_SYSCTLS = ("net.netfilter.nf_conntrack_udp_timeout", "net.netfilter.nf_conntrack_udp_timeout_stream")

    def __init__(self):
        self.bed: Testbed | None = None
        self._saved_sysctls: dict[str, str] = {}

    @classmethod
    def unavailable(cls) -> str | None:
        if shutil.which("nft") is None:
            return "nft is missing: install the Debian package nftables (scripts/setup.sh does)"
        return None

    def setup(self, bed: Testbed, *, snat_to: str = "198.18.100.1",
              port_forward: tuple[int, str, int] = (8080, "198.18.1.12", 8080)) -> None:
        self.bed = bed
        outside_addr = _if_address(bed, "dut", OUTSIDE_IF)
        # masquerade takes the outside interface's address; any other address is plain snat
        source_nat = "masquerade" if snat_to == outside_addr else f"snat ip to {snat_to}"
        public_port, inside_addr, inside_port = port_forward
        self._nft(f"""
            table ip {self.TABLE} {{
                chain prerouting {{
                    type nat hook prerouting priority dstnat; policy accept;
                    iifname "{OUTSIDE_IF}" ip daddr {snat_to} tcp dport {public_port} dnat to {inside_addr}:{inside_port}
                }}
                chain postrouting {{
                    type nat hook postrouting priority srcnat; policy accept;
                    oifname "{OUTSIDE_IF}" {source_nat}
                }}
            }}
        """)

    def teardown(self) -> None:
        if self.bed is None:
            return
        bed, self.bed = self.bed, None
        try:
            bed.exec("dut", ["nft", "delete", "table", "ip", self.TABLE])  # absent after a failed setup: fine
            for key, value in self._saved_sysctls.items():
                bed.exec("dut", ["sysctl", "-q", "-w", f"{key}={value}"], check=True)
            self._saved_sysctls.clear()
        finally:
            # conntrack keeps translating flows it already NATed, table or not
            flush_conntrack(bed.netns("dut"))

    def translations(self) -> list[Translation]:
        table = self.bed.exec("dut", ["cat", "/proc/net/nf_conntrack"], check=True).stdout
        return parse_conntrack(table)

    def set_udp_timeout(self, seconds: float) -> None:
        for key in self._UDP_SYSCTLS:
            if key not in self._saved_sysctls:
                self._saved_sysctls[key] = self.bed.exec("dut", ["sysctl", "-n", key], check=True).stdout.strip()
            self.bed.exec("dut", ["sysctl", "-q", "-w", f"{key}={max(1, round(seconds))}"], check=True)

    @property
    def unconfirmed_limit(self) -> int:
        """conntrack evicts only when its whole table is full (early drop)."""
        return int(self.bed.exec("dut", ["cat", "/proc/sys/net/netfilter/nf_conntrack_max"], check=True).stdout)

    def evicted(self) -> int:
        """early_drop, summed over the CPUs' rows of the namespace's conntrack statistics."""
        header, *rows = self.bed.exec("dut", ["cat", "/proc/net/stat/nf_conntrack"], check=True).stdout.split("\n")
        column = header.split().index("early_drop")
        return sum(int(row.split()[column], 16) for row in rows if row.strip())

    def _nft(self, script: str) -> None:
        proc = self.bed.exec("dut", ["nft", "-f", "-"], input=script)
        if proc.returncode != 0:
            raise AssertionError(f"nft rejected the NAT table: {proc.stderr.strip()}\n{script}")


class ChainNat:
    """vnfchain's XDP NAT: a chain nat -> forward on the dut (see the module docstring)."""

    name = "vnfchain"
    MAX_FLOWS, MAX_UNCONFIRMED = 4096, 1024

    def __init__(self):
        self.bed = self.dep = None
        self.udp_timeout = 30

    @classmethod
    def unavailable(cls) -> str | None:
        try:
            import bcc  # noqa: F401
        except ImportError:
            return "needs BCC (python3-bpfcc)"
        return None

    def setup(self, bed: Testbed, *, snat_to: str = "198.18.100.1",
              port_forward: tuple[int, str, int] = (8080, "198.18.1.12", 8080)) -> None:
        self.bed, self.snat_to, self.port_forward = bed, snat_to, port_forward
        self._deploy()

    def _deploy(self) -> None:
        from vnfchain import Chain
        port, to, to_port = self.port_forward
        to_addr = "masquerade" if self.snat_to == _if_address(self.bed, "dut", OUTSIDE_IF) else self.snat_to
        ns = self.bed.netns("dut")
        text = "\n".join([
            f"name: vct{os.getpid()}-nate2e",
            f"attach: [{{interface: dut-lan, netns: {ns}}}, {{interface: {OUTSIDE_IF}, netns: {ns}}}]",
            "functions:",
            "  nat:",
            "    type: nat",
            f"    outside: {OUTSIDE_IF}",
            f"    snat: [{{src: 198.18.1.0/24, to: {to_addr}}}]",
            f"    dnat: [{{proto: tcp, port: {port}, to: {to}, to_port: {to_port}}}]",
            f"    timeouts: {{udp: {self.udp_timeout}}}",
            f"    max_flows: {self.MAX_FLOWS}",
            f"    max_unconfirmed: {self.MAX_UNCONFIRMED}",
            "    next: out",
            "  out: {type: forward}",
        ]) + "\n"
        self.dep = Chain.from_yaml_text(text).deploy()

    def teardown(self) -> None:
        if self.dep is not None:
            self.dep.undeploy()
            self.dep = None
        self.udp_timeout = 30

    def translations(self) -> list[Translation]:
        def endpoint(text: str) -> tuple[str, int]:
            addr, _, port = text.partition(":")
            return addr, int(port or 0)

        port, to, to_port = self.port_forward
        out = []
        for proto, inside, translated, remote, _state, _idle in self.dep.state()["nat"][1]:
            kind = "dnat" if endpoint(inside) == (to, to_port) and endpoint(translated)[1] == port else "snat"
            out.append(Translation(kind, proto, endpoint(inside), endpoint(translated), endpoint(remote)))
        return out

    def set_udp_timeout(self, seconds: float) -> None:
        self.udp_timeout = max(1, round(seconds))
        self._deploy()   # same name: a live change; the pinned flow table stays

    @property
    def unconfirmed_limit(self) -> int:
        return self.MAX_UNCONFIRMED

    def evicted(self) -> int:
        return self.dep.stats()["nat"]["evicted_unconfirmed"]


IMPLEMENTATIONS: dict[str, type[NatImpl]] = {NftNat.name: NftNat, ChainNat.name: ChainNat}


# --- helpers -------------------------------------------------------------------------

def _if_address(bed: Testbed, host: str, ifname: str) -> str:
    for name, addresses in bed.topology.interfaces(host):
        if name == ifname and addresses:
            return str(addresses[0].ip)
    raise AssertionError(f"{host}:{ifname} has no address in test bed '{bed.name}'")


_PAIR = re.compile(r"(\w+)=(\S+)")


def parse_conntrack(text: str) -> list[Translation]:
    """The NATed entries of a ``/proc/net/nf_conntrack`` table (one flow a line:
    the original tuple's src/dst/sport/dport, or type/code/id for ICMP, then the
    reply tuple's). An entry is translated when its reply tuple is not the original
    one reversed; untranslated flows are left out."""
    found = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 3 or fields[0] != "ipv4" or fields[2] not in ("tcp", "udp", "icmp"):
            continue
        proto = fields[2]
        orig: dict[str, str] = {}
        reply: dict[str, str] = {}
        for key, value in _PAIR.findall(line):
            (reply if key in orig else orig).setdefault(key, value)
        port_keys = ("id", "id") if proto == "icmp" else ("sport", "dport")
        o_src, o_dst = (orig["src"], int(orig[port_keys[0]])), (orig["dst"], int(orig[port_keys[1]]))
        r_src, r_dst = (reply["src"], int(reply[port_keys[0]])), (reply["dst"], int(reply[port_keys[1]]))
        if r_dst != o_src:      # the answer goes to another address: source NAT
            found.append(Translation("snat", proto, inside=o_src, outside=r_dst, remote=o_dst))
        elif r_src != o_dst:    # the answer comes from another address: destination NAT
            found.append(Translation("dnat", proto, inside=r_src, outside=o_dst, remote=o_src))
    return found


def flush_conntrack(netns: str) -> None:
    """Empty the conntrack table of ``netns`` (pyroute2's ctnetlink; conntrack-tools
    may be missing)."""
    _in_netns(netns, lambda: _flush())


def _flush() -> None:
    from pyroute2 import Conntrack

    with Conntrack() as ct:
        ct.flush()


def _in_netns(netns: str, work: Callable[[], object]) -> object:
    """Run ``work`` in a short-lived thread that has entered ``netns`` (setns(2) moves
    only the calling thread), so sockets it opens belong to that namespace."""
    from pyroute2 import netns as pr_netns

    result: dict[str, object] = {}

    def run():
        try:
            pr_netns.setns(str(NETNS_DIR / netns), flags=0, fork=False)
            result["value"] = work()
        except BaseException as exc:
            result["error"] = exc

    worker = threading.Thread(target=run, name=f"setns-{netns}")
    worker.start()
    worker.join()
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    return result.get("value")
