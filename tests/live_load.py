"""A chain on the sfc bed that carries a NAT and a load balancer, the knobs its
live changes turn, and what a test checks of it while traffic runs.

    client 198.18.1.2 -- dut-lan [fw -> dpi -> nat -> lb -> out] dut-wan -- server 198.18.2.2
                                                                           server2 198.18.2.3

- UDP to server:9000 and TCP to server:7 leave source-NATed (198.18.2.1);
- TCP to the VIP 198.18.0.100:7 is balanced over server and server2 (nat
  mode). The dut routes no VIP, so the NAT leaves those flows alone (its FIB
  lookup finds no way out) and the backends answer the client, back through
  the load balancer.

``Knobs`` are what a change turns: for each kind (config, code, topology)
three or four parameters, each a real edit a user would make.
"""
from __future__ import annotations

import contextlib
import json
import subprocess
import time
from dataclasses import dataclass, replace

import yaml

from tests.chain_fixtures import chain_name
from tests.load_traffic import LoadRun
from vnfchain import Chain, NotDeployedError, bpfsys, netlink
from vnfchain.chain.deploy import Deployment, undeploy

VIP, SERVER, SERVER2, NAT_ADDR = "198.18.0.100", "198.18.2.2", "198.18.2.3", "198.18.2.1"
UDP_PORT, ECHO = 9000, 7
UDP_RULE = "rule0_hits"          # the firewall's first rule: every datagram of the UDP load


@dataclass(frozen=True)
class Knobs:
    # config: map updates
    blocked_port: int = 9               # a firewall drop rule
    signature: str = "/etc/passwd"      # a dpi signature
    weight: int = 1                     # the first backend's weight
    idle_timeout: int = 300             # load balancer (a timeout in its config map)
    tcp_established: int = 3600         # nat (likewise)
    # code: programs replaced in their slots (compiled-in constants)
    max_scan: int = 256                 # dpi
    dpi_unparsed: str = "continue"      # dpi
    # topology: a new generation
    tap: dict | None = None             # a function between the firewall and the dpi ({type: counter})
    tap_name: str = "tap"
    mode: str = "tailcall"


def turned(knobs: Knobs, kind: str, n: int) -> Knobs:
    """The ``n``-th change of ``kind``: each cycles through its knobs, so that
    every function type takes its turn; each differs from the one before."""
    if kind == "config":
        return [replace(knobs, blocked_port=10 + n), replace(knobs, signature=f"/etc/secret{n}"),
                replace(knobs, weight=1 + (n // 5 + 1) % 3), replace(knobs, idle_timeout=300 + n),
                replace(knobs, tcp_established=3600 + n)][n % 5]
    if kind == "code":
        return [replace(knobs, max_scan=512 if knobs.max_scan == 256 else 256),
                replace(knobs, dpi_unparsed="drop" if knobs.dpi_unparsed == "continue" else "continue")][n % 2]
    return [replace(knobs, tap={"type": "counter"}), replace(knobs, tap=None), replace(knobs, mode="fused"),
            replace(knobs, mode="tailcall")][n % 4]


def chain_spec(name: str, netns: str, k: Knobs) -> dict:
    functions = {
        "fw": {"type": "firewall", "default": "drop", "next": k.tap_name if k.tap else "dpi", "rules": [
            {"action": "allow", "proto": "udp", "dport": UDP_PORT},
            {"action": "drop", "proto": "tcp", "dport": k.blocked_port},
            {"action": "allow", "src": "198.18.1.0/24"},
            {"action": "allow", "src": "198.18.2.0/24"}]},
        "dpi": {"type": "dpi", "max_scan": k.max_scan, "unparsed": k.dpi_unparsed, "next": "nat",
                "signatures": [{"id": 1, "content": k.signature, "action": "drop"}]},
        "nat": {"type": "nat", "outside": "dut-wan", "snat": [{"src": "198.18.1.0/24", "to": "masquerade"}],
                "timeouts": {"tcp_established": k.tcp_established}, "next": "lb"},
        "lb": {"type": "loadbalancer", "idle_timeout": k.idle_timeout, "next": "out", "services": [
            {"vip": VIP, "port": ECHO, "proto": "tcp",
             "backends": [{"ip": SERVER, "weight": k.weight}, {"ip": SERVER2}]}]},
        "out": {"type": "forward"},
    }
    if k.tap:
        functions[k.tap_name] = dict(k.tap, next="dpi")
    return {"name": name, "mode": k.mode, "functions": functions,
            "attach": [{"interface": "dut-lan", "netns": netns}, {"interface": "dut-wan", "netns": netns}]}


def chain_yaml(name: str, netns: str, knobs: Knobs) -> str:
    return yaml.safe_dump(chain_spec(name, netns, knobs))


def deploy(name: str, netns: str, knobs: Knobs) -> tuple[Deployment, float]:
    """Deploy (or change live to) ``knobs``; the deployment and the wall time the deploy took."""
    chain = Chain.from_yaml_text(chain_yaml(name, netns, knobs))
    started = time.monotonic()
    dep = chain.deploy()
    return dep, time.monotonic() - started


@contextlib.contextmanager
def chain_under_load(bed, tag: str, knobs: Knobs, *, rate: float, held: int, before_load=None):
    """The chain deployed on ``bed`` with its UDP stream (client -> server:9000)
    and ``held`` echoing connections through the NAT and as many through the
    load balancer; yields (deployment, LoadRun, what ``before_load(dep)``
    returned, read before the load started). Undeployed after, whatever happened."""
    name = chain_name(tag)
    try:
        dep, _ = deploy(name, bed.netns("dut"), knobs)
        warm_up(bed)
        before = before_load(dep) if before_load else None
        with LoadRun(bed) as load:
            load.udp("client", "server", SERVER, UDP_PORT, rate)
            ready = load.tcp("client", [(SERVER, ECHO, held), (VIP, ECHO, held)])
            assert ready["connected"] == 2 * held, ready["failed"]
            yield dep, load, before
    finally:
        with contextlib.suppress(NotDeployedError):
            undeploy(name)


def warm_up(tb) -> None:
    """The dut's neighbour table holds the servers before traffic starts.
    Without it the forward function hands a flow's first packet to the kernel
    to resolve the neighbour, but a packet the NAT has rewritten carries the
    dut's own address as its source: the kernel drops it as a martian, never
    asks for the MAC, and the flow never starts."""
    for host in (SERVER, SERVER2):
        assert tb.ping("dut", host, count=1).ok, f"the dut cannot reach {host}"
    for _ in range(20):
        if tb.ping("client", SERVER, count=2).ok and tb.ping("client", SERVER2, count=2).ok:
            return
        time.sleep(0.2)
    raise AssertionError("the client cannot ping the servers through the chain")


def wire_frames(tb) -> int:
    """Frames the dut's two interfaces took in (the veth counts every frame it
    hands its XDP program): what the chain's entry must have counted."""
    out = subprocess.run(["ip", "-n", tb.netns("dut"), "-s", "-j", "link", "show"], check=True,
                         capture_output=True, text=True).stdout
    return sum(link["stats64"]["rx"]["packets"] for link in json.loads(out)
               if link["ifname"] in ("dut-lan", "dut-wan"))


# what `stats` shows that is a level, not a count: flows a table holds now
GAUGES = {"translations", "unconfirmed", "ct_flows", "ct_unconfirmed"}


def went_back(before: dict, after: dict) -> list[str]:
    """Counters lower after than before (functions in both snapshots)."""
    return [f"{fn}.{name}: {value} -> {after[fn].get(name, 0)}"
            for fn, counters in before.items() if fn in after
            for name, value in counters.items()
            if name not in GAUGES and after[fn].get(name, 0) < value]


def retransmitted(tb, host: str) -> int:
    """TCP segments ``host`` sent again since its namespace was made: a segment
    lost on the way (or acked later than the retransmission timeout) shows here
    even when the connection lives on."""
    snmp = tb.exec(host, ["cat", "/proc/net/snmp"], check=True).stdout.splitlines()
    names, values = [line.split()[1:] for line in snmp if line.startswith("Tcp:")]
    return int(dict(zip(names, values))["RetransSegs"])


def disagreement(dep: Deployment) -> list[str]:
    """Where the kernel runs something other than what the chain's record
    says: every attachment runs the recorded entry program, every prog-array
    slot the recorded function program, every recorded pin is there."""
    record = dep.record
    problems = [f"pin missing: {p}" for p in dep.missing_pins()]
    for a in record.attachments:
        state = netlink.xdp_state(a.ifindex, a.netns)
        if not state or state[0] != record.entry_prog_id:
            problems.append(f"{a.where} runs program {state and state[0]}, the record says {record.entry_prog_id}")
    if record.mode == "tailcall" and not problems:
        with bpfsys.PinnedMap(str(record.gen_dir / "progs")) as slots:
            for f in record.functions:
                found = slots.lookup(f.slot.to_bytes(4, "little"))
                held = int.from_bytes(found[0][:4], "little") if found else None
                if held != f.prog_id:
                    problems.append(f"slot {f.slot} holds program {held}, the record says {f.name}'s {f.prog_id}")
    return problems


@contextlib.contextmanager
def timed(costs: list[float]):
    started = time.monotonic()
    yield
    costs.append(time.monotonic() - started)
