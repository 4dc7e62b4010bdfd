/* vc_firewall.h - helpers of the firewall template that touch no map: packet
 * predicates for classification and conntrack, TCP window tracking, and the
 * lowest-set-bit search. Needs the FW_* constants and the structs
 * fw_tcp_dir and fw_tcp_seg the firewall template renders first
 * (vnfchain/firewall/lbvs.py, conntrack.py; the structs' layouts are
 * declared in vnfchain/functions/firewall.py). */
#ifndef VC_FIREWALL_H
#define VC_FIREWALL_H

#define FW_FIN_ORIG 1
#define FW_FIN_REPLY 2

#define FW_DIR_SEEN 1     /* its SYN (or SYN-ACK) was seen: the fields hold */
#define FW_DIR_WSCALE 2   /* its SYN carried a window scale option */
#define FW_DIR_ACKED 4    /* maxack holds an ack it sent */

/* what an allowed packet does to its flow */
#define FW_CHANGE_NONE 0
#define FW_CHANGE_OPEN 1     /* a new entry, or a fresh start of the old one */
#define FW_CHANGE_TRACK 2    /* seen now; TCP: windows move along */
#define FW_CHANGE_ANSWER 3   /* TCP: the SYN-ACK, the reply side starts */
#define FW_CHANGE_CLOSE 4    /* TCP: a RST ends it */

#define FW_TCP_OPT_MAX 40   /* option bytes a TCP header holds */
#define FW_NO_WSCALE 0xff
#define FW_MAX_WSCALE 14   /* RFC 7323: larger shifts are read as 14 */
#define FW_TCP_OPT_EOL 0
#define FW_TCP_OPT_NOP 1
#define FW_TCP_OPT_WSCALE 3

/* tcp/udp with its header present (not a later fragment) */
static __always_inline int fw_has_ports(const struct vc_meta *meta)
{
	return meta->l4_off && (meta->ip_proto == IPPROTO_TCP || meta->ip_proto == IPPROTO_UDP);
}

static __always_inline int fw_is_icmp(const struct vc_meta *meta)
{
	return (meta->ip_version == 4 && meta->ip_proto == IPPROTO_ICMP) ||
	       (meta->ip_version == 6 && meta->ip_proto == IPPROTO_ICMPV6);
}

static __always_inline int fw_is_icmp_echo(const struct vc_meta *meta)
{
	if (!fw_is_icmp(meta) || !meta->l4_off)
		return 0;
	if (meta->ip_version == 4)
		return meta->icmp_type == 8 || meta->icmp_type == 0;
	return meta->icmp_type == 128 || meta->icmp_type == 129;
}

static __always_inline __u8 fw_icmp_echo_request(__u8 ip_version)
{
	return ip_version == 4 ? 8 : 128;
}

static __always_inline __u8 fw_icmp_echo_reply(__u8 ip_version)
{
	return ip_version == 4 ? 0 : 129;
}

/* an error that quotes the packet it is about: destination unreachable, time
 * exceeded, parameter problem (ICMPv4); those and packet too big (ICMPv6) */
static __always_inline int fw_is_icmp_error(__u8 ip_version, __u8 type)
{
	if (ip_version == 4)
		return type == 3 || type == 11 || type == 12;
	return type >= 1 && type <= 4;
}

/* the ways a packet may belong to a flow: an echo request only the way its
 * flow was opened, an echo reply only back, other ICMP no way (an error is at
 * most related) */
#define FW_WAY_ORIG 1
#define FW_WAY_REPLY 2

static __always_inline int fw_flow_ways(const struct vc_meta *meta)
{
	if (!fw_is_icmp(meta))
		return FW_WAY_ORIG | FW_WAY_REPLY;
	if (!fw_is_icmp_echo(meta))
		return 0;
	return meta->icmp_type == fw_icmp_echo_request(meta->ip_version) ? FW_WAY_ORIG : FW_WAY_REPLY;
}

/* nf_conntrack's tcp_valid_flags, rendered from vnfchain/firewall/conntrack.py */
static __always_inline int fw_tcp_flags_valid(__u8 flags)
{
	return (FW_TCP_VALID_FLAGS >> (flags & FW_TCP_FLAGS_CHECKED)) & 1;
}

/* may this packet open a flow? TCP only with a bare SYN, ICMP only with an echo request */
static __always_inline int fw_may_open(const struct vc_meta *meta)
{
	if (meta->ip_proto == IPPROTO_TCP)
		return (meta->tcp_flags & (VC_TCP_SYN | VC_TCP_ACK)) == VC_TCP_SYN;
	if (fw_is_icmp(meta))
		return meta->l4_off && meta->icmp_type == fw_icmp_echo_request(meta->ip_version);
	return 1;
}

/* RFC 1982 serial number arithmetic: a is before b in sequence space */
static __always_inline int fw_seq_before(__u32 a, __u32 b)
{
	return (__s32)(a - b) < 0;
}

static __always_inline int fw_seq_after(__u32 a, __u32 b)
{
	return (__s32)(b - a) < 0;
}

/* the TCP segment at meta->l4_off, its length taken from the IP header (the
 * frame may carry Ethernet padding); 0 when there is none */
static __always_inline int fw_tcp_segment(struct xdp_md *ctx, const struct vc_meta *meta, struct fw_tcp_seg *seg)
{
	/* the parser checked the header against the datagram's length */
	struct vc_tcphdr *tcp = meta->payload_off ? vc_at(ctx, meta->l4_off, sizeof(*tcp)) : 0;

	if (!tcp)
		return 0;   /* a later fragment, or not TCP */
	seg->seq = ntohl(tcp->seq);
	seg->ack = ntohl(tcp->ack_seq);
	seg->win = ntohs(tcp->window);
	seg->flags = tcp->flags;
	seg->opt_off = meta->l4_off + sizeof(*tcp);
	seg->opt_end = meta->payload_off;
	seg->end = seg->seq + (meta->l3_end - meta->payload_off) + !!(seg->flags & VC_TCP_SYN) +
		   !!(seg->flags & VC_TCP_FIN);
	return 1;
}

/* the window scale option of a SYN (RFC 7323), FW_NO_WSCALE without one. The
 * options are copied to the stack (a walk over the packet costs the verifier a
 * bounds check per step) and every index is masked into the buffer, so that
 * the verifier sees it bounded whatever clang keeps in registers. */
static __always_inline __u8 fw_tcp_wscale(struct xdp_md *ctx, const struct fw_tcp_seg *seg)
{
	__u8 opts[64] = {};
	__u32 len = seg->opt_end - seg->opt_off, i = 0;

	if (len == 0 || len > FW_TCP_OPT_MAX || bpf_xdp_load_bytes(ctx, seg->opt_off, opts, len))
		return FW_NO_WSCALE;
	/* no step counter: i grows every round, and states that differ only in
	 * it let the verifier prune */
	while (i < len) {
		__u8 kind = opts[i & 63], size = opts[(i + 1) & 63];

		if (kind == FW_TCP_OPT_EOL)
			break;
		if (kind == FW_TCP_OPT_NOP) {
			i++;
			continue;
		}
		if (size < 2)
			break;
		if (kind == FW_TCP_OPT_WSCALE && size == 3) {
			__u8 shift = opts[(i + 2) & 63];

			return shift > FW_MAX_WSCALE ? FW_MAX_WSCALE : shift;
		}
		i += size;
	}
	return FW_NO_WSCALE;
}

/* one side's first segment, its SYN (or SYN-ACK): windows in SYNs are never scaled */
static __always_inline void fw_tcp_start(struct fw_tcp_dir *d, const struct fw_tcp_seg *seg, __u8 wscale)
{
	d->end = seg->end;
	d->maxend = seg->end;
	d->maxwin = seg->win ? seg->win : 1;
	d->maxack = 0;
	d->flags = FW_DIR_SEEN;
	d->wscale = 0;
	if (wscale != FW_NO_WSCALE) {
		d->wscale = wscale;
		d->flags |= FW_DIR_WSCALE;
	}
}

/* nf_conntrack's four bounds (tcp_in_window) for a segment from snd to rcv:
 * I   seq <= what rcv allowed snd (its ack + window): nothing past the window;
 * II  end >= snd's next sequence number - rcv's largest window: a retransmission
 *     of at most one window back, nothing older;
 * III ack <= rcv's next sequence number: no ack of data rcv never sent;
 * IV  ack >= that - snd's largest window (at least FW_MIN_ACK_WINDOW): a late
 *     ack, not a stranger's. */
static __always_inline int fw_tcp_in_window(const struct fw_tcp_dir *snd, const struct fw_tcp_dir *rcv,
					    const struct fw_tcp_seg *seg)
{
	__u32 ackwin = snd->maxwin > FW_MIN_ACK_WINDOW ? snd->maxwin : FW_MIN_ACK_WINDOW;

	if (fw_seq_after(seg->seq, snd->maxend) || fw_seq_before(seg->end, snd->end - rcv->maxwin))
		return 0;
	if (!(seg->flags & VC_TCP_ACK))
		return 1;
	return !fw_seq_after(seg->ack, rcv->end) && !fw_seq_before(seg->ack, rcv->end - ackwin);
}

/* RFC 5961 3.2 seen from the middle: a RST resets only at the receiver's next
 * sequence number; we know it as the sender's next one or the receiver's
 * largest ack (they differ while data is in flight) */
static __always_inline int fw_tcp_rst_exact(const struct fw_tcp_dir *snd, const struct fw_tcp_dir *rcv, __u32 seq)
{
	return seq == snd->end || ((rcv->flags & FW_DIR_ACKED) && seq == rcv->maxack);
}

/* a RST is held to the window too, and one below what the receiver has
 * acknowledged would be dropped by it anyway: no retransmission slack */
static __always_inline int fw_tcp_rst_in_window(const struct fw_tcp_dir *snd, const struct fw_tcp_dir *rcv,
						const struct fw_tcp_seg *seg)
{
	if ((rcv->flags & FW_DIR_ACKED) && fw_seq_before(seg->seq, rcv->maxack))
		return 0;
	return fw_tcp_in_window(snd, rcv, seg);
}

/* an in-window segment from snd moves both sides along */
static __always_inline void fw_tcp_track(struct fw_tcp_dir *snd, struct fw_tcp_dir *rcv, const struct fw_tcp_seg *seg)
{
	__u32 win = (seg->flags & VC_TCP_SYN) ? seg->win : seg->win << snd->wscale;

	if (snd->maxwin < win)
		snd->maxwin = win;
	if (fw_seq_after(seg->end, snd->end))
		snd->end = seg->end;
	if (!(seg->flags & VC_TCP_ACK))
		return;
	if (!(snd->flags & FW_DIR_ACKED) || fw_seq_after(seg->ack, snd->maxack)) {
		snd->maxack = seg->ack;
		snd->flags |= FW_DIR_ACKED;
	}
	/* a zero window still lets a one-byte probe through */
	if (fw_seq_after(seg->ack + (win ? win : 1), rcv->maxend))
		rcv->maxend = seg->ack + (win ? win : 1);
}

static __always_inline void fw_flow_reverse(__u32 *saddr, __u32 *daddr, __u16 *sport, __u16 *dport)
{
	__u32 a;
	__u16 p;

#pragma unroll
	for (int i = 0; i < 4; i++) {
		a = saddr[i];
		saddr[i] = daddr[i];
		daddr[i] = a;
	}
	p = *sport;
	*sport = *dport;
	*dport = p;
}

/* index of the lowest set bit of a non-zero word (BPF has no ctz instruction) */
static __always_inline __u32 fw_lowest_bit(__u64 x)
{
	__u32 n = 0;

	if (!(x & 0xffffffffULL)) {
		n += 32;
		x >>= 32;
	}
	if (!(x & 0xffff)) {
		n += 16;
		x >>= 16;
	}
	if (!(x & 0xff)) {
		n += 8;
		x >>= 8;
	}
	if (!(x & 0xf)) {
		n += 4;
		x >>= 4;
	}
	if (!(x & 0x3)) {
		n += 2;
		x >>= 2;
	}
	if (!(x & 0x1))
		n += 1;
	return n;
}

#endif
