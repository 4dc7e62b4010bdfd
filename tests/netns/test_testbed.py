"""Test beds end to end: every shipped topology comes up, answers, and goes down
leaving nothing; failures and interrupts half-way leave nothing either."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.testbed_fixtures import TOPOLOGIES, bed_name, leftovers
from vnfchain.errors import TestbedError
from vnfchain.testbed import Testbed, build, load_topology
from vnfchain.testbed.record import Record, record_path

pytestmark = [pytest.mark.root, pytest.mark.netns]

SHIPPED = sorted(TOPOLOGIES.glob("*.yaml"))
VNFCHAIN = Path(sys.executable).with_name("vnfchain")


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_topology_up_check_down(path):
    name = bed_name(path.stem[:4])
    start = time.monotonic()
    tb = Testbed.up(path, name=name)
    try:
        assert time.monotonic() - start < 3
        assert tb.check()  # ping across the dut, services answer
        dut = tb.exec("dut", ["sysctl", "-n", "net.ipv4.ip_forward"]) if "dut" in tb.topology.hosts else None
        assert dut is None or dut.stdout.strip() == "1"
        for host in tb.topology.hosts:  # no route out of the bed, ever
            routes = tb.exec(host, ["ip", "-4", "route"]).stdout
            assert "default" not in routes and all("198.18." in r for r in routes.splitlines()), routes
        pids = tb.processes
        assert pids and all(p["pid"] > 0 for p in pids)
    finally:
        tb.down()
    assert leftovers(name, pids) == []


# --- the pvp bed: traffic helpers read like the scenario ------------------------------

def test_exec_netns_addr(pvp_bed):
    assert pvp_bed.netns("dut") == f"vc-{pvp_bed.name}-dut"
    assert pvp_bed.addr("server") == "198.18.2.2"
    proc = pvp_bed.exec("client", ["ping", "-c", "1", "-W", "1", "198.18.2.2"])
    assert proc.returncode == 0
    assert pvp_bed.exec("client", ["sh", "-c", "exit 7"]).returncode == 7
    with pytest.raises(TestbedError, match="no host 'nohost'"):
        pvp_bed.netns("nohost")


def test_ping_http_echo(pvp_bed):
    result = pvp_bed.ping("client", "198.18.2.2", count=3)
    assert result.ok and result.loss == 0.0
    assert pvp_bed.ping("client", "198.18.3.3", count=1, timeout=0.3).loss == 1.0
    http = pvp_bed.http_get("client", "http://198.18.2.2/")
    assert (http.status, http.body) == (200, "server\n")
    assert pvp_bed.http_get("client", "http://198.18.2.2:81/").status == 0  # nothing listens
    assert pvp_bed.tcp_echo("client", "198.18.2.2", 7, b"hello") == b"hello"
    assert pvp_bed.udp_echo("client", "198.18.2.2", 7, b"dgram") == b"dgram"
    assert pvp_bed.udp_echo("client", "198.18.2.2", 9, b"x", timeout=0.2) is None


def test_send_expect_sees_forwarded_packet(pvp_bed):
    from scapy.layers.inet import ICMP, IP

    probe = IP(src="198.18.1.2", dst="198.18.2.2", ttl=9) / ICMP(id=0x4242)
    got = pvp_bed.send_expect("client", "eth0", probe, "server", "eth0",
                              filter=lambda p: ICMP in p and p[ICMP].id == 0x4242)
    assert len(got) == 1
    assert got[0][IP].ttl == 8  # the dut routed it
    assert got[0].src == pvp_bed.mac("dut", "dut-wan")
    # a packet for an address nobody has never reaches the server
    lost = IP(src="198.18.1.2", dst="198.18.3.3") / ICMP()
    assert pvp_bed.send_expect("client", "eth0", lost, "server", "eth0",
                               filter=lambda p: IP in p, timeout=0.3) == []


def test_attach_and_already_up(pvp_bed):
    other = Testbed.attach(pvp_bed.name)
    assert other.addr("client") == "198.18.1.2" and other.state == "up"
    with pytest.raises(TestbedError, match=f"testbed down {pvp_bed.name}` first"):
        Testbed.up(TOPOLOGIES / "pvp.yaml", name=pvp_bed.name)
    assert Testbed.attach(pvp_bed.name).state == "up"  # the failed attempt touched nothing
    with pytest.raises(TestbedError, match="no test bed named"):
        Testbed.attach(bed_name("none"))


# --- failures and interrupts half-way ---------------------------------------------------

def _never_ready(name: str) -> dict:
    """pvp plus a service on the server that never listens (it only sleeps)."""
    data = load_topology(TOPOLOGIES / "pvp.yaml").to_data()
    data["name"] = name
    data["hosts"]["server"]["services"].append(
        {"type": "command", "argv": ["sleep", "30"], "port": 9999, "ready_timeout": 0.5})
    return data


def test_failed_service_removes_everything():
    name = bed_name("fail")
    with pytest.raises(TestbedError) as info:
        Testbed.up(load_topology(_never_ready(name)))
    assert "starting services failed" in info.value.message
    assert "did not listen on tcp port 9999" in info.value.message
    assert leftovers(name) == []


def test_failed_link_removes_everything(monkeypatch):
    name = bed_name("link")
    real = build.Builder._link
    calls = []

    def second_link_fails(self, link):
        calls.append(link)
        if len(calls) == 2:
            raise TestbedError("injected failure")
        return real(self, link)

    monkeypatch.setattr(build.Builder, "_link", second_link_fails)
    with pytest.raises(TestbedError, match="linking dut:dut-wan -- server:eth0 failed: injected failure"):
        Testbed.up(TOPOLOGIES / "pvp.yaml", name=name)
    assert leftovers(name) == []


def test_keyboard_interrupt_during_up_removes_everything(monkeypatch):
    name = bed_name("kbd")

    def interrupted(self):  # Ctrl-C once namespaces, links and routes exist
        assert len(self.record.namespaces) == 3
        raise KeyboardInterrupt

    monkeypatch.setattr(build.Builder, "_services", interrupted)
    with pytest.raises(KeyboardInterrupt):
        Testbed.up(TOPOLOGIES / "pvp.yaml", name=name)
    assert leftovers(name) == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_to_cli_up_removes_everything(tmp_path, sig):
    """`vnfchain testbed up` interrupted while it waits for a service: no namespace,
    link, record or process remains."""
    name = bed_name("sig")
    topo = _never_ready(name)
    topo["hosts"]["server"]["services"][-1]["ready_timeout"] = 20
    path = tmp_path / "slow.yaml"
    path.write_text(json.dumps(topo))  # JSON is YAML
    proc = subprocess.Popen([str(VNFCHAIN), "testbed", "up", str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        record = None
        while time.monotonic() < deadline:  # wait until the sleeper is recorded
            record = Record.read(name) if record_path(name).exists() else None
            if record and any(p["service"] == "command:9999" for p in record.processes):
                break
            time.sleep(0.02)
        else:
            pytest.fail("the bed never reached its services")
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        build.down(name)
    assert proc.returncode != 0
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and "interrupted" in err
    assert leftovers(name, record.processes) == []


def test_down_after_crash_removes_everything():
    """A process that brought a bed up dies without cleaning up; `down` still
    removes everything from the record."""
    name = bed_name("crsh")
    script = (f"import os; from vnfchain.testbed import Testbed; "
              f"Testbed.up({str(TOPOLOGIES / 'pvp.yaml')!r}, name={name!r}); os._exit(3)")
    subprocess.run([sys.executable, "-c", script], check=False, timeout=30)
    record = Record.read(name)
    assert record is not None and record.state == "up"
    assert leftovers(name, record.processes)  # the crash left the bed behind
    result = CliRunner().invoke(_cli(), ["testbed", "down", name])
    assert result.exit_code == 0, result.output
    assert "removed 3 namespaces, 3 processes" in result.output
    assert leftovers(name, record.processes) == []
    again = CliRunner().invoke(_cli(), ["testbed", "down", name])  # idempotent
    assert again.exit_code == 0 and "nothing to remove" in again.output


# --- the CLI ----------------------------------------------------------------------------

def _cli():
    from vnfchain.cli import cli
    import vnfchain.cli.testbed  # noqa: F401  (registers `testbed`)
    return cli


def test_cli_up_ls_exec_down():
    name = bed_name("cli")
    runner = CliRunner()
    try:
        up = runner.invoke(_cli(), ["testbed", "up", str(TOPOLOGIES / "pvp.yaml"), "--name", name, "--check"])
        assert up.exit_code == 0, up.output
        assert f"test bed {name} is up" in up.output and "ok  http" in up.output
        again = runner.invoke(_cli(), ["testbed", "up", str(TOPOLOGIES / "pvp.yaml"), "--name", name])
        assert again.exit_code == 1 and f"vnfchain testbed down {name}" in again.output
        assert name in runner.invoke(_cli(), ["testbed", "ls"]).output
        ok = subprocess.run([str(VNFCHAIN), "testbed", "exec", name, "client", "--",
                             "curl", "-s", "http://198.18.2.2/"], capture_output=True, text=True)
        assert (ok.returncode, ok.stdout) == (0, "server\n")
        status = subprocess.run([str(VNFCHAIN), "testbed", "exec", name, "dut", "--", "sh", "-c", "exit 5"])
        assert status.returncode == 5
    finally:
        down = runner.invoke(_cli(), ["testbed", "down", name])
    assert down.exit_code == 0 and leftovers(name) == []


def test_cli_rejects_bad_topology(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nhosts:\n  a: {}\n  b: {}\nlinks:\n"
                   "  - a: {host: a, interface: eth0, addresses: [10.1.1.1/24]}\n"
                   "    b: {host: b, interface: eth0}\n")
    result = CliRunner().invoke(_cli(), ["testbed", "up", str(bad)])
    assert result.exit_code == 2
    assert f"{bad}:6:" in result.output and "outside 198.18.0.0/15" in result.output
    assert leftovers("bad") == []


def test_exec_of_a_command_that_does_not_exist_exits_127(pvp_bed):
    from click.testing import CliRunner
    import vnfchain.cli.testbed  # noqa: F401  (registers the commands)
    from vnfchain.cli import cli
    result = CliRunner().invoke(cli, ["testbed", "exec", pvp_bed.name, "client", "--", "no-such-command-xyz"])
    assert result.exit_code == 127
    assert "no-such-command-xyz: command not found" in result.output
