/* vc_rewrite.h - rewriting a packet's source or destination address and port
 * (ICMP echo: identifier) with incremental checksum updates, and keeping
 * struct vc_meta in step: what NAT and the load balancer's NAT mode do. */
#ifndef VC_REWRITE_H
#define VC_REWRITE_H

#include "vc_csum.h"

/* a running one's complement difference: ~old + new, one 32-bit word */
static __always_inline __u32 vc_csum_diff4(__u32 diff, __u32 old, __u32 new)
{
	diff += (__u16)~(old & 0xffff);
	diff += (__u16)~(old >> 16);
	diff += new & 0xffff;
	diff += new >> 16;
	return diff;
}

/* the checksum at sum after fields changed by diff */
static __always_inline void vc_csum_apply(__u16 *sum, __u32 diff)
{
	__u32 s = (__u16)~*sum;

	s += diff;
	*sum = ~vc_csum_fold(s);
}

/* the transport part of a rewrite: the port (ICMP echo: identifier) and the
 * checksum, whose pseudo-header changed by addr_diff */
static __always_inline int vc_rewrite_l4(struct xdp_md *ctx, struct vc_meta *meta, int dst,
					 __u32 addr_diff, __be16 port)
{
	__be16 old_port;

	if (meta->ip_proto == IPPROTO_TCP) {
		struct vc_tcphdr *tcp = vc_at(ctx, meta->l4_off, sizeof(*tcp));

		if (!tcp)
			return -1;
		old_port = dst ? tcp->dest : tcp->source;
		if (dst)
			tcp->dest = port;
		else
			tcp->source = port;
		vc_csum_apply(&tcp->check, addr_diff);
		vc_csum_replace2(&tcp->check, old_port, port);
	} else if (meta->ip_proto == IPPROTO_UDP) {
		struct udphdr *udp = vc_at(ctx, meta->l4_off, sizeof(*udp));

		if (!udp)
			return -1;
		old_port = dst ? udp->dest : udp->source;
		if (dst)
			udp->dest = port;
		else
			udp->source = port;
		if (udp->check) {   /* 0: no checksum (IPv4); a computed 0 is sent as 0xffff */
			vc_csum_apply(&udp->check, addr_diff);
			vc_csum_replace2(&udp->check, old_port, port);
			if (!udp->check)
				udp->check = 0xffff;
		}
	} else if (meta->ip_proto == IPPROTO_ICMP) {
		struct vc_icmphdr *icmp = vc_at(ctx, meta->l4_off, sizeof(*icmp));

		if (!icmp)
			return -1;
		/* the identifier moves with the inside end; no pseudo-header in ICMPv4 */
		old_port = icmp->id;
		icmp->id = port;
		vc_csum_replace2(&icmp->check, old_port, port);
		meta->sport = port;
		return 0;
	}
	if (dst)
		meta->dport = port;
	else
		meta->sport = port;
	return 0;
}

/* rewrite the source (dst == 0) or destination address and port, checksums too */
static __always_inline int vc_rewrite_ipv4(struct xdp_md *ctx, struct vc_meta *meta, int dst,
					   __be32 addr, __be16 port)
{
	struct iphdr *ip = vc_at(ctx, meta->l3_off, sizeof(*ip));
	__be32 old_addr;

	if (!ip)
		return -1;
	old_addr = dst ? ip->daddr : ip->saddr;
	if (dst)
		ip->daddr = addr;
	else
		ip->saddr = addr;
	vc_csum_replace4(&ip->check, old_addr, addr);
	if (dst)
		meta->daddr[0] = addr;
	else
		meta->saddr[0] = addr;
	return vc_rewrite_l4(ctx, meta, dst, vc_csum_diff4(0, old_addr, addr), port);
}

/* the same for IPv6 (TCP and UDP; IPv6 has no header checksum) */
static __always_inline int vc_rewrite_ipv6(struct xdp_md *ctx, struct vc_meta *meta, int dst,
					   const __be32 *addr, __be16 port)
{
	struct ipv6hdr *ip6 = vc_at(ctx, meta->l3_off, sizeof(*ip6));
	__be32 *field;
	__u32 diff = 0;

	if (!ip6)
		return -1;
	field = dst ? (__be32 *)&ip6->daddr : (__be32 *)&ip6->saddr;
#pragma unroll
	for (int i = 0; i < 4; i++) {
		diff = vc_csum_diff4(diff, field[i], addr[i]);
		field[i] = addr[i];
		if (dst)
			meta->daddr[i] = addr[i];
		else
			meta->saddr[i] = addr[i];
	}
	return vc_rewrite_l4(ctx, meta, dst, diff, port);
}

#endif
