"""Test-bed fixtures (a pytest plugin, loaded from tests/conftest.py).

    def test_something(pvp_bed):          # module-scoped pvp bed, always torn down
        assert pvp_bed.ping("client", pvp_bed.addr("server")).ok

    def test_dpi(sfc_bed): ...            # the same for the sfc bed

    def test_other(testbed):              # bring up any topology; torn down after the test
        tb = testbed("topologies/lb.yaml")

Bed names are ``t<pid % 1000><suffix>`` so they never collide with a user's bed or
with another test run; ``leftovers(name)`` lists anything a bed left behind.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from vnfchain.testbed import Testbed, load_topology
from vnfchain.testbed import build, netlink, services
from vnfchain.testbed.record import record_path

REPO = Path(__file__).resolve().parent.parent
TOPOLOGIES = REPO / "topologies"


def bed_name(suffix: str) -> str:
    """A bed name private to this test run (at most 8 characters)."""
    return f"t{os.getpid() % 1000}{suffix}"[:8]


def leftovers(name: str, pids=()) -> list[str]:
    """Everything bed ``name`` may have left: namespaces, temporary links, its
    record, and which of ``pids`` still run. Empty when clean."""
    found = [f"netns {ns}" for ns in netlink.list_netns() if ns.startswith(f"vc-{name}-")]
    found += [f"link {link}" for link in netlink.root_links(f"vct{os.getpid():06x}")]
    if record_path(name).exists():
        found.append(f"record {record_path(name)}")
    found += [f"process {p['pid']}" for p in pids if services.is_running(p["pid"], p["start_time"])]
    return found


def _need_root():
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")


@pytest.fixture(autouse=True)
def _skip_root_marked(request):
    if request.node.get_closest_marker("root"):
        _need_root()


@pytest.fixture
def testbed():
    """Factory: ``testbed(path_or_topology, suffix="x")`` brings a bed up; every bed
    made through it is taken down after the test, whatever happened."""
    made: list[Testbed] = []

    def make(topology, suffix: str = "x") -> Testbed:
        tb = Testbed.up(topology, name=bed_name(suffix))
        made.append(tb)
        return tb

    yield make
    for tb in made:
        tb.down()


def module_bed(topology: str | dict, suffix: str):
    """Body of a module-scoped bed fixture (``yield from module_bed(...)``): a
    shipped topology by file name, or a test's own as a dict."""
    _need_root()
    name = bed_name(suffix)
    build.down(name)  # a bed of ours left by a killed earlier run with the same pid
    tb = Testbed.up(TOPOLOGIES / topology if isinstance(topology, str) else load_topology(topology), name=name)
    try:
        yield tb
    finally:
        tb.down()


@pytest.fixture(scope="module")
def pvp_bed():
    """The pvp topology (client -- dut -- server), up for the whole module."""
    yield from module_bed("pvp.yaml", "pvp")


@pytest.fixture(scope="module")
def sfc_bed():
    """The sfc topology (client -- dut -- server, server2; http, tls, dns, echo
    services), up for the whole module."""
    yield from module_bed("sfc.yaml", "sfc")
