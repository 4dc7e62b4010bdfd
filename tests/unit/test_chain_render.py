"""Render: a validated chain becomes the C that deploy compiles. Pure: no root, no
BCC, no bpffs; what is checked here is the text a user sees with `vnfchain render`.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from vnfchain import Chain
from vnfchain.chain import render as render_mod
from vnfchain.chain.render import ENTRY_PROGRAM, UNIT_NAME, counter_layout, render
from vnfchain.chain.verdicts import COMMON_REASONS, COUNTERS, LABEL_BASE, UNPARSED, VERDICTS
from vnfchain.functions import REGISTRY

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "pvp-forward.yaml"
PINS = "/pins/test-chain"

# Two classifiers, labels to distinct and shared successors, YAML order not
# topological: exercises slots, label ids and every jump form.
BRANCHING = """\
name: branchy
on_miss: pass
exit: tx
functions:
  out: {type: forward}
  dns: {type: counter, next: out}
  web:
    type: classify
    rules: [{proto: tcp, dport: 443, label: tls}]
    next: {tls: out}
  steer:
    type: classify
    rules:
      - {proto: tcp, dport: 80, label: web}
      - {proto: udp, dport: 53, label: dns}
      - {proto: icmp, label: ping}
    next: {web: web, dns: dns, ping: out, default: out}
  first: {type: counter, next: steer}
"""

CHAINS = {"example": EXAMPLE.read_text(), "branching": BRANCHING}
MODES = ("tailcall", "fused")

_JUMP = re.compile(r"vc_progs\.call\(ctx, (\d+)\);  /\* -> (\w+) \*/|goto fn_(\w+);|return VC_EXIT;")
_BRANCH = re.compile(r"if \(verdict == VC_LABEL\((\d+)\)\) \{  /\* (\w+) \*/")


def chain(key: str) -> Chain:
    return Chain.from_yaml_text(CHAINS[key])


def source_of(c: Chain, mode: str, pin_dir: str = PINS) -> str:
    (unit,) = render(c.spec, pin_dir, mode)
    return unit.source


def programs(source: str, mode: str) -> dict[str, str]:
    """Function name (or "(entry)") -> the C that dispatches its verdict."""
    if mode == "tailcall":
        found = re.findall(r"^int (vc_fn_\w+|vc_entry)\(struct xdp_md \*ctx\)\n\{\n(.*?)^\}",
                           source, re.MULTILINE | re.DOTALL)
        return {("(entry)" if n == ENTRY_PROGRAM else n[len("vc_fn_"):]): body for n, body in found}
    entry = re.search(r"^int vc_entry\(struct xdp_md \*ctx\)\n\{\n(.*?)^\}", source,
                      re.MULTILINE | re.DOTALL).group(1)
    parts = re.split(r"^fn_(\w+):\n", entry, flags=re.MULTILINE)
    return {"(entry)": parts[0], **dict(zip(parts[1::2], parts[2::2]))}


def jumps(body: str, c: Chain, mode: str) -> set[tuple[str, str | None]]:
    """(label or "default", target or None for exit) for every jump in one program."""
    names = {i: label for label, i in c.spec.labels.items()}
    slots = c.spec.slots
    out, label = set(), "default"
    for line in body.splitlines():
        branch = _BRANCH.search(line)
        if branch:
            assert names[int(branch.group(1))] == branch.group(2), line   # id and comment agree
            label = branch.group(2)
            continue
        jump = _JUMP.search(line)
        if jump:
            slot, commented, goto = jump.groups()
            if slot is not None:
                assert slots[commented] == int(slot), line   # the constant is that function's slot
                out.add((label, commented))
            else:
                out.add((label, goto))                        # None: return VC_EXIT
        if line.strip() == "}":
            label = "default"
    return out


def expected_jumps(c: Chain, mode: str) -> dict[str, set]:
    # fused: the entry falls through to its first function, which is slot 0
    want = {"(entry)": {("default", c.spec.entry)} if mode == "tailcall" else set()}
    for f in c.spec.functions:
        want[f.name] = set(f.next) if f.default_next else set(f.next) | {("default", None)}
    return want


# -- structure ------------------------------------------------------------------------------

@pytest.mark.parametrize("key", CHAINS)
@pytest.mark.parametrize("mode", MODES)
def test_every_edge_is_rendered_as_a_jump_to_the_right_function(key, mode):
    c = chain(key)
    got = {name: jumps(body, c, mode) for name, body in programs(source_of(c, mode), mode).items()}
    assert got == expected_jumps(c, mode)
    if mode == "fused":
        assert list(got)[:2] == ["(entry)", c.spec.entry]
    assert c.spec.slots[c.spec.entry] == 0


@pytest.mark.parametrize("key", CHAINS)
def test_tail_calls_use_constant_slots_and_count_misses(key):
    source = source_of(chain(key), "tailcall")
    calls = re.findall(r"vc_progs\.call\(([^;]*)\);", source)
    assert calls and all(re.fullmatch(r"ctx, \d+", args) for args in calls), calls
    # every tail call is followed by the miss path: counted, ends in on_miss
    assert source.count("vc_progs.call(") == source.count("return vc_tail_call_missed(row);")
    assert "goto fn_" not in source


@pytest.mark.parametrize("key", CHAINS)
def test_fused_program_has_no_tail_calls_and_jumps_only_forward(key):
    source = source_of(chain(key), "fused")
    assert "vc_progs.call(" not in source      # (the prog array's #if VC_TAILCALL block stays)
    assert "#define VC_TAILCALL 0" in source
    for m in re.finditer(r"goto fn_(\w+);", source):
        assert source.index(f"\nfn_{m.group(1)}:\n") > m.start(), m.group(0)


def test_slot_order_is_topological_with_yaml_order_breaking_ties():
    c = chain("branching")
    assert c.spec.slots == {"first": 0, "steer": 1, "dns": 2, "web": 3, "out": 4}
    tail = source_of(c, "tailcall")
    positions = [tail.index(f"int vc_fn_{name}(") for name in c.spec.slots]
    assert positions == sorted(positions)
    fused = source_of(c, "fused")
    positions = [fused.index(f"\nfn_{name}:\n") for name in c.spec.slots]
    assert positions == sorted(positions)
    for name, slot in c.spec.slots.items():   # a function counts in the stats row of its slot
        for mode, source in (("fused", fused), ("tailcall", tail)):
            row = re.search(r"\brow = [^;]*?(\d+)\]?\)?;", programs(source, mode)[name])
            assert row and int(row.group(1)) == slot, (mode, name)


@pytest.mark.parametrize("key", CHAINS)
def test_units_name_every_program(key):
    c = chain(key)
    (tail,) = render(c.spec, PINS, "tailcall")
    assert tail.name == UNIT_NAME
    assert tail.programs == tuple((f"vc_fn_{f.name}", f.name) for f in c.spec.functions) + \
        ((ENTRY_PROGRAM, ""),)
    for f in c.spec.functions:
        assert f"static __always_inline int {f.name}_body(" in tail.source
        assert f"int vc_fn_{f.name}(struct xdp_md *ctx)" in tail.source
    assert "int vc_entry(struct xdp_md *ctx)" in tail.source
    (fused,) = render(c.spec, PINS, "fused")
    assert fused.programs == ((ENTRY_PROGRAM, ""),)
    for f in c.spec.functions:
        assert f"static __always_inline int {f.name}_body(" in fused.source
        assert f"vc_fn_{f.name}" not in fused.source


def test_labels_are_rendered_with_chain_wide_ids():
    c = chain("branching")
    assert c.spec.labels == {"dns": 0, "ping": 1, "tls": 2, "web": 3}
    steer = programs(source_of(c, "tailcall"), "tailcall")["steer"]
    for label, i in c.spec.labels.items():
        if label != "tls":
            assert f"if (verdict == VC_LABEL({i})) {{  /* {label} */" in steer
    web = programs(source_of(c, "tailcall"), "tailcall")["web"]
    assert "VC_LABEL(2)" in web and "VC_LABEL(3)" not in web


@pytest.mark.parametrize("on_miss,exit_", [("drop", "pass"), ("pass", "drop"), ("drop", "tx")])
@pytest.mark.parametrize("mode", MODES)
def test_on_miss_and_exit_become_xdp_actions(on_miss, exit_, mode):
    text = f"name: acts\non_miss: {on_miss}\nexit: {exit_}\nfunctions:\n  c: {{type: counter}}\n"
    source = source_of(Chain.from_yaml_text(text), mode)
    actions = {"drop": "XDP_DROP", "pass": "XDP_PASS", "tx": "XDP_TX"}
    assert f"#define VC_ON_MISS {actions[on_miss]}\n" in source
    assert f"#define VC_EXIT {actions[exit_]}\n" in source
    assert len(re.findall(r"#define VC_EXIT ", source)) == 1


# -- verdicts, counters and reasons: one Python source, generated into C ---------------------

@pytest.mark.parametrize("mode", MODES)
def test_verdicts_counters_and_reasons_are_defined_from_verdicts_py(mode):
    source = source_of(chain("example"), mode)
    defines = dict(counter_layout().c_defines())
    for name, value in defines.items():
        assert f"#define {name} {value}\n" in source
    for i, verdict in enumerate(VERDICTS):
        assert defines[f"VC_{verdict.upper()}"] == i
    for i, counter in enumerate(COUNTERS):
        assert defines[f"VC_CTR_{counter.upper()}"] == i
    reasons = list(COMMON_REASONS) + [r for t in REGISTRY.values() for r in t.reasons]
    for reason in reasons:
        assert f"VC_REASON_{reason.upper()}" in defines
    assert defines["VC_LABEL_BASE"] == LABEL_BASE > len(VERDICTS)
    assert defines["VC_NCOUNTERS"] == len(COUNTERS) + defines["VC_NREASONS"] + len(UNPARSED)
    for i, reason in enumerate(UNPARSED, start=1):
        # a function drops an unparsed frame under reason BASE + meta->unparsed,
        # the entry counts it at counter BASE + meta->unparsed
        assert reasons.index(f"unparsed_{reason}") == defines["VC_REASON_UNPARSED_BASE"] + i
        assert counter_layout().names[defines["VC_CTR_UNPARSED_BASE"] + i] == f"unparsed_{reason}"
        assert defines[f"VC_UNPARSED_{reason.upper()}"] == i


def test_every_counter_name_used_in_c_is_generated_and_none_is_hand_defined():
    defined = {name for name, _ in counter_layout().c_defines()}
    generated = re.compile(r"\bVC_(?:CTR|REASON)_[A-Z_]+\b|\bVC_(?:CONTINUE|DROP|PASS|TX|REDIRECT|"
                           r"LABEL_BASE|NREASONS|NCOUNTERS)\b")
    tdir = render_mod.templates_dir()
    files = list(tdir.rglob("*.h")) + list(tdir.rglob("*.j2"))
    used = {name for f in files for name in generated.findall(f.read_text())}
    assert used and used <= defined, used - defined
    for f in files:
        hand = re.findall(r"#define\s+(VC_(?:CTR|REASON)_\w+|VC_(?:CONTINUE|DROP|PASS|TX|REDIRECT)\b)",
                          f.read_text())
        assert not hand, f"{f} defines {hand}; they belong in verdicts.py"


def test_verdict_counters_are_parallel_to_verdicts():
    # vc_stats.h counts verdict v in VC_CTR_DROP + (v - VC_DROP)
    for verdict in VERDICTS[VERDICTS.index("drop"):]:
        assert COUNTERS.index(verdict) - COUNTERS.index("drop") == \
            VERDICTS.index(verdict) - VERDICTS.index("drop"), verdict


# -- what render knows about pins, lines and sections ----------------------------------------

def test_pins_live_under_the_chain_pin_dir():
    c = chain("example")
    (unit,) = render(c.spec, PINS, "tailcall", generation=3)
    assert f'#define VC_GEN_DIR "{PINS}/g3"\n' in unit.source
    assert set(unit.map_pins) == {"ingress_cfg", "ingress_by_proto", "steer_rules", "web_cfg", "web_by_proto",
                                  "out_egress"}
    for name, path in unit.map_pins.items():
        assert re.fullmatch(rf"{PINS}/maps/{name}-[0-9a-f]{{8}}", path), path
        assert f'#define VC_PIN_{name} "{path}"\n' in unit.source


def test_line_directives_name_the_function_and_keep_the_file_line_numbers():
    c = chain("example")
    lines = source_of(c, "tailcall").splitlines()
    directives = [(i, line) for i, line in enumerate(lines) if line.startswith("#line")]
    names = [re.fullmatch(r'#line (\d+) "chain\.bpf\.c \((.*)\)"', line).group(2) for _, line in directives]
    assert names == [f"function {f.name} ({f.type})" for f in c.spec.functions] + ["entry"]
    for i, line in directives:
        assert int(line.split()[1]) == i + 2    # the next line's 1-based number


def test_sections_change_only_where_the_code_changes():
    base = chain("example")
    (before,) = render(base.spec, PINS, "tailcall")
    assert set(before.sections) == {"(prelude)", "(entry)", "ingress", "steer", "web", "out"}
    many = "".join(f"      - {{proto: udp, dport: {port}, label: web}}\n" for port in range(1, 41))
    regrown = Chain.from_yaml_text(CHAINS["example"].replace("    rules:\n", "    rules:\n" + many))
    (after,) = render(regrown.spec, PINS, "tailcall")
    changed = {k for k in before.sections if before.sections[k] != after.sections[k]}
    assert changed == {"steer"}                   # 42 rules outgrow the rules map: a new map size
    for edit in (("dport: 8080", "dport: 8443"),
                 ("  web:\n    type: counter\n", "  web:\n    type: counter\n    verdict: pass\n")):
        edited = Chain.from_yaml_text(CHAINS["example"].replace(*edit))
        (same,) = render(edited.spec, PINS, "tailcall")
        assert same.sections == before.sections   # a rule, a verdict: map content, not code


def test_render_is_deterministic():
    c = chain("branching")
    for mode in MODES:
        assert render(c.spec, PINS, mode) == render(c.spec, PINS, mode)


def test_instances_of_one_type_get_their_own_names():
    source = source_of(chain("example"), "fused")
    for name in ("ingress", "web"):
        assert f"struct {name}_tally {{" in source
        assert f"{name}_by_proto" in source
    assert source.count("_body(struct xdp_md *ctx, struct vc_meta *meta)") == 4


# -- Chain.render, with_mode, write(), templates -------------------------------------------

def test_chain_render_is_pure_and_uses_the_pin_root(tmp_path, monkeypatch):
    bpffs, run = tmp_path / "bpffs", tmp_path / "run"
    monkeypatch.setenv("VNFCHAIN_BPFFS", str(bpffs))
    monkeypatch.setenv("VNFCHAIN_RUN", str(run))
    c = chain("example")
    (unit,) = c.render()
    assert f'#define VC_GEN_DIR "{bpffs}/pvp-edge/g1"' in unit.source
    assert not bpffs.exists() and not run.exists()
    assert list(tmp_path.iterdir()) == []


def test_mode_comes_from_the_chain_unless_overridden():
    c = chain("example")
    assert "#define VC_TAILCALL 1" in c.render(pin_dir=PINS)[0].source
    assert "#define VC_TAILCALL 0" in c.render(mode="fused", pin_dir=PINS)[0].source
    fused = c.with_mode("fused")
    assert fused.spec.mode == "fused" and "goto fn_steer;" in fused.render(pin_dir=PINS)[0].source


def test_write_puts_the_unit_and_its_headers_side_by_side(tmp_path):
    units = chain("example").render(pin_dir=PINS)
    out = tmp_path / "out"
    written = render_mod.write(units, out)
    headers = sorted(render_mod.lib_dir().glob("*.h"))
    assert headers, "templates/bpf/lib has no headers"
    assert (out / UNIT_NAME).read_text() == units[0].source
    for header in headers:
        assert (out / "lib" / header.name).read_text() == header.read_text()
    assert sorted(written) == sorted([out / UNIT_NAME] + [out / "lib" / h.name for h in headers])
    for included in re.findall(r'#include "(\w+\.h)"', units[0].source):
        assert (out / "lib" / included).is_file(), included


def test_templates_dir_holds_the_chain_templates_and_one_per_type():
    tdir = render_mod.templates_dir()
    assert (tdir / "lib" / "vc_chain.h").is_file()
    for name in ("tailcall.bpf.c.j2", "fused.bpf.c.j2"):
        assert (tdir / "chain" / name).is_file()
    for ftype in REGISTRY.values():
        assert (tdir / ftype.template).is_file(), ftype.name
