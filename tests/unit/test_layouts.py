"""Map layouts are declared once (vnfchain/layout.py): the C structs the
templates compile and the codecs user space writes the maps with both come
from the declaration. Held here: clang lays every struct of every function
type out exactly as the codec does (sizeof and every offsetof, compiled by
BCC's clang for the BPF target), every template declares exactly the maps its
type's maps() lists, and the codecs read back what they write."""
from __future__ import annotations

import re

import pytest

from vnfchain import Chain
from vnfchain.chain.render import _VC_MAP, _VC_RINGBUF, render
from vnfchain.functions import REGISTRY
from vnfchain.layout import BE16, BE32, U8, U16, U32, U64, Member, Struct, pack_percpu, unpack_percpu

# each type in the configurations that shape its maps differently
CONFIGS = {
    "counter": ["{type: counter}", "{type: counter, verdict: drop}"],
    "classify": ["{type: classify, rules: [{proto: tcp, dport: 80, label: web}], next: {web: tail}}"],
    "forward": ["{type: forward}", "{type: forward, interface: lo}"],
    "firewall": ["{type: firewall, rules: [{action: allow, proto: tcp, dport: 80}]}",
                 "{type: firewall, conntrack: true, max_flows: 1024, "
                 "rules: [{action: allow, ct: [established]}, {action: goto, label: web, src: 198.18.1.0/24}], "
                 "next: {web: tail}}"],
    "nat": ["{type: nat, outside: lo, snat: [{src: 198.18.1.0/24, to: 198.18.100.1}], "
            "dnat: [{proto: tcp, port: 8080, to: 198.18.1.12, address: 198.18.100.1}]}"],
    "loadbalancer": ["{type: loadbalancer, table_size: 251, services: [{vip: 198.18.0.100, port: 80, "
                     "backends: [{ip: 198.18.2.11}, {ip: 198.18.2.12, weight: 2}]}]}",
                     "{type: loadbalancer, table_size: 7, encap_src6: '2002:c612::1', services: [{vip: '2002:c612::100', "
                     "port: 443, mode: ipip, backends: [{ip: '2002:c612::11'}]}]}"],
    "dpi": ["{type: dpi, max_scan: 64, signatures: [{id: 1, content: evil, action: drop}]}",
            "{type: dpi, signatures: [{id: 1, content: [GET, '|0d 0a|X'], action: alert}], "
            "apps: [{app: http, host: '*.bad.example', action: label, label: web}], next: {web: tail}}"],
}


def chain_of(body: str, name: str = "fn") -> Chain:
    tail = "  tail: {type: counter}\n" if "tail" in body else ""
    return Chain.from_yaml_text(f"name: layouts\nfunctions:\n  {name}: {body}\n{tail}")


def cases():
    return [pytest.param(body, id=f"{kind}-{i}") for kind, bodies in CONFIGS.items() for i, body in enumerate(bodies)]


def test_every_function_type_is_covered():
    assert set(CONFIGS) == set(REGISTRY)


def c_name(ctype: str) -> str:
    """A map's key or value type as VC_MAP names it, spelt as the layout does."""
    ctype = re.sub(r"\s+", " ", ctype.strip())
    return f"__{ctype}" if ctype in ("u8", "u16", "u32", "u64", "s32") else ctype


@pytest.mark.parametrize("body", cases())
def test_the_template_declares_exactly_the_maps_of_maps(body):
    chain = chain_of(body)
    f = chain.spec.function("fn")
    (unit,) = render(chain.spec, "/pins/layouts", "tailcall")
    section = unit.source.split('(function fn (')[1].split('#line')[0]
    # the size, without VC_MAP_F's flags or the comment a loadbalancer map carries
    declared = {name: (kind, c_name(key), c_name(value), int(re.split(r"[,/]", size)[0]))
                for kind, key, value, name, size in _VC_MAP.findall(section)}
    declared.update({name: ("ringbuf", None, None, int(size)) for name, size in _VC_RINGBUF.findall(section)})
    listed = {f"fn_{m.name}": (m.kind, m.key and m.key.c_type("fn"), m.value and m.value.c_type("fn"),
                               m.max_entries) for m in f.ftype.maps(f.params)}
    assert declared == listed


def structs_of(body: str) -> list[Struct]:
    f = chain_of(body).spec.function("fn")
    out: list[Struct] = []
    for layout in f.ftype.structs(f.params):
        out += [s for s in layout.structs() if s not in out]
    return out


def static_asserts(structs: list[Struct], prefix: str) -> str:
    lines = []
    for s in structs:
        name = s.c_type(prefix)
        lines.append(f'_Static_assert(sizeof({name}) == {s.size}, "sizeof({name}) is not {s.size}");')
        for m, at in zip(s.members, s.offsets):
            lines.append(f'_Static_assert(__builtin_offsetof({name}, {m.name}) == {at}, '
                         f'"offsetof({name}, {m.name}) is not {at}");')
    return "\n".join(lines)


def test_clang_lays_every_struct_out_as_its_codec_does():
    """Every struct of every configuration in one program, compiled as the
    templates are (BCC's clang, BPF target): a failed assertion names the
    struct, the member and the offset the codec assumes."""
    from vnfchain.chain.compile import bcc, captured_stderr
    try:
        BPF = bcc().BPF
    except Exception as exc:   # the layouts are still checked by the deployed maps' sizes (packet tests)
        pytest.skip(f"needs BCC: {exc}")
    parts = ["#include <uapi/linux/bpf.h>"]
    for i, case in enumerate(cases()):
        prefix = f"c{i}"
        structs = structs_of(case.values[0])
        f = chain_of(case.values[0]).spec.function("fn")
        parts += [f.ftype.c_structs(f.params, prefix), static_asserts(structs, prefix)]
    with captured_stderr() as err:
        try:
            BPF(text="\n\n".join(parts).encode())
            failed = ""
        except Exception:
            failed = "compile failed"
    assert not failed, "\n".join(ln for ln in err.text.splitlines() if "error" in ln)


def test_a_layout_refuses_padding_it_does_not_declare():
    with pytest.raises(ValueError, match="member b at offset 1 needs 4-byte alignment"):
        Struct("gap", "x", [Member("a", U8), Member("b", U32)])
    with pytest.raises(ValueError, match="not a multiple of its 8-byte alignment"):
        Struct("tail", "x", [Member("a", U64), Member("b", U32)])
    assert Struct("packed", "x", [Member("a", U8), Member("b", U32)], packed=True).size == 5


def test_codecs_read_back_what_they_write():
    inner = Struct("inner", "x", [Member("port", BE16), Member("pad", U16)])
    outer = Struct("outer", "x", [
        Member("words", U64, count=2), Member("addr", BE32, count=4), Member("ip", BE32),
        Member("ends", inner, count=2), Member("name", U8, count=6), Member("pad", U16, count=3)])
    value = {"addr": bytes([198, 18, 0, 1]), "ip": 0xC6120001, "words": [1, 2**63],
             "ends": [{"port": 80}, {"port": 443}], "name": b"web"}
    raw = outer.pack(value)
    assert len(raw) == outer.size == 16 + 16 + 4 + 8 + 6 + 6    # no gap anywhere
    assert raw[16:20] == bytes([198, 18, 0, 1]) and raw[32:36] == bytes([198, 18, 0, 1])   # network order
    back = outer.unpack(raw)
    assert back["addr"] == bytes([198, 18, 0, 1]) + bytes(12)   # shorter bytes: zero-filled
    assert back["ip"] == 0xC6120001 and back["words"] == (1, 2**63) and back["name"] == b"web\0\0\0"
    assert [e["port"] for e in back["ends"]] == [80, 443]
    assert outer.pack(back) == raw
    with pytest.raises(ValueError, match="has no member prot"):
        inner.pack({"prot": 1})
    per_cpu = pack_percpu(inner, [{"port": 1}, {"port": 2}])
    assert len(per_cpu) == 16                                   # each CPU's value padded to 8 bytes
    assert [v["port"] for v in unpack_percpu(inner, [per_cpu[:4], per_cpu[8:12]])] == [1, 2]


def test_the_c_struct_has_a_comment_for_it_and_each_documented_member():
    s = Struct("flow", "a flow", [Member("saddr", BE32, "source, network order", count=4), Member("proto", U8),
                                  Member("pad", U8, count=3)])
    assert s.c("fw") == ("/* a flow */\nstruct fw_flow {\n\t__be32 saddr[4]; /* source, network order */\n"
                         "\t__u8 proto;\n\t__u8 pad[3];\n};")
    shared = Struct("vc_x", "shared", [Member("a", U32)], shared=True)
    assert shared.c("fw").startswith("#ifndef VC_STRUCT_VC_X\n#define VC_STRUCT_VC_X\n/* shared */\nstruct vc_x {")
