"""What the dpi function's application parsers cost: the verifier's explored
instructions for a dpi with app rules (its own program in tail-call mode, the
whole program in fused mode) and ns/packet through BPF_PROG_TEST_RUN for HTTP
requests, TLS ClientHellos (real and with the SNI behind many extensions) and
DNS queries that no rule matches, beside a UDP packet no parser reads; all
measured interleaved in one run.

    sudo .venv/bin/python perf/bench_dpi_l7.py [--repeat 100000] [--rounds 5] [--label TEXT]
        [--against DIR [DIR]] [--against-label TEXT]

--against measures, in the same interleaved rounds, the same chain deployed
by other code (e.g. the commit before a change, from its own checkout): DIR is
the generation directory of its tail-call deployment (…/<chain>/g<N>), the
second one that of its fused one; they are left as they are. Writes
perf/results/dpi-l7.md (and .json).
"""
from __future__ import annotations

import argparse
import os
import ssl
import sys
from pathlib import Path

from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from vnfchain import Chain, bpfsys  # noqa: E402
from results_io import interleaved_medians, save, stamp  # noqa: E402  (beside this script)
from vnfchain.dpi.synthetic import client_hello  # noqa: E402
from vnfchain.testrun import run_xdp  # noqa: E402

# no next: a packet no rule matches ends in XDP_PASS
CHAIN = """
name: {name}
mode: {mode}
functions:
  dpi:
    type: dpi
    signatures: [{{id: 1, content: "/etc/passwd", action: drop}}]
    apps:
      - {{app: http, host: "*.bad.example", action: drop}}
      - {{app: http, host: admin.example, path: /admin, action: drop}}
      - {{app: tls, sni: banned.example, action: drop}}
      - {{app: dns, qname: "*.evil.example", action: drop}}
"""

BROWSER = ("Host: www.example\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like "
           "Gecko) Chrome/126.0.0.0 Safari/537.36\r\nAccept: text/html,application/xhtml+xml,application/xml;"
           "q=0.9,image/avif,image/webp,*/*;q=0.8\r\nAccept-Language: en-US,en;q=0.9\r\nAccept-Encoding: "
           "gzip, deflate\r\nCookie: " + "session=" + "ab" * 150 + "\r\nConnection: keep-alive\r\n\r\n")


def python_client_hello(sni: str) -> bytes:
    context = ssl.create_default_context()
    out = ssl.MemoryBIO()
    conn = context.wrap_bio(ssl.MemoryBIO(), out, server_hostname=sni)
    try:
        conn.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return out.read()


def tcp(payload: bytes, dport: int) -> bytes:
    return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src="198.18.1.2", dst="198.18.2.2")
                 / TCP(sport=40000, dport=dport, flags="PA") / payload)


def udp(payload: bytes, dport: int) -> bytes:
    return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src="198.18.1.2", dst="198.18.2.2")
                 / UDP(sport=40000, dport=dport) / payload)


PACKETS = {
    "UDP, no application (64 B)": udp(bytes(64), 9),
    "HTTP GET as curl sends it (78 B)": tcp(b"GET / HTTP/1.1\r\nHost: www.example\r\nUser-Agent: curl/7.88.1\r\n"
                                             b"Accept: */*\r\n\r\n", 80),
    f"HTTP GET as a browser sends it ({len(BROWSER) + 16} B, Host first)": tcp(
        b"GET / HTTP/1.1\r\n" + BROWSER.encode(), 80),
    "HTTP GET, Host after 400 B of headers": tcp(b"GET / HTTP/1.1\r\nX-Pad: " + b"p" * 391
                                                 + b"\r\nHost: www.example\r\n\r\n", 80),
    "HTTP GET, absolute-form target": tcp(b"GET http://www.example/ HTTP/1.1\r\nHost: www.example\r\n\r\n", 80),
    "TLS ClientHello of Python's ssl": tcp(python_client_hello("www.example"), 443),
    "TLS ClientHello, SNI after 30 extensions": tcp(client_hello("www.example", before=30), 443),
    "TLS ClientHello, SNI after 300 extensions": tcp(client_hello("www.example", before=300), 443),
    "DNS query": udp(bytes(DNS(rd=1, qd=DNSQR(qname="www.example"))), 53),
}


def program_insns(gen_dir: Path, mode: str) -> int:
    """What the verifier explored for the dpi's own program (tail-call) or the whole one (fused)."""
    fd = bpfsys.obj_get(str(gen_dir / ("fn_dpi" if mode == "tailcall" else "entry")))
    try:
        return bpfsys.verified_insns(fd)
    finally:
        os.close(fd)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--label", default="this code", help="what this run measures, e.g. a commit")
    ap.add_argument("--against", type=Path, nargs="+", metavar="DIR",
                    help="generation directories of the same chain deployed by other code (tail-call, fused)")
    ap.add_argument("--against-label", default="against", help="what --against measures")
    args = ap.parse_args()
    deps, insns, other = {}, {}, {}
    try:
        for mode in ("tailcall", "fused"):
            deps[mode] = Chain.from_yaml_text(CHAIN.format(name=f"vcb{os.getpid()}-l7{mode[0]}", mode=mode)
                                              ).deploy(attach=[])
            insns[mode] = program_insns(deps[mode].gen_dir, mode)
        for mode, gen_dir in zip(("tailcall", "fused"), args.against or []):
            other[mode] = program_insns(gen_dir, mode)
        fds = {args.label: deps["tailcall"].entry_fd()}
        if args.against:
            fds[args.against_label] = bpfsys.obj_get(str(args.against[0] / "entry"))
        for fd in fds.values():
            for name, frame in PACKETS.items():
                assert run_xdp(fd, frame).action == "XDP_PASS", (name, "a rule matched")
        median = interleaved_medians({(who, name): (fd, frame) for name, frame in PACKETS.items()
                                      for who, fd in fds.items()}, args.rounds, args.repeat)
        for fd in fds.values():
            os.close(fd)
    finally:
        for dep in deps.values():
            dep.undeploy()
    data = stamp(repeat=args.repeat, rounds=args.rounds, verified_insns={args.label: insns, args.against_label: other},
                 ns_per_packet={who: {name: median[who, name] for name in PACKETS} for who in fds})
    columns = list(fds)
    head, rule = "| | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)
    verifier = [f"| {mode}: {'the dpi program' if mode == 'tailcall' else 'the fused program'} | "
                + " | ".join(f"{table[mode]:,}" if mode in table else "-" for table in (insns, other)[:len(columns)])
                + " |" for mode in ("tailcall", "fused")]
    lines = ["# DPI application parsers: verifier cost and ns/packet (BPF_PROG_TEST_RUN)", "",
             f"{data['when']}, kernel {data['kernel']}, {args.repeat} repetitions x {args.rounds} interleaved "
             "rounds (median), tail-call mode; a dpi with one signature and four app rules (HTTP host, "
             "host+path, TLS SNI, DNS qname) that no packet matches. The machine is shared: expect a few "
             "percent of noise.", "",
             "Instructions the verifier explored at load (its budget: 1,000,000 per program):", "",
             head, rule, *verifier, "", "ns per packet through the whole chain:", "", head, rule,
             *[f"| {name} | " + " | ".join(f"{median[who, name]:,.0f}" for who in columns) + " |" for name in PACKETS]]
    save("dpi-l7", data, lines)


if __name__ == "__main__":
    main()
