/* vc_rewrite.h - rewriting an IPv4 packet's source or destination address and
 * port (ICMP echo: identifier) with incremental checksum updates, and keeping
 * struct vc_meta in step: what NAT and the load balancer's NAT mode do. */
#ifndef VC_REWRITE_H
#define VC_REWRITE_H

#include "vc_csum.h"

/* rewrite the source (dst == 0) or destination address and port, checksums too */
static __always_inline int vc_rewrite_ipv4(struct xdp_md *ctx, struct vc_meta *meta, int dst,
					   __be32 addr, __be16 port)
{
	struct iphdr *ip = vc_at(ctx, meta->l3_off, sizeof(*ip));
	__be32 old_addr;
	__be16 old_port;

	if (!ip)
		return -1;
	old_addr = dst ? ip->daddr : ip->saddr;
	if (dst)
		ip->daddr = addr;
	else
		ip->saddr = addr;
	vc_csum_replace4(&ip->check, old_addr, addr);

	if (meta->ip_proto == IPPROTO_TCP) {
		struct vc_tcphdr *tcp = vc_at(ctx, meta->l4_off, sizeof(*tcp));

		if (!tcp)
			return -1;
		old_port = dst ? tcp->dest : tcp->source;
		if (dst)
			tcp->dest = port;
		else
			tcp->source = port;
		vc_csum_replace4(&tcp->check, old_addr, addr);
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
		if (udp->check) {   /* 0: no checksum; a computed 0 is sent as 0xffff */
			vc_csum_replace4(&udp->check, old_addr, addr);
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
	}
	if (dst) {
		meta->daddr[0] = addr;
		if (meta->ip_proto != IPPROTO_ICMP)
			meta->dport = port;
	} else {
		meta->saddr[0] = addr;
		if (meta->ip_proto != IPPROTO_ICMP)
			meta->sport = port;
	}
	return 0;
}

#endif
