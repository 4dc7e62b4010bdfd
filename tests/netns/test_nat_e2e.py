"""NAT end to end on the nat bed (lan1, lan2 -- dut -- server), once per NAT
implementation (tests/nat_impls.py): the kernel's nftables first, as the oracle
that proves the scenario sound, then vnfchain's own NAT chain.

The server has no route back to the LAN (topologies/nat.yaml), so every answer
that reaches a LAN host went through the dut's NAT. Each test is something a user
of a NAT gateway would check: LAN hosts browse and the server sees the NAT
address; hundreds of concurrent connections each get their own working mapping;
a port forward exposes an inside server; an idle UDP mapping expires; ping works;
a flood of spoofed SYNs on the port forward breaks no connection and keeps no new
one out; GRE and SCTP never reach the WAN with an inside address.
"""
from __future__ import annotations

import contextlib
import ipaddress
import json
import selectors
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.nat_impls import IMPLEMENTATIONS, NatImpl
from tests.testbed_fixtures import TOPOLOGIES, bed_name, echoes
from vnfchain.testbed import Testbed, build
from vnfchain.testbed.netlink import socket_in

pytestmark = [pytest.mark.root, pytest.mark.netns]

NAT_ADDR = "198.18.100.1"            # dut-wan: what the outside sees
PORT_FORWARD = (8080, "198.18.1.12", 8080)  # NAT_ADDR:8080 -> lan2:8080
HOLD_CLIENT = Path(__file__).resolve().parent.parent / "tcp_hold_client.py"
SYN_FLOOD = Path(__file__).resolve().parent.parent / "syn_flood.py"
LAN = ipaddress.IPv4Network("198.18.1.0/24")


@pytest.fixture(scope="module")
def nat_bed():
    name = bed_name("nat")
    build.down(name)  # a bed of ours left by a killed earlier run with the same pid
    tb = Testbed.up(TOPOLOGIES / "nat.yaml", name=name)
    try:
        yield tb
    finally:
        tb.down()


@pytest.fixture(scope="module", params=["nftables", "vnfchain"])
def nat(request, nat_bed) -> NatImpl:
    impl_class = IMPLEMENTATIONS[request.param]
    if reason := impl_class.unavailable():
        pytest.skip(reason)
    impl = impl_class()
    try:
        impl.setup(nat_bed, snat_to=NAT_ADDR, port_forward=PORT_FORWARD)
        yield impl
    finally:
        impl.teardown()


def test_without_nat_the_lan_cannot_reach_the_server(nat_bed):
    """The scenario's premise: answers reach the LAN only through NAT. (Runs before
    any implementation is set up: module fixtures are created in test order.)"""
    answer = nat_bed.http_get("lan1", f"http://{nat_bed.addr('server')}/whoami", timeout=1)
    assert not answer.ok


def test_lan_hosts_browse_and_the_server_sees_the_nat_address(nat_bed, nat):
    url = f"http://{nat_bed.addr('server')}/whoami"
    seen = {}
    for host in ("lan1", "lan2"):
        answer = nat_bed.http_get(host, url)
        assert answer.ok, f"{host}: {answer.error}"
        seen[host] = _endpoint(answer.body)
    assert {addr for addr, _ in seen.values()} == {NAT_ADDR}, seen
    assert nat_bed.http_get("lan1", f"http://{nat_bed.addr('server')}/").body == "server\n"


def test_500_concurrent_connections_get_distinct_working_mappings(nat_bed, nat):
    server, per_host = nat_bed.addr("server"), 250
    clients = {host: nat_bed.popen(host, [sys.executable, "-I", str(HOLD_CLIENT), server, "7",
                                          str(per_host), host],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
               for host in ("lan1", "lan2")}
    try:
        reports = _read_reports(clients, timeout=15)
        peers = _established_peers(nat_bed, "server", 7)  # all held open right now
        mapped = [t for t in nat.translations() if t.proto == "tcp" and t.remote == (server, 7)]
    finally:
        _stop_clients(clients)

    for host, report in reports.items():
        assert report["failed"] == [] and report["open"] == per_host, f"{host}: {report['failed'][:5]}"
    assert len(peers) == 2 * per_host, f"the server holds {len(peers)} connections"
    assert len(set(peers)) == len(peers)                      # distinct (address, port) pairs
    assert {addr for addr, _ in peers} == {NAT_ADDR}          # none leaked untranslated
    inside = {(t.inside[0], t.inside[1]) for t in mapped}
    for host, report in reports.items():
        assert {(nat_bed.addr(host), port) for port in report["local_ports"]} <= inside
    assert {t.outside for t in mapped} >= set(peers)


def test_port_forward_reaches_the_lan_server_from_the_wan(nat_bed, nat):
    answer = nat_bed.http_get("server", f"http://{NAT_ADDR}:8080/")
    assert answer.ok, answer.error
    assert answer.body == "lan2\n"
    whoami = nat_bed.http_get("server", f"http://{NAT_ADDR}:8080/whoami")
    assert _endpoint(whoami.body)[0] == nat_bed.addr("server")  # forwarded, not masqueraded
    forwards = [t for t in nat.translations() if t.kind == "dnat"]
    assert any(t.outside == (NAT_ADDR, 8080) and t.inside == (PORT_FORWARD[1], 8080) for t in forwards)
    # only the forwarded port is open: nothing else of lan2 is exposed
    assert nat_bed.http_get("server", f"http://{NAT_ADDR}:8081/", timeout=1).status == 0


def test_idle_udp_mapping_expires(nat_bed, nat):
    timeout = 2
    nat.set_udp_timeout(timeout)
    lan = socket_in(nat_bed.netns("lan1"), socket.AF_INET, socket.SOCK_DGRAM)
    far = socket_in(nat_bed.netns("server"), socket.AF_INET, socket.SOCK_DGRAM)
    with lan, far:
        lan.bind(("0.0.0.0", 0))
        far.bind((nat_bed.addr("server"), 0))
        lan.settimeout(1.0)
        far.settimeout(1.0)
        lan.sendto(b"hello", far.getsockname())
        data, mapped = far.recvfrom(100)
        assert data == b"hello" and mapped[0] == NAT_ADDR
        far.sendto(b"while mapped", mapped)
        assert lan.recv(100) == b"while mapped"                # the mapping carries replies
        inside = (nat_bed.addr("lan1"), lan.getsockname()[1])
        assert _udp_mapping(nat, inside) == [mapped]

        time.sleep(timeout + 1.0)                               # idle past the timeout

        assert _udp_mapping(nat, inside) == []
        far.sendto(b"after expiry", mapped)
        lan.settimeout(0.5)
        with pytest.raises(TimeoutError):
            lan.recv(100)


def test_ping_crosses_the_nat_from_the_nat_address(nat_bed, nat):
    icmp = socket_in(nat_bed.netns("server"), socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    with icmp:
        for host in ("lan1", "lan2"):
            result = nat_bed.ping(host, nat_bed.addr("server"), count=3)
            assert result.ok, f"{host}: {result.output}"
        requests = _echo_requests(icmp, want=6, timeout=1.0)
    assert len(requests) == 6
    assert {src for src, _ in requests} == {NAT_ADDR}
    # two pings (identifiers) at once, one address: the ids the server sees differ
    assert len({ident for _, ident in requests}) == 2


def test_same_icmp_id_from_both_hosts_is_kept_apart(nat_bed, nat):
    """lan1 and lan2 send echo requests with the same identifier: each gets its
    own reply back (the NAT translates the identifier, not only the address)."""
    ident, server = 0x5eed, nat_bed.addr("server")
    socks = {h: socket_in(nat_bed.netns(h), socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
             for h in ("lan1", "lan2")}
    try:
        for seq, (host, sock) in enumerate(socks.items(), 1):
            sock.sendto(_echo_request(ident, seq, host.encode()), (server, 0))
        got = {host: _echo_replies(sock, ident, timeout=0.5) for host, sock in socks.items()}
    finally:
        for sock in socks.values():
            sock.close()
    assert got == {"lan1": [(1, b"lan1")], "lan2": [(2, b"lan2")]}


def test_a_syn_flood_on_the_port_forward_breaks_no_connection_and_keeps_none_out(nat_bed, nat):
    """20,000 spoofed SYNs (each sent twice) from random 198.19.0.0/16 sources hit
    the port forward for about four seconds: many times what vnfchain's tables
    hold here (tests/nat_impls.py). Echo connections through source NAT and
    downloads through source NAT and through the port forward, all opened
    before, carry on; LAN hosts open new connections during and after it."""
    server, flows, rate = nat_bed.addr("server"), 20_000, 5_000
    with contextlib.ExitStack() as stack:
        held = []
        for i in range(20):
            sock = stack.enter_context(socket_in(nat_bed.netns("lan1"), socket.AF_INET, socket.SOCK_STREAM))
            sock.settimeout(3)
            sock.connect((server, 7))
            assert echoes(sock, f"before {i}\n".encode())
            held.append(sock)
        size = 2_000_000
        downloads = {url: stack.enter_context(_download(nat_bed, host, url))
                     for host, url in (("lan1", f"http://{server}/download?size={size}&seconds=7"),
                                       ("server", f"http://{NAT_ADDR}:8080/download?size={size}&seconds=7"))}
        evicted = nat.evicted()
        flood = stack.enter_context(_popen(nat_bed, "server", [sys.executable, "-I", str(SYN_FLOOD), NAT_ADDR,
                                                               "8080", str(flows), str(rate)]))
        during = []
        while flood.poll() is None:
            during.append(nat_bed.http_get("lan1", f"http://{server}/", timeout=2))
        assert flood.returncode == 0 and json.loads(flood.stdout.read())["flows"] == flows
        assert len(during) >= 3 and all(a.ok and a.body == "server\n" for a in during), during

        for i, sock in enumerate(held):
            assert echoes(sock, f"after {i}\n".encode()), f"echo connection {i} broke"
        for url, download in downloads.items():
            body, err = download.communicate(timeout=20)
            assert download.returncode == 0 and len(body) == size, f"{url}: {err.decode()}"
    assert nat_bed.http_get("lan1", f"http://{server}/").ok
    assert nat_bed.http_get("server", f"http://{NAT_ADDR}:8080/").body == "lan2\n"
    assert nat.evicted() - evicted >= flows - nat.unconfirmed_limit


def test_gre_and_sctp_never_reach_the_wan_with_an_inside_address(nat_bed, nat):
    """Raw GRE and SCTP packets from a LAN host: the server captures none with a
    LAN source (vnfchain drops them, nftables gives them the NAT address). The
    same packets from the dut itself arrive (nftables: lan1's translated ones):
    the capture works."""
    server = nat_bed.addr("server")
    from scapy.layers.sctp import SCTP, SCTPChunkInit
    packets = {47: bytes.fromhex("00000800") + bytes(20),                       # GRE, IPv4 inside
               # a valid INIT (CRC32c right): conntrack leaves an invalid one untranslated, so
               # nftables' masquerade alone lets that leave with the inside address
               132: bytes(SCTP(sport=4000, dport=80) / SCTPChunkInit(init_tag=0x1234, a_rwnd=65535, n_out_streams=1,
                                                                    n_in_streams=1, init_tsn=1))}
    with contextlib.ExitStack() as stack:
        captures = {proto: stack.enter_context(socket_in(nat_bed.netns("server"), socket.AF_INET,
                                                         socket.SOCK_RAW, proto)) for proto in packets}
        for host in ("lan1", "dut"):
            for proto, payload in packets.items():
                with socket_in(nat_bed.netns(host), socket.AF_INET, socket.SOCK_RAW, proto) as sender, \
                        contextlib.suppress(PermissionError):   # nftables will not masquerade the dut's own GRE
                    sender.sendto(payload, (server, 0))
        seen = {(proto, src) for proto, sock in captures.items() for src in _sources(sock, timeout=0.5)}
    assert not {(proto, src) for proto, src in seen if ipaddress.IPv4Address(src) in LAN}, seen
    assert {(47, NAT_ADDR), (132, NAT_ADDR)} <= seen


# --- helpers -------------------------------------------------------------------------

def _endpoint(body: str) -> tuple[str, int]:
    addr, _, port = body.strip().rpartition(":")
    return addr, int(port)


def _read_reports(clients: dict[str, subprocess.Popen], timeout: float) -> dict[str, dict]:
    """The JSON line each hold client prints once its connections are up."""
    sel = selectors.DefaultSelector()
    for host, proc in clients.items():
        sel.register(proc.stdout, selectors.EVENT_READ, host)
    reports, deadline = {}, time.monotonic() + timeout
    while len(reports) < len(clients) and (left := deadline - time.monotonic()) > 0:
        for key, _ in sel.select(timeout=left):
            line = key.fileobj.readline()
            sel.unregister(key.fileobj)
            assert line, f"the client on {key.data} exited with status {clients[key.data].wait()}"
            reports[key.data] = json.loads(line)
    sel.close()
    missing = set(clients) - set(reports)
    assert not missing, f"no report within {timeout:g} s from {sorted(missing)}"
    return reports


def _stop_clients(clients: dict[str, subprocess.Popen]) -> None:
    """Closing stdin tells a hold client to close its connections and exit; one
    that does not is killed (by its own Popen: our child, nobody else's)."""
    for proc in clients.values():
        proc.stdin.close()
    for proc in clients.values():
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def _established_peers(bed, host: str, port: int) -> list[tuple[str, int]]:
    """Remote (address, port) of every established TCP socket on local ``port`` in
    ``host``'s namespace: the server's own view of who is connected."""
    rows = bed.exec(host, ["cat", "/proc/net/tcp"], check=True).stdout.splitlines()[1:]
    peers = []
    for row in rows:
        local, remote, state = row.split()[1:4]
        if state == "01" and int(local.rsplit(":", 1)[1], 16) == port:
            addr_hex, port_hex = remote.split(":")
            addr = socket.inet_ntoa(struct.pack("<I", int(addr_hex, 16)))
            peers.append((addr, int(port_hex, 16)))
    return peers


def _udp_mapping(nat: NatImpl, inside: tuple[str, int]) -> list[tuple[str, int]]:
    return [t.outside for t in nat.translations() if t.proto == "udp" and t.inside == inside]


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def _echo_request(ident: int, seq: int, payload: bytes) -> bytes:
    header = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
    return struct.pack("!BBHHH", 8, 0, _checksum(header + payload), ident, seq) + payload


def _icmp_packets(sock: socket.socket, timeout: float):
    """(source, type, id, seq, payload) of ICMP packets a raw socket receives."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            packet, (src, _) = sock.recvfrom(2048)
        except TimeoutError:
            return
        ihl = (packet[0] & 0x0F) * 4
        kind, _, _, ident, seq = struct.unpack("!BBHHH", packet[ihl:ihl + 8])
        yield src, kind, ident, seq, packet[ihl + 8:]


def _echo_requests(sock: socket.socket, want: int, timeout: float) -> list[tuple[str, int]]:
    found = []
    for src, kind, ident, _, _ in _icmp_packets(sock, timeout):
        if kind == 8:
            found.append((src, ident))
            if len(found) == want:
                break
    return found


def _echo_replies(sock: socket.socket, ident: int, timeout: float) -> list[tuple[int, bytes]]:
    found = []
    for _, kind, got_ident, seq, payload in _icmp_packets(sock, timeout):
        if kind == 0 and got_ident == ident:
            found.append((seq, payload))
    return found


@contextlib.contextmanager
def _popen(bed, host: str, argv: list[str]):
    """A process in host's namespace, stdout and stderr piped; killed (by its own
    Popen: our child) if still running at the end."""
    proc = bed.popen(host, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


@contextlib.contextmanager
def _download(bed, host: str, url: str):
    """curl fetching url from host, started once its connection is up."""
    with _popen(bed, host, ["curl", "-sS", "--noproxy", "*", "--max-time", "30", url]) as proc:
        time.sleep(0.3)
        assert proc.poll() is None, f"{url}: {proc.communicate()[1].decode()}"
        yield proc


def _sources(sock: socket.socket, timeout: float) -> list[str]:
    """Source addresses of the packets a raw socket receives within timeout."""
    found, deadline = [], time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            _, (src, _) = sock.recvfrom(2048)
        except TimeoutError:
            break
        found.append(src)
    return found
