"""DPI config changes while packets run: a packet sees the old config or the
new one, never part of each (checked after every single map write of a
change, not by racing); counters survive changes that keep their signature
or app rule. Both chain modes."""
from __future__ import annotations

import json

import pytest
from scapy.layers.inet import TCP

from tests.chain_fixtures import MODES, chain_name, delta, not_compiling
from tests.packet.test_dpi_l7_packets import dns, frame
from vnfchain import Chain, bpfsys
from vnfchain.chain import deploy as deploy_mod

pytestmark = pytest.mark.root

# both configs drop www.evil.example and evil-payload, by rules of the same
# id at another position; B adds app rules before them and reorders the
# signatures (the same contents: a table of the same size, no compiling)
A = {"sigs": [{"id": 1, "content": "evil-payload", "action": "drop"},
              {"id": 6, "content": ["|00 01|", "xyz"], "action": "drop"},
              {"id": 5, "content": "spam-payload", "nocase": True, "action": "pass"}],
     "apps": [{"app": "dns", "qname": "*.evil.example", "action": "drop", "id": 60}]}
B = {"sigs": [{"id": 5, "content": "spam-payload", "nocase": True, "action": "drop"},
              {"id": 6, "content": ["|00 01|", "xyz"], "action": "alert"},
              {"id": 1, "content": "evil-payload", "action": "drop"}],
     "apps": [{"app": "dns", "qname": "*.spam.example", "action": "drop", "id": 61},
              {"app": "http", "host": "spam.example", "action": "alert", "id": 62},
              {"app": "dns", "qname": "*.evil.example", "action": "drop", "id": 60}]}


def chain_text(name: str, mode: str, config: dict) -> str:
    return (f"name: {name}\nmode: {mode}\nfunctions:\n  dpi:\n    type: dpi\n"
            f"    signatures: {json.dumps(config['sigs'])}\n    apps: {json.dumps(config['apps'])}\n"
            f"    next: out\n  out: {{type: counter, verdict: tx}}\n")


COMMON = [  # (packet, verdict in both configs)
    (lambda: dns("www.evil.example"), "XDP_DROP"),
    (lambda: frame(TCP(dport=80), b"GET /evil-payload"), "XDP_DROP"),
    (lambda: dns("www.example"), "XDP_TX"),
]


@pytest.mark.parametrize("mode", MODES)
def test_no_packet_sees_half_a_config_change(mode, monkeypatch):
    name = chain_name(f"dpiatom{mode[0]}")
    packets = [(make(), want) for make, want in COMMON]
    seen = []

    try:
        dep = Chain.from_yaml_text(chain_text(name, mode, A)).deploy(attach=[])
        before = dep.stats()

        def check():
            for packet, want in packets:
                seen.append((dep.run(packet).action, want))

        # every write a change makes to a map, followed by the packets
        for cls, method in ((bpfsys.PinnedMap, "update"), (bpfsys.PinnedMap, "delete")):
            original = getattr(cls, method)
            monkeypatch.setattr(cls, method, lambda self, *a, _o=original: (_o(self, *a), check())[0])
        original_batch = bpfsys.update_batch
        monkeypatch.setattr(bpfsys, "update_batch", lambda *a: (original_batch(*a), check())[0])
        for config in (B, A, B, A):
            with not_compiling():
                dep = Chain.from_yaml_text(chain_text(name, mode, config)).deploy(attach=[])
            assert dep.last_change == "config"
        monkeypatch.undo()
        writes = len(seen) // len(packets)
        assert writes > 20
        wrong = [(got, want) for got, want in seen if got != want]
        assert not wrong, f"{len(wrong)} of {len(seen)} packets between map writes saw half a change"
        counted = delta(before, dep.stats())["dpi"]
        # the rules of both configs decided them all, and no unused slot alerted
        assert counted.get("sig1_hits") == writes
        assert counted.get("app60_hits") == writes
        assert "alerts_sent" not in counted
    finally:
        deploy_mod.undeploy(name)


@pytest.mark.parametrize("mode", MODES)
def test_counters_survive_changes_that_keep_their_rule(mode):
    name = chain_name(f"dpikeep{mode[0]}")
    config = {"sigs": A["sigs"], "apps": list(A["apps"])}
    try:
        dep = Chain.from_yaml_text(chain_text(name, mode, config)).deploy(attach=[])
        for make, _ in COMMON * 3:
            dep.run(make())
        counted = {"sig1_hits": 3, "app60_hits": 3}
        assert {k: v for k, v in dep.stats()["dpi"].items() if k in counted} == counted
        # another function's code changes: every function is populated again
        def recoded(text):
            return text.replace("{type: counter, verdict: tx}", "{type: forward, interface: lo}")
        dep = Chain.from_yaml_text(recoded(chain_text(name, mode, config))).deploy(attach=[])
        assert dep.last_change in ("code", "topology")
        assert {k: v for k, v in dep.stats()["dpi"].items() if k in counted} == counted
        # an unrelated app rule, first in the list
        config = {"sigs": A["sigs"], "apps": [{"app": "tls", "sni": "x.example", "action": "drop", "id": 70},
                                              *A["apps"]]}
        with not_compiling():
            dep = Chain.from_yaml_text(recoded(chain_text(name, mode, config))).deploy(attach=[])
        stats = dep.stats()["dpi"]
        assert {k: v for k, v in stats.items() if k in counted} == counted
        assert dep.run(dns("www.evil.example")).action == "XDP_DROP"
        assert dep.stats()["dpi"]["app60_hits"] == 4
    finally:
        deploy_mod.undeploy(name)
