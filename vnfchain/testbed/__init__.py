"""Test beds: hosts in network namespaces, veth links and bridges, services.

    from vnfchain.testbed import Testbed
    with Testbed.up("topologies/pvp.yaml") as tb:
        assert tb.ping("client", tb.addr("server")).ok

Modules: ``model`` (topology YAML -> frozen, validated ``Topology``),
``build`` (naming scheme, bring-up and teardown), ``netlink`` (namespaces,
links and addresses, through ``vnfchain.netlink``), ``services`` and ``agent`` (service processes), ``record``
(what a bed made, under /run/vnfchain/testbeds), ``traffic`` (ping, curl,
echo, scapy send/expect), ``bed`` (the ``Testbed`` handle).
"""
from .bed import Testbed
from .build import Removed, down
from .model import Topology, load_topology
from .traffic import HttpResult, PingResult

__all__ = ["Testbed", "Topology", "load_topology", "down", "Removed", "PingResult", "HttpResult"]
