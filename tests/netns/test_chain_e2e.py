"""End to end on the pvp bed (client -- dut -- server): a chain deployed on the
dut's two interfaces carries ping and TCP, counts exactly what was sent, keeps
running after the deploying process has gone, and undeploys without a trace."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from vnfchain import AttachError, Chain, Deployment
from vnfchain import netlink
from vnfchain.chain import deploy as deploy_mod
from vnfchain.chain.record import record_path
from tests.chain_fixtures import MODES, chain_name

pytestmark = pytest.mark.root

CHAIN = textwrap.dedent("""
    name: {name}
    mode: {mode}
    attach:
      - {{interface: dut-lan, netns: {ns}}}
      - {{interface: dut-wan, netns: {ns}}}
    functions:
      ingress: {{type: counter, next: steer}}
      steer:
        type: classify
        rules: [{{proto: tcp, label: web}}]
        next: {{web: web, default: out}}
      web: {{type: counter, next: out}}
      out: {{type: forward}}
""")


def chain_yaml(bed, mode, tag):
    return CHAIN.format(name=chain_name(tag), mode=mode, ns=bed.netns("dut"))


def xdp_on(bed, ifname):
    index = netlink.ifindex(ifname, bed.netns("dut"))
    return netlink.xdp_state(index, bed.netns("dut"))


@pytest.fixture(params=MODES)
def running(request, pvp_bed):
    dep = Chain.from_yaml_text(chain_yaml(pvp_bed, request.param, f"e2e{request.param[0]}")).deploy()
    try:
        yield dep
    finally:
        dep.undeploy()


def test_ping_crosses_the_chain_and_every_packet_is_counted(pvp_bed, running):
    server = pvp_bed.addr("server")
    pvp_bed.ping("client", server, count=1)  # let ARP settle on both sides
    before = running.stats()
    result = pvp_bed.ping("client", server, count=5)
    after = running.stats()

    assert result.ok and result.received == 5
    icmp = after["ingress"].get("icmp_packets", 0) - before["ingress"].get("icmp_packets", 0)
    assert icmp == 10  # 5 requests in on dut-lan, 5 replies in on dut-wan
    assert after["out"]["redirect"] - before["out"]["redirect"] >= 10  # forwarded in XDP
    assert all(a.mode == "native" for a in running.record.attachments)


def test_tcp_transfer_takes_the_web_branch(pvp_bed, running):
    payload = bytes(range(256)) * 800  # 200 KiB, echoed back
    before = running.stats()
    echoed = pvp_bed.tcp_echo("client", pvp_bed.addr("server"), 7, payload)
    after = running.stats()

    assert echoed == payload
    web = after["web"].get("tcp_packets", 0) - before["web"].get("tcp_packets", 0)
    seen = after["ingress"].get("tcp_packets", 0) - before["ingress"].get("tcp_packets", 0)
    assert web == seen > 20
    assert after["steer"]["branch"] - before["steer"]["branch"] == seen


def test_http_through_the_chain(pvp_bed, running):
    answer = pvp_bed.http_get("client", f"http://{pvp_bed.addr('server')}/")
    assert answer.ok and "server" in answer.body


def test_chain_outlives_the_cli_and_undeploy_leaves_nothing(pvp_bed, tmp_path):
    name = chain_name("cli")
    chain_file = tmp_path / "chain.yaml"
    chain_file.write_text(chain_yaml(pvp_bed, "tailcall", "cli"))
    cli = [sys.executable, "-m", "vnfchain.cli"]
    deployed = subprocess.run(cli + ["deploy", str(chain_file)], capture_output=True, text=True)
    assert deployed.returncode == 0, deployed.stderr
    try:
        # the deploying process has exited: the chain must still forward and count
        assert pvp_bed.ping("client", pvp_bed.addr("server"), count=3).ok
        stats = json.loads(subprocess.run(cli + ["stats", name, "--json"], capture_output=True,
                                          text=True, check=True).stdout)
        assert stats["ingress"]["icmp_packets"] >= 6
        assert xdp_on(pvp_bed, "dut-lan")[0] == Deployment.get(name).record.entry_prog_id
    finally:
        undeployed = subprocess.run(cli + ["undeploy", name], capture_output=True, text=True)
    assert undeployed.returncode == 0, undeployed.stderr
    assert xdp_on(pvp_bed, "dut-lan") is None and xdp_on(pvp_bed, "dut-wan") is None
    assert not (deploy_mod.pin_root() / name).exists()
    assert not record_path(name).exists()
    # the bed still forwards through the kernel stack
    assert pvp_bed.ping("client", pvp_bed.addr("server"), count=1).ok
    again = subprocess.run(cli + ["undeploy", name], capture_output=True, text=True)
    assert again.returncode == 1 and f"chain {name} is not deployed" in again.stderr   # as `ip link del`
    again = subprocess.run(cli + ["undeploy", name, "--ignore-missing"], capture_output=True, text=True)
    assert again.returncode == 0 and "not deployed" in again.stdout


def test_an_interface_already_taken_is_refused_and_the_owner_named(pvp_bed, running):
    other = Chain.from_yaml_text(chain_yaml(pvp_bed, "tailcall", "busy"))
    with pytest.raises(AttachError) as info:
        other.deploy()
    assert f"chain '{running.name}'" in info.value.message
    assert not (deploy_mod.pin_root() / other.name).exists()
    assert pvp_bed.ping("client", pvp_bed.addr("server"), count=1).ok  # the running chain is untouched
    assert running.health() == []


def _live_yaml(bed, *, rules, extra):
    rules_yaml = ", ".join(f"{{proto: tcp, dport: {p}, label: web}}" for p in rules)
    return textwrap.dedent(f"""
        name: {chain_name('live')}
        attach:
          - {{interface: dut-lan, netns: {bed.netns('dut')}}}
          - {{interface: dut-wan, netns: {bed.netns('dut')}}}
        functions:
          ingress: {{type: counter, next: steer}}
          steer:
            type: classify
            rules: [{rules_yaml}]
            next: {{web: web, default: {'extra' if extra else 'out'}}}
          web: {{type: counter, next: out}}
    """) + ("  extra: {type: counter, next: out}\n" if extra else "") + "  out: {type: forward}\n"


def test_live_changes_lose_no_packets(pvp_bed):
    server = pvp_bed.addr("server")
    steps = [dict(rules=[80], extra=False), dict(rules=[80, 443], extra=False),
             dict(rules=list(range(1000, 1040)), extra=False), dict(rules=[80], extra=True)]
    dep = Chain.from_yaml_text(_live_yaml(pvp_bed, **steps[0])).deploy()
    try:
        pvp_bed.ping("client", server, count=1)
        ping = pvp_bed.popen("client", ["ping", "-q", "-i", "0.005", "-c", "1000", "-W", "1", server],
                             stdout=subprocess.PIPE, text=True)
        kinds = []
        for step in steps[1:]:
            kinds.append(Chain.from_yaml_text(_live_yaml(pvp_bed, **step)).deploy().last_change)
        assert ping.poll() is None  # the pings spanned every change
        out, _ = ping.communicate(timeout=30)
        assert kinds == ["config", "code", "topology"]
        assert " 0% packet loss" in out, out
        assert pvp_bed.ping("client", server, count=1).ok
        assert Deployment.get(dep.name).stats()["extra"]["icmp_packets"] > 0  # the new path is in use
        assert Deployment.get(dep.name).health() == []
    finally:
        dep.undeploy()
