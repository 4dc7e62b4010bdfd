"""The firewall as a user meets it on the command line: its parameters, its
errors with file:line, and the shadowed-rule warning naming both rules."""
from __future__ import annotations

from click.testing import CliRunner

import vnfchain.cli.commands  # noqa: F401  (registers the commands)
from vnfchain.cli import cli

CHAIN = """\
name: edge
functions:
  fw:
    type: firewall
    rules:
      - {action: allow, proto: tcp, dst: 198.18.0.0/16}
      - {action: drop, proto: tcp, dst: 198.18.2.0/24, dport: 22}
      - {action: allow, proto: udp, dport: 53}
"""


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_shadowed_rule_is_a_warning_naming_both(tmp_path):
    path = tmp_path / "chain.yaml"
    path.write_text(CHAIN)
    result = run("validate", path)
    assert result.exit_code == 0, result.output
    assert f"warning: {path}:7: function 'fw': rule 1 can never match: rule 0 before it" in result.output
    assert "(line 6)" in result.output
    assert "rule 2" not in result.output


def test_bad_cidr_port_and_protocol_name_file_and_line(tmp_path):
    for bad, key, words in [
        ("dst: 198.18.2.0/33", "dst", "is not a CIDR"),
        ("dport: 70000", "dport", "must lie within 0-65535"),
        ("proto: sctpx", "proto", "unknown protocol"),
    ]:
        path = tmp_path / "chain.yaml"
        path.write_text(CHAIN.replace("dst: 198.18.2.0/24, dport: 22", bad if key != "proto" else
                                      "dst: 198.18.2.0/24, dport: 22").replace(
                                          "proto: udp, dport: 53", "proto: sctpx" if key == "proto" else
                                          "proto: udp, dport: 53"))
        result = run("validate", path)
        assert result.exit_code == 2, result.output
        line = 8 if key == "proto" else 7
        assert f"{path}:{line}:" in result.output and words in result.output
        assert "Traceback" not in result.output


def test_ct_rules_need_conntrack(tmp_path):
    path = tmp_path / "chain.yaml"
    path.write_text(CHAIN + "      - {action: allow, ct: established}\n")
    result = run("validate", path)
    assert result.exit_code == 2
    assert "needs conntrack: true" in result.output


def test_functions_firewall_documents_every_parameter():
    result = run("functions", "firewall")
    assert result.exit_code == 0
    for name in ("default", "rules", "rules[].src", "rules[].dport", "rules[].flags", "rules[].icmp_type",
                 "rules[].iif", "rules[].ct", "rules[].label", "conntrack", "non_ip", "timeouts.udp",
                 "max_flows", "max_unconfirmed", "ct_evicted_flows", "ct_evicted_unconfirmed"):
        assert name in result.output, name


def test_conntrack_table_sizes_are_bounded(tmp_path):
    path = tmp_path / "chain.yaml"
    for size, bound in (("max_flows: 10", "10 is less than 16"),
                        ("max_unconfirmed: 100000000", "100000000 is more than 1048576")):
        path.write_text(CHAIN.replace("    rules:", f"    conntrack: true\n    {size}\n    rules:"))
        result = run("validate", path)
        assert result.exit_code == 2, result.output
        assert f"{path}:6:" in result.output and size.split(":")[0] in result.output and bound in result.output
        assert "Traceback" not in result.output


def test_a_goto_behind_an_established_allow_is_a_warning(tmp_path):
    """The classic mistake: `allow ct: established` first, then `goto` a DPI,
    which then sees only each flow's first packets."""
    path = tmp_path / "chain.yaml"
    head = "name: edge\nfunctions:\n  fw:\n    type: firewall\n    conntrack: true\n    rules:\n"
    tail = "    next: {inspect: dpi}\n  dpi: {type: counter}\n"
    wrong = ("      - {action: allow, ct: [established, related]}\n"
             "      - {action: goto, label: inspect, proto: tcp, dport: 443}\n")
    path.write_text(head + wrong + tail)
    result = run("validate", path)
    assert result.exit_code == 0, result.output
    assert (f"warning: {path}:8: function 'fw': rule 1 (goto inspect) sees only the first packets of a flow: "
            f"rule 0 before it allows the established ones") in result.output
    assert "(line 7)" in result.output
    right = "".join(reversed(wrong.splitlines(keepends=True)))
    path.write_text(head + right + tail)
    assert "warning" not in run("validate", path).output
