"""DPI through BPF_PROG_TEST_RUN: signature verdicts (drop, pass, label,
alert), offset/depth windows and the scan limit, in both chain modes; and the
kernel's verdicts held to the Python reference over random signature sets and
payloads (overlapping patterns, patterns at the scan boundary)."""
from __future__ import annotations

import json
import random
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from vnfchain import Chain
from vnfchain.chain import deploy as deploy_mod
from vnfchain.dpi import synthetic
from vnfchain.dpi.reference import first_signature
from tests.chain_fixtures import MODES, chain_name, delta, not_compiling

pytestmark = pytest.mark.root

CHAIN = """
name: dpi
functions:
  dpi:
    type: dpi
    max_scan: 64
    signatures:
      - {id: 1, content: "/etc/passwd", action: drop}
      - {id: 2, content: "GET ", depth: 4, action: label, label: http}
      - {id: 3, content: ["|de ad|", "beef"], proto: udp, action: alert}
      - {id: 4, content: "ssh", offset: 8, depth: 8, proto: tcp, dport: 22, action: pass}
      - {id: 5, content: ["select ", " from|20|"], nocase: true, proto: tcp, action: drop}
    next: {http: web, default: out}
  web: {type: counter, next: out}
  out: {type: counter, verdict: tx}
"""


def pkt(l4, payload):
    return Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src="198.18.1.2", dst="198.18.2.2") / l4 / payload


CASES = [
    ("a forbidden path is dropped", TCP(dport=80), b"GET /etc/passwd HTTP/1.1", "XDP_DROP", "sig1"),
    ("GET at the start branches to web", TCP(dport=80), b"GET / HTTP/1.1", "XDP_TX", "sig2"),
    ("GET past its depth does not", TCP(dport=80), b"POST / GET ", "XDP_TX", None),
    ("all contents of a signature: alert, continue", UDP(dport=9), b"xx\xde\xadyybeef", "XDP_TX", "sig3"),
    ("one content of two is not enough", UDP(dport=9), b"xx\xde\xadyy", "XDP_TX", None),
    ("wrong protocol", TCP(dport=9), b"\xde\xadbeef", "XDP_TX", None),
    ("inside offset..offset+depth", TCP(dport=22), b"SSH-2.0-ssh", "XDP_PASS", "sig4"),
    ("before the offset", TCP(dport=22), b"ssh-2.0-xx", "XDP_TX", None),
    ("wrong port", TCP(dport=2222), b"SSH-2.0-ssh", "XDP_TX", None),
    ("past max_scan is not seen", TCP(dport=80), b"x" * 60 + b"/etc/passwd", "XDP_TX", None),
    ("just inside max_scan is", TCP(dport=80), b"x" * 53 + b"/etc/passwd", "XDP_DROP", "sig1"),
    ("nocase: upper case", TCP(dport=3306), b"SELECT * FROM users", "XDP_DROP", "sig5"),
    ("nocase: mixed case", TCP(dport=3306), b"sElEcT a FrOm b", "XDP_DROP", "sig5"),
    ("nocase folds letters, not other bytes", TCP(dport=3306), b"SELECT\x00* FROM users", "XDP_TX", None),
    ("case-sensitive content stays so", TCP(dport=80), b"get / HTTP/1.1", "XDP_TX", None),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("desc,l4,payload,action,hit", CASES, ids=[c[0] for c in CASES])
def test_signatures(deployed, mode, desc, l4, payload, action, hit):
    dep = deployed(CHAIN, mode)
    before = dep.stats()
    result = dep.run(pkt(l4, payload))
    changed = delta(before, dep.stats())
    assert result.action == action
    hits = [k for k in changed.get("dpi", {}) if k.endswith("_hits")]
    assert hits == ([f"{hit}_hits"] if hit else [])
    if hit == "sig2":
        assert changed["web"]["rx_packets"] == 1


def random_signatures(rng: random.Random, n: int) -> list[dict]:
    alphabet = b"abA\x00/"
    sigs = []
    for i in range(n):
        contents = ["".join(f"|{b:02x}|" for b in bytes(rng.choice(alphabet) for _ in range(rng.randint(1, 5))))
                    for _ in range(rng.randint(1, 2))]
        sig = {"id": i + 1, "content": contents if len(contents) > 1 else contents[0],
               "action": rng.choice(["drop", "pass", "alert"])}
        if rng.random() < 0.3:
            sig["offset"] = rng.randint(0, 20)
        if rng.random() < 0.3:
            sig["depth"] = rng.randint(5, 40)
        if rng.random() < 0.4:
            sig["nocase"] = True
        if rng.random() < 0.3:
            sig["proto"] = rng.choice(["tcp", "udp"])
        if rng.random() < 0.3:
            sig["dport"] = rng.choice(PORTS)
        sigs.append(sig)
    return sigs


SEEN_AS = {"drop": "XDP_DROP", "pass": "XDP_PASS", "alert": "XDP_TX", None: "XDP_TX"}
PORTS = [9, 80]
L4 = {"tcp": TCP, "udp": UDP}


def decided(dep, proto, dport, payload):
    """The kernel's verdict and which signature counted the packet (None: none)."""
    before = dep.stats()
    action = dep.run(pkt(L4[proto](dport=dport), payload)).action
    hits = [k for k in delta(before, dep.stats()).get("dpi", {}) if k.endswith("_hits")]
    return action, hits


def expected(params, proto, dport, payload):
    want = first_signature(params, payload, proto, dport)
    return SEEN_AS[want.action if want else None], [f"sig{want.id}_hits"] if want else []


@pytest.mark.parametrize("seed", range(6))
def test_kernel_verdicts_equal_the_reference(deployed, seed):
    rng = random.Random(seed)
    name = chain_name("dpidiff")
    sigs = random_signatures(rng, rng.randint(1, 12))
    max_scan = rng.choice([16, 32, 64])
    text = (f"name: {name}\nmode: {MODES[seed % 2]}\nfunctions:\n  dpi:\n    type: dpi\n"
            f"    max_scan: {max_scan}\n    signatures: {json.dumps(sigs)}\n    next: out\n"
            f"  out: {{type: counter, verdict: tx}}\n")
    chain = Chain.from_yaml_text(text)
    params = chain.spec.function("dpi").params
    dep = chain.deploy(attach=[])
    try:
        wrong = []
        for _ in range(150):
            size = rng.choice([max_scan - 3, max_scan, max_scan + 5, rng.randint(1, 80)])
            payload = bytes(rng.choice(b"abAB\x00/x") for _ in range(max(size, 1)))
            proto, dport = rng.choice(["tcp", "udp"]), rng.choice(PORTS)
            want = expected(params, proto, dport, payload)
            got = decided(dep, proto, dport, payload)
            if got != want:
                wrong.append(f"{proto}/{dport} {payload!r}: kernel {got}, reference {want}")
        assert not wrong, f"{len(wrong)} differ, e.g. " + "; ".join(wrong[:3])
    finally:
        deploy_mod.undeploy(name)


# -- the same held to the reference by hypothesis (shrinks a failure to a small case) --

ALPHABET = b"abAB\x00/"
HYP_SCAN = 32

contents = st.binary(min_size=1, max_size=4).map(lambda b: bytes(ALPHABET[x % len(ALPHABET)] for x in b))
signature = st.fixed_dictionaries(
    {"content": st.lists(contents, min_size=1, max_size=2),
     "action": st.sampled_from(["drop", "pass", "alert"])},
    optional={"offset": st.integers(0, 20), "depth": st.integers(4, 40), "nocase": st.booleans(),
              "proto": st.sampled_from(["tcp", "udp"]), "dport": st.sampled_from(PORTS)})
# payloads around the scan boundary, and short ones; built from the contents' alphabet so they hit
payload = st.one_of(st.integers(HYP_SCAN - 4, HYP_SCAN + 4), st.integers(1, 24)).flatmap(
    lambda n: st.binary(min_size=n, max_size=n).map(lambda b: bytes(ALPHABET[x % len(ALPHABET)] for x in b)))


@pytest.fixture(scope="module")
def hyp_chains(deployed):
    """One chain per mode, changed live (map updates) for every generated case."""
    names = {mode: chain_name(f"dpihyp{mode[0]}") for mode in MODES}

    def change(mode, sigs):
        text = (f"name: {names[mode]}\nmode: {mode}\nfunctions:\n  dpi:\n    type: dpi\n"
                f"    max_scan: {HYP_SCAN}\n    signatures: {json.dumps(sigs)}\n    next: out\n"
                f"  out: {{type: counter, verdict: tx}}\n")
        chain = Chain.from_yaml_text(text)
        return chain.deploy(attach=[]), chain.spec.function("dpi").params
    yield change
    for name in names.values():
        deploy_mod.undeploy(name)


@settings(max_examples=30, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(mode=st.sampled_from(MODES), sigs=st.lists(signature, min_size=1, max_size=8),
       payloads=st.lists(st.tuples(payload, st.sampled_from(["tcp", "udp"]), st.sampled_from(PORTS)),
                         min_size=1, max_size=20))
def test_kernel_verdicts_equal_the_reference_for_generated_cases(hyp_chains, mode, sigs, payloads):
    sigs = [dict(s, id=i + 1, content=["".join(f"|{b:02x}|" for b in c) for c in s["content"]])
            for i, s in enumerate(sigs)]
    dep, params = hyp_chains(mode, sigs)
    for data, proto, dport in payloads:
        assert decided(dep, proto, dport, data) == expected(params, proto, dport, data), (proto, dport, data)


# 10,000 signatures: a 24 MiB table
BIG = synthetic.signatures(10_000)
BIG_SCAN = 256


@pytest.fixture(scope="module")
def big_params():
    return Chain.from_yaml_text(synthetic.chain_yaml("big", BIG, BIG_SCAN)).spec.function("dpi").params


def big_payloads() -> list[tuple[str, bytes, bool]]:
    """(description, payload, must match): contents of early and late, exact
    and nocase signatures, case-swapped; random text"""
    exact = [s for s in BIG if not s.get("nocase")]
    nocase = [s for s in BIG if s.get("nocase")]
    rng = random.Random(3)
    out = [
        ("first signature's content", b"GET /" + BIG[0]["content"].encode() + b" HTTP/1.1", True),
        ("last signature's content", b"xx" + BIG[-1]["content"].encode(), True),
        ("exact content at the end of the scan", b"y" * (BIG_SCAN - len(exact[-1]["content"]))
         + exact[-1]["content"].encode(), True),
        ("nocase content, case swapped", b"q " + nocase[500]["content"].swapcase().encode() + b" q", True),
        ("exact content past the scan", b"y" * BIG_SCAN + exact[7]["content"].encode(), False),
    ]
    out += [(f"random text {i}", bytes(rng.choice(b"abcdefgh /.-=") for _ in range(200)), False) for i in range(4)]
    return out


@pytest.mark.parametrize("mode", MODES)
def test_ten_thousand_signatures(deployed, big_params, mode):
    dep = deployed(synthetic.chain_yaml("big", BIG, BIG_SCAN), mode)
    before, hits = dep.stats(), Counter()
    for desc, payload, must_match in big_payloads():
        want = first_signature(big_params, payload, "tcp", 80)
        assert want is not None or not must_match, f"{desc}: the reference finds no signature"
        got = dep.run(pkt(TCP(dport=80), payload)).action
        assert got == ("XDP_DROP" if want else "XDP_TX"), desc
        hits.update([f"sig{want.id}_hits"] if want else [])
    # stats once for all payloads: each call validates the 10,000 signatures again
    assert {k: v for k, v in delta(before, dep.stats())["dpi"].items() if k.endswith("_hits")} == hits


CUT = """
name: dpicut
functions:
  dpi:
    type: dpi
    max_scan: 1500
    signatures:
      - {id: 1, content: "zz", action: drop}
      - {id: 2, content: "a", nocase: true, action: alert}
    next: out
  out: {type: counter, verdict: tx}
"""


@pytest.mark.parametrize("mode", MODES)
def test_a_scan_with_too_many_matches_to_examine_is_counted(deployed, mode):
    dep = deployed(CUT, mode)
    before = dep.stats()
    assert dep.run(pkt(UDP(dport=9), b"a" * 100 + b"zz")).action == "XDP_DROP"
    assert delta(before, dep.stats())["dpi"].get("scans_cut_short") is None
    before = dep.stats()
    # 1,400 matches of "a": more than the examination loop takes, so "zz" at
    # the end is never examined; the counter says so
    assert dep.run(pkt(UDP(dport=9), b"A" * 1400 + b"zz")).action == "XDP_TX"
    assert delta(before, dep.stats())["dpi"]["scans_cut_short"] == 1


WEB_RULES = r'''
drop tcp any any -> any 80 (msg:"sqli"; content:"union"; nocase; content:"select"; nocase; sid:101;)
alert tcp any any -> any 80 (msg:"passwd"; content:"/etc/passwd"; depth:32; sid:100;)
'''


@pytest.mark.parametrize("mode", MODES)
def test_rules_file_verdicts(deployed, tmp_path, mode):
    rules_file = tmp_path / "web.rules"
    rules_file.write_text(WEB_RULES)
    dep = deployed(f"name: dpirules\nfunctions:\n  dpi:\n    type: dpi\n    rules_file: {rules_file}\n"
                   "    next: out\n  out: {type: counter, verdict: tx}\n", mode)
    for payload, action, hit in [(b"GET /?q=1 UNION SELECT pw", "XDP_DROP", "sig101"),
                                 (b"GET /?q=1 union all", "XDP_TX", None),
                                 (b"GET /../../etc/passwd", "XDP_TX", "sig100"),
                                 (b"GET /" + b"x" * 32 + b"/etc/passwd", "XDP_TX", None)]:
        before = dep.stats()
        assert dep.run(pkt(TCP(dport=80), payload)).action == action, payload
        hits = [k for k in delta(before, dep.stats()).get("dpi", {}) if k.endswith("_hits")]
        assert hits == ([f"{hit}_hits"] if hit else []), payload


LIVE = """
name: {name}
functions:
  dpi:
    type: dpi
    signatures: {sigs}
    next: out
  out: {{type: counter, verdict: tx}}
"""


def test_new_contents_are_a_map_update_not_a_new_program():
    name = chain_name("dpilive")
    first = [{"id": 1, "content": "/etc/passwd", "action": "drop"}]
    second = [{"id": 2, "content": "cmd.EXE", "nocase": True, "action": "drop"},   # new bytes, new classes
              {"id": 3, "content": "|de ad be ef|", "action": "pass"}]
    try:
        dep = Chain.from_yaml_text(LIVE.format(name=name, sigs=first)).deploy(attach=[])
        progs = [f.prog_id for f in dep.record.functions]
        assert dep.run(pkt(TCP(dport=80), b"GET /etc/passwd")).action == "XDP_DROP"
        with not_compiling():
            dep = Chain.from_yaml_text(LIVE.format(name=name, sigs=second)).deploy(attach=[])
        assert dep.last_change == "config"
        assert [f.prog_id for f in dep.record.functions] == progs
        assert dep.run(pkt(TCP(dport=80), b"GET /etc/passwd")).action == "XDP_TX"
        assert dep.run(pkt(TCP(dport=80), b"GET /Cmd.exe")).action == "XDP_DROP"
        assert dep.run(pkt(UDP(dport=9), b"\xde\xad\xbe\xef")).action == "XDP_PASS"
    finally:
        deploy_mod.undeploy(name)


@pytest.mark.parametrize("mode", MODES)
def test_an_edited_rules_file_is_a_change_and_the_chain_no_longer_needs_the_file(tmp_path, mode):
    from click.testing import CliRunner
    from vnfchain.cli import cli, commands  # noqa: F401  (registers the commands)
    name = chain_name(f"dpifile{mode[0]}")
    rules_file = tmp_path / "web.rules"
    path = tmp_path / "chain.yaml"
    path.write_text(f"name: {name}\nmode: {mode}\nfunctions:\n  dpi:\n    type: dpi\n    rules_file: web.rules\n"
                    "    next: out\n  out: {type: counter, verdict: tx}\n")
    rules_file.write_text('drop tcp any any -> any 80 (content:"/etc/passwd"; sid:7;)\n')
    try:
        dep = Chain.from_yaml(path).deploy(attach=[])
        assert dep.run(pkt(TCP(dport=80), b"GET /etc/passwd")).action == "XDP_DROP"
        rules_file.write_text('drop tcp any any -> any 80 (content:"cmd.exe"; sid:8;)\n'
                              'alert tcp any any -> any 80 (content:"/etc/passwd"; sid:9;)\n')
        with not_compiling():
            dep = Chain.from_yaml(path).deploy(attach=[])
        assert dep.last_change == "config"
        assert dep.run(pkt(TCP(dport=80), b"GET /etc/passwd")).action == "XDP_TX"
        assert dep.run(pkt(TCP(dport=80), b"GET /cmd.exe")).action == "XDP_DROP"
        rules_file.unlink()
        runner = CliRunner()
        for command in (["stats", name], ["status", name]):
            result = runner.invoke(cli, command)
            assert result.exit_code == 0, result.output
        assert "sig8_hits=1" in runner.invoke(cli, ["stats", name]).output
        assert "sig9_hits=1" in runner.invoke(cli, ["stats", name]).output
    finally:
        deploy_mod.undeploy(name)
