"""The load balancer end to end on the lb bed (client1, client2 -- dut -- be1,
be2, be3): clients use a virtual IP, backends answer with their name. Requests
spread by weight; a live backend removal moves only that backend's connections;
a long download survives a drain of its backend; in dsr mode the backends
answer the client directly."""
from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import time
from collections import Counter

import pytest
import yaml

from tests.testbed_fixtures import TOPOLOGIES, bed_name, echoes
from vnfchain import Chain
from vnfchain.chain import deploy as deploy_mod
from vnfchain.testbed import Testbed, build
from vnfchain.testbed.netlink import socket_in

pytestmark = [pytest.mark.root, pytest.mark.netns]

VIP = "198.18.0.100"
VIP_DSR = "198.18.0.101"
BACKENDS = {"be1": "198.18.2.11", "be2": "198.18.2.12", "be3": "198.18.2.13"}
WEIGHTS = {"be1": 1, "be2": 2, "be3": 1}
CHAIN = f"vct{os.getpid()}-lbe2e"


@pytest.fixture(scope="module")
def lb_bed():
    pytest.importorskip("bcc")
    name = bed_name("lb")
    build.down(name)
    tb = Testbed.up(TOPOLOGIES / "lb.yaml", name=name)
    try:
        yield tb
    finally:
        deploy_mod.undeploy(CHAIN)
        tb.down()


def backends(weights=WEIGHTS, drain=(), without=()):
    return [dict({"ip": BACKENDS[h], "weight": w}, **({"drain": True} if h in drain else {}))
            for h, w in weights.items() if h not in without]


@pytest.fixture(scope="module")
def lb(lb_bed):
    """change(web=[...], echo=[...]): deploys (or changes live) the chain on the dut."""
    ns = lb_bed.netns("dut")

    def change(web=None, echo=None):
        spec = {"name": CHAIN,
                "attach": [{"interface": "dut-lan", "netns": ns}, {"interface": "dut-srv", "netns": ns}],
                "functions": {
                    "lb": {"type": "loadbalancer", "next": "out", "services": [
                        {"name": "web", "vip": VIP, "port": 80, "backends": web or backends()},
                        {"name": "echo", "vip": VIP, "port": 7, "backends": echo or backends()},
                        {"name": "dsr", "vip": VIP_DSR, "port": 80, "mode": "dsr", "backends": backends()}]},
                    "out": {"type": "forward"}}}
        return Chain.from_yaml_text(yaml.safe_dump(spec)).deploy()
    change()
    return change


def served_by(bed, port: int) -> dict[tuple[str, int], str]:
    """{(client address, client port): backend} for established connections to ``port``."""
    out = {}
    for host in BACKENDS:
        lines = bed.exec(host, ["ss", "-Htn", "state", "established", f"( sport = :{port} )"],
                         check=True).stdout
        for peer in re.findall(r"\s(\d+\.\d+\.\d+\.\d+):(\d+)\s*$", lines, re.M):
            out[(peer[0], int(peer[1]))] = host
    return out


def test_ping_to_the_vip_is_answered(lb_bed, lb):
    assert lb_bed.ping("client1", VIP, count=3).ok


def test_300_requests_spread_by_weight(lb_bed, lb):
    answers = Counter()
    for i in range(300):
        answer = lb_bed.http_get(("client1", "client2")[i % 2], f"http://{VIP}/")
        assert answer.ok, answer.error
        answers[answer.body.strip()] += 1
    total = sum(WEIGHTS.values())
    assert set(answers) == set(BACKENDS), answers
    for host, weight in WEIGHTS.items():
        assert abs(answers[host] / 300 - weight / total) <= 0.10, answers


def test_removing_a_backend_moves_only_its_connections(lb_bed, lb):
    with contextlib.ExitStack() as stack:
        socks = []
        for i in range(60):
            sock = stack.enter_context(socket_in(lb_bed.netns("client1"), socket.AF_INET, socket.SOCK_STREAM))
            sock.settimeout(3)
            sock.connect((VIP, 7))
            assert echoes(sock, f"hello {i}\n".encode())
            socks.append(sock)
        where = served_by(lb_bed, 7)
        on = {s: where[("198.18.1.11", s.getsockname()[1])] for s in socks}
        assert set(on.values()) == set(BACKENDS), Counter(on.values())

        try:
            lb(echo=backends(without=("be3",)))        # live: be3 leaves the echo service
            for i, sock in enumerate(socks):
                works = echoes(sock, f"again {i}\n".encode())
                # be3's connections now reach a backend that never saw them (reset)
                assert works == (on[sock] != "be3"), (i, on[sock])
            assert lb_bed.tcp_echo("client2", VIP, 7, b"new") == b"new"
        finally:
            lb(echo=backends())


def test_a_long_download_survives_a_drain(lb_bed, lb):
    size = 3_000_000
    download = lb_bed.popen("client2", ["curl", "-sS", "--noproxy", "*", "--max-time", "20",
                                        f"http://{VIP}/download?size={size}&seconds=3"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 3
        while not (busy := [h for (addr, _), h in served_by(lb_bed, 80).items() if addr == "198.18.1.12"]):
            assert time.monotonic() < deadline, "the download did not start"
            time.sleep(0.05)
        (serving,) = busy
        lb(web=backends(drain=(serving,)))           # live: no new flows to it
        others = Counter(lb_bed.http_get("client1", f"http://{VIP}/").body.strip() for _ in range(20))
        assert serving not in others and sum(others.values()) == 20, others
        body, err = download.communicate(timeout=25)
    finally:
        if download.poll() is None:
            download.kill()
            download.wait()
        lb(web=backends())
    assert download.returncode == 0, err
    assert len(body) == size and set(body.split(b"\n")[:-1]) == {serving.encode()}


def test_dsr_backends_answer_the_client_directly(lb_bed, lb):
    for host in BACKENDS:   # the VIP on a loopback, never announced by ARP
        lb_bed.exec(host, ["ip", "addr", "add", f"{VIP_DSR}/32", "dev", "lo"], check=True)
        for setting in ("net.ipv4.conf.all.arp_ignore=1", "net.ipv4.conf.all.arp_announce=2"):
            lb_bed.exec(host, ["sysctl", "-qw", setting], check=True)
    for addr in BACKENDS.values():   # dsr needs the backends' MACs in the dut's neighbour table
        assert lb_bed.ping("dut", addr, count=1).ok
    dep = lb()
    replies = dep.stats()["lb"].get("replies", 0)
    answers = Counter()
    for i in range(30):
        answer = lb_bed.http_get(("client1", "client2")[i % 2], f"http://{VIP_DSR}/whoami")
        assert answer.ok, answer.error
        assert answer.body.startswith(("198.18.1.11:", "198.18.1.12:"))   # the client's own address
        answers[lb_bed.http_get("client1", f"http://{VIP_DSR}/").body.strip()] += 1
    assert set(answers) <= set(BACKENDS) and len(answers) >= 2, answers
    # the answers came from the VIP itself: nothing was translated on the way back
    assert dep.stats()["lb"].get("replies", 0) == replies
