"""vnfchain.testrun: BPF_PROG_TEST_RUN through libbpf, on tiny BCC programs.

All programs are compiled once per module (BCC costs ~0.5 s a compile). The
namespace tests create ``vctr-<pid>`` with a veth pair ``vctr-a`` <-> ``vctr-b``
and remove it, and every XDP attachment, also when a test fails.
"""
from __future__ import annotations

import contextlib
import ctypes
import os

import pytest

from vnfchain.errors import DeployError
from vnfchain.testrun import RunResult, generate, run_xdp

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="BPF_PROG_TEST_RUN needs root"),
]
bcc = pytest.importorskip("bcc", reason="needs Debian's python3-bpfcc")

PROGRAMS = r"""
#include <linux/if_ether.h>

#define GENERATED_ETHERTYPE 0x88b5  /* IEEE "local experimental" */

BPF_PROG_ARRAY(jump, 1);
BPF_ARRAY(seen_ifindex, u32, 1);
BPF_ARRAY(rx_count, u64, 1);

int drop_all(struct xdp_md *ctx) { return XDP_DROP; }
int tx_all(struct xdp_md *ctx) { return XDP_TX; }

int swap_macs(struct xdp_md *ctx) {
    void *data = (void *)(long)ctx->data, *data_end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > data_end)
        return XDP_ABORTED;
    unsigned char old_dest[ETH_ALEN];
    #pragma unroll
    for (int i = 0; i < ETH_ALEN; i++) {
        old_dest[i] = eth->h_dest[i];
        eth->h_dest[i] = eth->h_source[i];
        eth->h_source[i] = old_dest[i];
    }
    return XDP_TX;
}

/* XDP_ABORTED unless slot 0 holds a program: a missed tail call is visible */
int tail_entry(struct xdp_md *ctx) {
    jump.call(ctx, 0);
    return XDP_ABORTED;
}

int tail_target(struct xdp_md *ctx) {
    void *data = (void *)(long)ctx->data, *data_end = (void *)(long)ctx->data_end;
    unsigned char *first = data;
    if ((void *)(first + 1) > data_end)
        return XDP_ABORTED;
    *first = 0xee;  /* proves the target, not the entry, produced the output */
    return XDP_DROP;
}

int record_ifindex(struct xdp_md *ctx) {
    int zero = 0;
    u32 ifindex = ctx->ingress_ifindex;
    seen_ifindex.update(&zero, &ifindex);
    return XDP_PASS;
}

/* counts only generated frames: the kernel's own IPv6 ND/MLD must not add up */
int count_rx(struct xdp_md *ctx) {
    void *data = (void *)(long)ctx->data, *data_end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > data_end || eth->h_proto != htons(GENERATED_ETHERTYPE))
        return XDP_DROP;
    int zero = 0;
    u64 *count = rx_count.lookup(&zero);
    if (count)
        __sync_fetch_and_add(count, 1);
    return XDP_DROP;
}
"""

SRC_MAC = bytes.fromhex("020000000001")
DST_MAC = bytes.fromhex("020000000002")
# an IPv4 ethertype with a zero payload: the programs only look at the Ethernet header
FRAME = DST_MAC + SRC_MAC + b"\x08\x00" + bytes(50)
GENERATED_FRAME = DST_MAC + SRC_MAC + b"\x88\xb5" + bytes(50)
# far above any ifindex the host namespace is likely to have, so it resolves only in ours
NETNS_IFINDEX = 48_000


@pytest.fixture(scope="module")
def bpf():
    program = bcc.BPF(text=PROGRAMS.encode())
    yield program
    program.cleanup()


@pytest.fixture(scope="module")
def prog(bpf):
    """Look up a program's fd by function name (each loaded once)."""
    return lambda name: bpf.load_func(name.encode(), bcc.BPF.XDP).fd


@pytest.fixture(scope="module")
def veth_netns():
    """netns ``vctr-<pid>`` holding vctr-a (ifindex NETNS_IFINDEX) <-> vctr-b, both up."""
    from pyroute2 import IPRoute, netns

    name = f"vctr-{os.getpid()}"
    netns.create(name)
    try:
        with IPRoute(netns=name) as ipr:
            ipr.link("add", ifname="vctr-a", kind="veth", peer="vctr-b", index=NETNS_IFINDEX)
            for ifname in ("lo", "vctr-a", "vctr-b"):
                ipr.link("set", index=ipr.link_lookup(ifname=ifname)[0], state="up")
            yield name, ipr
    finally:
        netns.remove(name)


@contextlib.contextmanager
def xdp_attached(ipr, ifname: str, prog_fd: int):
    index = ipr.link_lookup(ifname=ifname)[0]
    ipr.link("set", index=index, xdp_fd=prog_fd)
    try:
        yield
    finally:
        ipr.link("set", index=index, xdp_fd=-1)


def test_drop_verdict(prog):
    result = run_xdp(prog("drop_all"), FRAME)
    assert (result.retval, result.action) == (1, "XDP_DROP")
    assert result.data == FRAME


def test_mac_swap_shows_in_output(prog):
    result = run_xdp(prog("swap_macs"), FRAME)
    assert result.action == "XDP_TX"
    assert result.data == SRC_MAC + DST_MAC + FRAME[12:]
    assert result.packet.dst == "02:00:00:00:00:01"


def test_accepts_scapy_packet(prog):
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    packet = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(
        src="198.18.0.1", dst="198.18.0.2") / UDP(sport=1000, dport=2000)
    result = run_xdp(prog("swap_macs"), packet)
    assert result.packet[Ether].src == "02:00:00:00:00:02"
    assert result.packet[UDP].dport == 2000


def test_repeat_reports_mean_duration(prog):
    result = run_xdp(prog("drop_all"), FRAME, repeat=1000)
    assert isinstance(result, RunResult)
    assert result.duration_ns > 0


def test_tail_call_is_followed(bpf, prog):
    entry, jump = prog("tail_entry"), bpf[b"jump"]
    assert run_xdp(entry, FRAME).action == "XDP_ABORTED"  # empty slot: the miss path
    jump[ctypes.c_int(0)] = ctypes.c_int(prog("tail_target"))
    try:
        result = run_xdp(entry, FRAME)
    finally:
        del jump[ctypes.c_int(0)]
    assert result.action == "XDP_DROP"
    assert result.data[0] == 0xEE


def test_short_frame_is_a_clear_error(prog):
    with pytest.raises(DeployError, match="at least an Ethernet header"):
        run_xdp(prog("drop_all"), b"\x00" * 10)


def test_unknown_ifindex_names_the_cause(prog):
    with pytest.raises(DeployError, match="ENODEV"):
        run_xdp(prog("record_ifindex"), FRAME, ingress_ifindex=NETNS_IFINDEX)


def test_missing_netns_is_a_clear_error(prog):
    with pytest.raises(DeployError, match="does not exist"):
        run_xdp(prog("drop_all"), FRAME, netns=f"vctr-absent-{os.getpid()}")


def test_ingress_ifindex_resolved_in_netns(bpf, prog, veth_netns):
    name, _ = veth_netns
    result = run_xdp(prog("record_ifindex"), FRAME, ingress_ifindex=NETNS_IFINDEX, netns=name)
    assert result.action == "XDP_PASS"
    assert bpf[b"seen_ifindex"][ctypes.c_int(0)].value == NETNS_IFINDEX


def test_generate_live_frames_reach_the_peer(bpf, prog, veth_netns):
    name, ipr = veth_netns
    counter = bpf[b"rx_count"]
    counter[ctypes.c_int(0)] = ctypes.c_uint64(0)
    # a veth takes XDP_TX'd frames only when its peer runs an XDP program
    with xdp_attached(ipr, "vctr-b", prog("count_rx")):
        elapsed = generate(prog("tx_all"), GENERATED_FRAME, count=5000,
                           ingress_ifindex=NETNS_IFINDEX, netns=name)
    assert elapsed > 0
    assert counter[ctypes.c_int(0)].value == 5000


def test_generate_rejects_bad_batch(prog):
    with pytest.raises(ValueError, match="batch_size"):
        generate(prog("tx_all"), FRAME, count=1, ingress_ifindex=1, batch_size=0)

