"""The chain model: YAML and networkx graphs as one validated spec, and every
validation error a user can hit (file:line, the bad key, how to fix it).

No root, no BPF: everything here stops before render.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import networkx as nx
import pytest
from pydantic import ValidationError

from vnfchain import Chain
from vnfchain.chain import AttachPoint
from vnfchain.chain.model import MAX_TAIL_CALLS
from vnfchain.errors import SpecError, SpecErrors
import vnfchain.cli.commands  # noqa: F401  (registers the commands)
from vnfchain.cli import cli as cli_main
from click.testing import CliRunner

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "pvp-forward.yaml"

# A branching chain: one label to its own successor, a second label and the
# default to a shared one.
BRANCHING = """\
name: branchy
description: two labels and a default
mode: fused
on_miss: pass
exit: tx
functions:
  steer:
    type: classify
    rules:
      - {proto: tcp, dport: 80, label: web}
      - {proto: udp, dport: 53, label: dns}
    next: {web: web, dns: out, default: out}
  web:
    type: counter
    verdict: pass
  out:
    type: forward
    interface: wan0
"""


def chain_file(tmp_path: Path, text: str, name: str = "chain.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def spec_error(tmp_path: Path, text: str) -> SpecError:
    """The SpecError that loading ``text`` from a file raises."""
    path = chain_file(tmp_path, text)
    with pytest.raises(SpecError) as info:
        Chain.from_yaml(path)
    return info.value


def line_chain(n: int, mode: str = "tailcall") -> str:
    """n counters in a line: c0 -> c1 -> ... -> c<n-1>."""
    fns = "".join(f"  c{i}: {{type: counter, next: c{i + 1}}}\n" for i in range(n - 1))
    return f"name: long\nmode: {mode}\nfunctions:\n{fns}  c{n - 1}: {{type: counter}}\n"


def edge_branch(g: nx.DiGraph, u, v):
    return g.edges[u, v].get("branch")


def hand_built_graph() -> nx.DiGraph:
    """The README's Python spelling, with the types that exist."""
    g = nx.DiGraph(name="web-edge")
    g.add_node("count", type="counter")
    g.add_node("steer", type="classify", rules=[{"proto": "tcp", "dport": 80, "label": "web"}])
    g.add_node("web", type="counter", verdict="pass")
    g.add_node("out", type="forward")
    g.add_edge("count", "steer")                 # default branch
    g.add_edge("steer", "web", branch="web")     # labelled branch
    g.add_edge("steer", "out")
    return g


# -- YAML and graph: two spellings of one model ------------------------------------------

def test_yaml_chain_is_a_networkx_digraph():
    g = Chain.from_yaml(EXAMPLE).graph
    assert isinstance(g, nx.DiGraph) and not g.is_multigraph()
    assert g.graph["name"] == "pvp-edge"
    assert g.graph["attach"] == [{"interface": "dut-lan", "netns": "vc-pvp-dut"},
                                 {"interface": "dut-wan", "netns": "vc-pvp-dut"}]
    assert dict(g.nodes(data="type")) == {"ingress": "counter", "steer": "classify",
                                         "web": "counter", "out": "forward"}
    assert g.nodes["steer"]["rules"] == [{"proto": "tcp", "dport": 8080, "label": "web"},
                                         {"proto": "tcp", "label": "web"}]
    assert set(g.edges) == {("ingress", "steer"), ("steer", "web"), ("steer", "out"), ("web", "out")}
    assert edge_branch(g, "steer", "web") == "web"
    assert edge_branch(g, "steer", "out") is None      # the default successor
    assert edge_branch(g, "ingress", "steer") is None


def test_hand_built_graph_becomes_a_chain():
    chain = Chain.from_graph(hand_built_graph())
    spec = chain.spec
    assert chain.name == "web-edge"
    assert spec.entry == "count"          # the only function nothing points to
    assert [f.name for f in spec.functions] == ["count", "steer", "web", "out"]
    steer = spec.function("steer")
    assert steer.default_next == "out"
    assert steer.branches == (("web", "web"),)
    assert spec.function("web").params.verdict == "pass"
    assert spec.function("web").default_next is None      # ends the chain with `exit`
    assert spec.function("steer").params.rules[0].dport == 80


def test_graph_to_yaml_to_graph_keeps_nodes_edges_and_attributes():
    g = hand_built_graph()
    text = Chain.from_graph(g).to_yaml()
    back = Chain.from_yaml_text(text).graph
    assert nx.is_isomorphic(
        g, back,
        node_match=lambda a, b: a == b,
        edge_match=lambda a, b: a.get("branch") == b.get("branch"))
    assert set(back.edges) == set(g.edges)          # same names, not just the same shape
    for node, attrs in g.nodes(data=True):
        assert back.nodes[node] == attrs
    assert back.graph["name"] == "web-edge"


def test_graph_of_a_graph_chain_is_the_same_graph():
    once = Chain.from_graph(hand_built_graph()).graph
    twice = Chain.from_graph(once).graph
    assert nx.utils.graphs_equal(once, twice)


@pytest.mark.parametrize("source", ["example", "branching"])
def test_yaml_to_graph_to_yaml_gives_the_same_spec(source):
    first = Chain.from_yaml(EXAMPLE) if source == "example" else Chain.from_yaml_text(BRANCHING)
    via_graph = Chain.from_graph(first.graph)
    assert via_graph.spec == first.spec
    assert Chain.from_yaml_text(via_graph.to_yaml()).spec == first.spec
    assert via_graph.to_yaml() == first.to_yaml()


def test_yaml_keeps_chain_settings_and_non_default_params():
    chain = Chain.from_yaml_text(BRANCHING)
    data = Chain.from_yaml_text(chain.to_yaml()).to_dict()
    assert (data["mode"], data["on_miss"], data["exit"]) == ("fused", "pass", "tx")
    assert data["description"] == "two labels and a default"
    assert data["functions"]["web"] == {"type": "counter", "verdict": "pass"}
    assert data["functions"]["out"] == {"type": "forward", "interface": "wan0"}
    assert data["functions"]["steer"]["next"] == {"web": "web", "dns": "out", "default": "out"}


def test_several_labels_to_one_successor_are_one_edge_with_a_list():
    chain = Chain.from_yaml_text(BRANCHING)
    g = chain.graph
    assert sorted(edge_branch(g, "steer", "out"), key=str) == sorted(["dns", None], key=str)
    assert Chain.from_graph(g).spec == chain.spec
    h = nx.DiGraph(name="two")
    h.add_node("s", type="classify", rules=[{"proto": "tcp", "label": "a"},
                                           {"proto": "udp", "label": "b"}])
    h.add_node("o", type="forward")
    h.add_edge("s", "o", branch=["a", "b"])
    assert Chain.from_graph(h).spec.function("s").next == (("a", "o"), ("b", "o"))


def test_spec_is_frozen():
    spec = Chain.from_yaml(EXAMPLE).spec
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.name = "other"
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.functions[0].next = ()
    with pytest.raises(ValidationError, match="frozen"):
        spec.function("steer").params.rules[0].dport = 1


def test_slots_are_topological_and_yaml_order_breaks_ties():
    text = """\
name: order
functions:
  out: {type: forward}
  steer:
    type: classify
    rules: [{proto: tcp, label: b}, {proto: udp, label: a}]
    next: {b: bee, a: ay, default: out}
  bee: {type: counter, next: out}
  ay: {type: counter, next: out}
  first: {type: counter, next: steer}
"""
    spec = Chain.from_yaml_text(text).spec
    assert spec.entry == "first"
    assert [f.name for f in spec.functions] == ["first", "steer", "bee", "ay", "out"]
    assert spec.slots == {"first": 0, "steer": 1, "bee": 2, "ay": 3, "out": 4}
    assert spec.labels == {"a": 0, "b": 1}


def test_explicit_entry_wins_over_the_root_guess():
    text = "name: e\nentry: a\nfunctions:\n  a: {type: counter, next: b}\n  b: {type: forward}\n"
    assert Chain.from_yaml_text(text).spec.entry == "a"


def test_tail_call_limit_is_33_and_fused_mode_lifts_it():
    assert MAX_TAIL_CALLS == 33
    assert len(Chain.from_yaml_text(line_chain(33)).spec.functions) == 33
    assert len(Chain.from_yaml_text(line_chain(34, "fused")).spec.functions) == 34


def test_mode_override_is_validated_like_the_yaml():
    fused = Chain.from_yaml_text(line_chain(34, "fused"))
    with pytest.raises(SpecError, match="needs 34 tail calls"):
        fused.with_mode("tailcall")
    with pytest.raises(SpecError, match="mode"):
        Chain.from_yaml(EXAMPLE).with_mode("turbo")
    assert Chain.from_yaml(EXAMPLE).with_mode("fused").spec.mode == "fused"


def test_attach_override_is_validated_like_the_yaml():
    spec = Chain.from_yaml(EXAMPLE).spec
    twice = (AttachPoint(interface="eth9", netns="ns"),) * 2
    with pytest.raises(SpecError, match="eth9@ns is listed twice under attach"):
        spec.with_changes(attach=twice)
    moved = spec.with_changes(attach=twice[:1])
    assert [str(a) for a in moved.attach] == ["eth9@ns"]
    assert moved.functions == spec.functions and moved.entry == spec.entry


# -- validation errors: file:line, the bad key, and how to fix it -----------------------

BASE = """\
name: t
functions:
  a:
    type: counter
    next: b
  b:
    type: forward
"""

# (id, chain text, line, key, fragments the message must contain)
ERRORS = [
    ("unknown type",
     BASE.replace("type: counter", "type: firewal"),
     4, "functions.a.type", ["unknown type 'firewal'", "classify, counter, dpi, firewall, forward, loadbalancer, nat", "vnfchain functions"]),
    ("type not a string",
     BASE.replace("type: counter", "type: [counter]"),
     4, "functions.a.type", ["unknown type", "classify, counter, dpi, firewall, forward, loadbalancer, nat"]),
    ("no type",
     BASE.replace("    type: counter\n", ""),
     3, "functions.a", ["has no 'type:'", "counter"]),
    ("unknown parameter",
     BASE.replace("    next: b\n", "    colour: red\n    next: b\n"),
     5, "functions.a.colour", ["function 'a' (counter)", "unknown key 'colour'", "known keys: verdict"]),
    ("bad counter verdict",
     BASE.replace("    next: b\n", "    verdict: bounce\n    next: b\n"),
     5, "functions.a.verdict", ["'bounce' is not one of continue, drop, pass, tx"]),
    ("next names a missing function",
     BASE.replace("next: b", "next: bee"),
     5, "functions.a.next", ["'bee'", "not a function", "a, b"]),
    ("next has the wrong shape",
     BASE.replace("next: b", "next: [b]"),
     5, "functions.a.next", ["'next' must name one function", "default: out"]),
    ("label never emitted",
     BASE.replace("next: b", "next: {web: b}"),
     5, "functions.a.next.web", ["never emits label 'web'", "its labels: none", "default"]),
    ("cycle",
     BASE + "    next: a\n",
     5, "functions.a.next", ["cycle", "a -> b -> a", "DAG"]),
    ("self loop",
     "name: t\nfunctions:\n  a:\n    type: counter\n    next: a\n",
     5, "functions.a.next", ["cycle", "a -> a"]),
    ("unreachable",
     ("name: t\nentry: a\nfunctions:\n  a: {type: counter, next: b}\n  b: {type: forward}\n"
      "  lost: {type: counter, next: b}\n"),
     6, "functions.lost", ["lost cannot be reached from entry 'a'", "connect them", "remove them"]),
    ("ambiguous entry",
     BASE + "  c:\n    type: counter\n    next: b\n",
     2, "functions", ["ambiguous entry", "a, c", "set 'entry:'"]),
    ("entry names a missing function",
     "name: t\nentry: start\n" + BASE.split("\n", 1)[1],
     2, "entry", ["entry 'start' is not a function", "a, b"]),
    ("chain name too long",
     BASE.replace("name: t", "name: " + "a" * 24),
     1, "name", ["[a-z][a-z0-9-]{0,22}", "pin paths", "rename it"]),
    ("chain name with bad characters",
     BASE.replace("name: t", "name: Web_Edge"),
     1, "name", ["chain name 'Web_Edge' must match", "rename it"]),
    ("function name with capitals",
     BASE.replace("  b:\n", "  Out:\n").replace("next: b", "next: Out"),
     6, "functions.Out", ["function name 'Out'", "lower-case identifier", "rename it"]),
    ("function name too long",
     BASE.replace("b", "f" * 25),
     6, "functions." + "f" * 25, ["at most 24 characters", "rename it"]),
    ("function name ending in a newline (it would end up in the C code and the pin names)",
     BASE.replace("  b:\n", '  "b\\n":\n').replace("next: b", 'next: "b\\n"'),
     6, "functions.b\n", ["function name 'b\\n'", "rename it"]),
    ("function name not a string",
     BASE.replace("  b:\n", "  1:\n").replace("next: b", "next: '1'"),
     6, "functions.1", ["function name '1'", "rename it"]),
    ("function body not a mapping",
     BASE + "  c: counter\n",
     8, "functions.c", ["function 'c' must be a mapping", "type:"]),
    ("duplicate attach point",
     "name: t\nattach:\n  - {interface: eth0, netns: dut}\n  - {interface: eth0, netns: dut}\n"
     + BASE.split("\n", 1)[1],
     4, "attach.1", ["eth0@dut is listed twice", "remove one"]),
    ("attach interface name with a slash",
     "name: t\nattach:\n  - interface: eth/0\n" + BASE.split("\n", 1)[1],
     3, "attach.0.interface", ["attach.0.interface"]),
    ("bad xdp_mode",
     "name: t\nxdp_mode: turbo\n" + BASE.split("\n", 1)[1],
     2, "xdp_mode", ["'turbo' is not one of auto, native, generic"]),
    ("bad exit action",
     "name: t\nexit: redirect\n" + BASE.split("\n", 1)[1],
     2, "exit", ["'redirect' is not one of pass, drop, tx"]),
    ("unknown chain key",
     "name: t\ncolour: red\n" + BASE.split("\n", 1)[1],
     2, "colour", ["unknown key 'colour'", "known keys: attach, description"]),
    ("missing name",
     BASE.split("\n", 1)[1],
     1, "name", ["missing required key 'name'"]),
    ("empty functions",
     "name: t\nfunctions: {}\n",
     2, "functions", ["at least one function", "type: counter"]),
    ("functions left blank",
     "name: t\nfunctions:\n",
     2, "functions", ["at least one function"]),
    ("forward interface with a slash",
     BASE.replace("type: forward", "type: forward\n    interface: wan/0"),
     8, "functions.b.interface", ["function 'b' (forward)", "interface: interface name 'wan/0'"]),
    ("forward interface too long",
     BASE.replace("type: forward", "type: forward\n    interface: abcdefghijklmnop"),
     8, "functions.b.interface", ["is 16 bytes long", "1-15 bytes (IFNAMSIZ)"]),
]

CLASSIFY = """\
name: t
functions:
  steer:
    type: classify
    rules:
      - proto: tcp
        dport: 80
        label: web
      - {proto: udp, dport: 53, label: dns}
    next: {web: out, dns: out, default: out}
  out:
    type: forward
"""

ERRORS += [
    ("port above 65535",
     CLASSIFY.replace("dport: 80\n", "dport: 70000\n"),
     7, "functions.steer.rules.0.dport", ["function 'steer' (classify)", "65535"]),
    ("port zero",
     CLASSIFY.replace("dport: 53,", "dport: 0,"),
     9, "functions.steer.rules.1.dport", ["rules.1.dport: 0 is less than 1"]),
    ("port not a number",
     CLASSIFY.replace("dport: 80\n", "dport: http\n"),
     7, "functions.steer.rules.0.dport", ["valid integer"]),
    ("port a boolean",
     CLASSIFY.replace("dport: 80\n", "dport: true\n"),
     7, "functions.steer.rules.0.dport", ["valid integer"]),
    ("port a quoted string",
     CLASSIFY.replace("dport: 80\n", "dport: '80'\n"),
     7, "functions.steer.rules.0.dport", ["valid integer"]),
    ("bad protocol",
     CLASSIFY.replace("proto: udp", "proto: sctp"),
     9, "functions.steer.rules.1.proto", ["'sctp' is not one of tcp, udp, icmp, icmpv6"]),
    ("port on icmp",
     CLASSIFY.replace("proto: tcp", "proto: icmp"),
     7, "functions.steer.rules.0.dport", ["tcp and udp only", "remove it"]),
    ("bad label",
     CLASSIFY.replace("label: web", "label: Web"),
     8, "functions.steer.rules.0.label", ["rules.0.label: 'Web' does not match"]),
    ("rule without label",
     CLASSIFY.replace("        label: web\n", ""),
     6, "functions.steer.rules.0.label", ["missing required key 'label'"]),
    ("no rules",
     CLASSIFY.replace("rules:", "rulez:"),
     5, "functions.steer.rulez", ["unknown key 'rulez'"]),
    ("branch on a label no rule emits",
     CLASSIFY.replace("{web: out,", "{http: out,"),
     10, "functions.steer.next.http", ["never emits label 'http'", "its labels: dns, web"]),
    ("yaml syntax error",
     BASE.replace("    next: b", "   next: b"),
     5, None, ["not valid YAML", "fix the syntax"]),
    ("yaml duplicate key",
     BASE.replace("    next: b\n", "    next: b\n    next: a\n"),
     6, None, ["not valid YAML", "duplicate key"]),
]


@pytest.mark.parametrize("text,line,key,fragments",
                         [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_validation_error_names_file_line_and_key(tmp_path, text, line, key, fragments):
    err = spec_error(tmp_path, text)
    path = str(tmp_path / "chain.yaml")
    assert (err.file, err.line, err.key) == (path, line, key), str(err)
    assert str(err).startswith(f"{path}:{line}: "), str(err)
    for fragment in fragments:
        assert fragment in str(err), str(err)
    assert err.exit_code == 2


def test_too_many_tail_calls(tmp_path):
    err = spec_error(tmp_path, line_chain(34))
    assert err.key == "functions" and err.line == 3
    assert "c0 -> c1" in str(err) and "-> c33" in str(err)
    assert "needs 34 tail calls" in str(err)
    assert "allows 33" in str(err) and "mode: fused" in str(err)


def test_longest_branch_counts_not_the_number_of_functions(tmp_path):
    # 40 functions, but every path is short: fine in tail-call mode
    fns = "".join(f"  f{i}: {{type: counter, next: out}}\n" for i in range(40))
    rules = ", ".join(f"{{proto: tcp, dport: {i + 1}, label: l{i}}}" for i in range(40))
    branches = ", ".join(f"l{i}: f{i}" for i in range(40))
    text = (f"name: wide\nfunctions:\n  steer:\n    type: classify\n    rules: [{rules}]\n"
            f"    next: {{{branches}}}\n{fns}  out: {{type: forward}}\n")
    assert len(Chain.from_yaml(chain_file(tmp_path, text)).spec.functions) == 42


def test_errors_from_text_have_the_line_but_no_file():
    with pytest.raises(SpecError) as info:
        Chain.from_yaml_text(BASE.replace("next: b", "next: bee"))
    assert info.value.file is None and info.value.line == 5
    assert str(info.value).startswith("function 'a': next names 'bee'")


def test_missing_file_is_a_spec_error(tmp_path):
    with pytest.raises(SpecError, match="does not exist; check the path"):
        Chain.from_yaml(tmp_path / "nope.yaml")


@pytest.mark.parametrize("text", ["", "- a\n- b\n", "just words\n"])
def test_document_that_is_not_a_mapping(tmp_path, text):
    err = spec_error(tmp_path, text)
    assert "must be a mapping with name, functions" in str(err)


# -- graph input errors name the node or edge ---------------------------------------------

def test_graph_errors_name_the_node_and_key():
    g = hand_built_graph()
    g.nodes["web"]["colour"] = "red"
    with pytest.raises(SpecError) as info:
        Chain.from_graph(g)
    assert info.value.key == "functions.web.colour"
    assert "function 'web' (counter): unknown key 'colour'" in str(info.value)
    assert info.value.file is None


def test_graph_branch_the_function_never_emits():
    g = hand_built_graph()
    g.add_edge("count", "out", branch="web")       # a counter emits no labels
    with pytest.raises(SpecError, match="'count' \\(counter\\) never emits label 'web'") as info:
        Chain.from_graph(g)
    assert info.value.key == "functions.count.next.web"


def test_graph_node_without_type():
    g = hand_built_graph()
    g.add_node("lonely")
    g.add_edge("out", "lonely")
    with pytest.raises(SpecError, match="function 'lonely' has no 'type:'"):
        Chain.from_graph(g)


def test_graph_without_name():
    g = nx.DiGraph()
    g.add_node("a", type="counter")
    with pytest.raises(SpecError, match=r"has no name; create it as nx.DiGraph\(name="):
        Chain.from_graph(g)


def test_graph_cycle():
    g = hand_built_graph()
    g.add_edge("out", "count")
    with pytest.raises(SpecError, match="cycle"):
        Chain.from_graph(g)


@pytest.mark.parametrize("graph", [nx.Graph(name="g"), nx.MultiDiGraph(name="g"), {"name": "g"}],
                         ids=["undirected", "multigraph", "dict"])
def test_only_a_digraph_is_a_chain_graph(graph):
    with pytest.raises(SpecError, match=r"must be a networkx DiGraph \(nx.DiGraph\(name=...\)\)"):
        Chain.from_graph(graph)


ALL_WRONG = """\
name: many
xdp_mode: turbo
functions:
  fw:
    type: firewall
    defualt: drop
    rules:
      - {action: alow, proto: tcp}
      - {action: allow, proto: tcp, dport: 99999}
    next: out
  out: {type: forward, interfac: eth0}
"""


def test_every_mistake_is_reported_at_once_in_words(tmp_path):
    """One run of validate names every mistake, in file order, each with its
    line, the value written and what would be right."""
    path = tmp_path / "chain.yaml"
    path.write_text(ALL_WRONG)
    with pytest.raises(SpecErrors) as info:
        Chain.from_yaml(path)
    lines = [(e.line, e.reason) for e in info.value.errors]
    assert lines == [
        (2, "xdp_mode: 'turbo' is not one of auto, native, generic"),
        (6, "function 'fw' (firewall): unknown key 'defualt' (did you mean 'default'?)"),
        (8, "function 'fw' (firewall): rules.0.action: 'alow' is not one of allow, drop, goto "
            "(did you mean 'allow'?)"),
        (9, "function 'fw' (firewall): rules.1.dport: port range 99999-99999 must lie within 0-65535, "
            "low end first"),
        (11, "function 'out' (forward): unknown key 'interfac' (did you mean 'interface'?)"),
    ]
    result = CliRunner().invoke(cli_main, ["validate", str(path)])
    assert result.exit_code == 2
    assert [line for line in result.output.splitlines() if line] == [
        f"error: {path}:{line}: {reason}" for line, reason in lines]


def test_a_misspelt_required_key_is_one_mistake_not_two(tmp_path):
    path = tmp_path / "chain.yaml"
    path.write_text("name: x\nfunctions:\n  s: {type: classify, rulez: []}\n")
    with pytest.raises(SpecError) as info:
        Chain.from_yaml(path)
    assert not isinstance(info.value, SpecErrors)
    assert info.value.reason == "function 's' (classify): unknown key 'rulez' (did you mean 'rules'?)"


def test_source_nat_that_the_kernel_would_take_for_a_martian_is_a_warning(tmp_path):
    head = "name: x\nexit: pass\nfunctions:\n  nat:\n    type: nat\n    outside: wan0\n" \
           "    snat: [{src: 198.18.1.0/24, to: masquerade}]\n"
    path = tmp_path / "chain.yaml"
    path.write_text(head)
    (warning,) = Chain.from_yaml(path).spec.warnings
    assert warning.startswith(f"{path}:4: function 'nat': source-NATed packets reach the chain's end")
    assert "fix: send what 'nat' rewrites to a forward function" in warning
    path.write_text(head + "    next: out\n  out: {type: forward}\n")
    assert Chain.from_yaml(path).spec.warnings == ()
