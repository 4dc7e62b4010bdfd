/* vc_parse.h - header parsing for the entry program: fills struct vc_meta once
 * so that no later function parses Ethernet/IP/L4 again. */
#ifndef VC_PARSE_H
#define VC_PARSE_H

struct vc_vlan_hdr {
	__be16 tci;
	__be16 proto;
};

static __always_inline void vc_parse_l4(struct xdp_md *ctx, struct vc_meta *meta)
{
	if (meta->ip_proto == IPPROTO_TCP) {
		struct vc_tcphdr *tcp = vc_at(ctx, meta->l4_off, sizeof(*tcp));
		if (!tcp)
			return;
		meta->sport = tcp->source;
		meta->dport = tcp->dest;
		meta->tcp_flags = tcp->flags;
	} else if (meta->ip_proto == IPPROTO_UDP) {
		struct udphdr *udp = vc_at(ctx, meta->l4_off, sizeof(*udp));
		if (!udp)
			return;
		meta->sport = udp->source;
		meta->dport = udp->dest;
	} else if (meta->ip_proto == IPPROTO_ICMP || meta->ip_proto == IPPROTO_ICMPV6) {
		/* type and code are all an ICMP message must have; echo adds the identifier */
		__u8 *tc = vc_at(ctx, meta->l4_off, 2);
		struct vc_icmphdr *icmp;

		if (!tc)
			return;
		meta->icmp_type = tc[0];
		meta->icmp_code = tc[1];
		icmp = vc_at(ctx, meta->l4_off, sizeof(*icmp));
		if (icmp)
			meta->sport = icmp->id;
	}
}

static __always_inline void vc_parse_ipv4(struct xdp_md *ctx, struct vc_meta *meta, __u16 off)
{
	struct iphdr *ip = vc_at(ctx, off, sizeof(*ip));

	if (!ip || ip->ihl < 5)
		return;
	meta->ip_version = 4;
	meta->l3_off = off;
	meta->ip_proto = ip->protocol;
	meta->saddr[0] = ip->saddr;
	meta->daddr[0] = ip->daddr;
	if (ip->frag_off & htons(0x1fff))  /* a later fragment carries no L4 header */
		return;
	meta->l4_off = off + ip->ihl * 4;
	vc_parse_l4(ctx, meta);
}

static __always_inline void vc_parse_ipv6(struct xdp_md *ctx, struct vc_meta *meta, __u16 off)
{
	struct ipv6hdr *ip6 = vc_at(ctx, off, sizeof(*ip6));

	if (!ip6)
		return;
	meta->ip_version = 6;
	meta->l3_off = off;
	meta->ip_proto = ip6->nexthdr;  /* extension headers are not walked yet */
	__builtin_memcpy(meta->saddr, &ip6->saddr, 16);
	__builtin_memcpy(meta->daddr, &ip6->daddr, 16);
	meta->l4_off = off + sizeof(*ip6);
	vc_parse_l4(ctx, meta);
}

/* one MurmurHash3 round: every input word is mixed on its own before the next
 * joins (adding or xoring raw fields first lets different flows collide) */
static __always_inline __u32 vc_hash_round(__u32 h, __u32 v)
{
	v *= 0xcc9e2d51;
	v = (v << 15) | (v >> 17);
	v *= 0x1b873593;
	h ^= v;
	h = (h << 13) | (h >> 19);
	return h * 5 + 0xe6546b64;
}

/* MurmurHash3 (x86, 32 bit) of the 5-tuple; IPv6 addresses folded by xor */
static __always_inline __u32 vc_flow_hash(const struct vc_meta *m)
{
	__u32 h = 0;

	h = vc_hash_round(h, m->saddr[0] ^ m->saddr[1] ^ m->saddr[2] ^ m->saddr[3]);
	h = vc_hash_round(h, m->daddr[0] ^ m->daddr[1] ^ m->daddr[2] ^ m->daddr[3]);
	h = vc_hash_round(h, ((__u32)m->sport << 16) | m->dport);
	h = vc_hash_round(h, m->ip_proto);
	h ^= 16;
	h ^= h >> 16;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	h *= 0xc2b2ae35;
	h ^= h >> 16;
	return h;
}

static __always_inline void vc_parse(struct xdp_md *ctx, struct vc_meta *meta)
{
	struct ethhdr *eth = vc_at(ctx, 0, sizeof(*eth));
	__u16 off = sizeof(struct ethhdr);
	__be16 proto;

	__builtin_memset(meta, 0, sizeof(*meta));
	meta->ifindex = ctx->ingress_ifindex;
	if (!eth)
		return;
	proto = eth->h_proto;
#pragma unroll
	for (int i = 0; i < 2; i++) {
		struct vc_vlan_hdr *vlan;

		if (proto != htons(ETH_P_8021Q) && proto != htons(ETH_P_8021AD))
			break;
		vlan = vc_at(ctx, off, sizeof(*vlan));
		if (!vlan)
			return;
		proto = vlan->proto;
		off += sizeof(*vlan);
	}
	meta->eth_proto = ntohs(proto);
	if (proto == htons(ETH_P_IP))
		vc_parse_ipv4(ctx, meta, off);
	else if (proto == htons(ETH_P_IPV6))
		vc_parse_ipv6(ctx, meta, off);
	meta->flow_hash = vc_flow_hash(meta);
}

#endif
