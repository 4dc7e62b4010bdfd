/* vc_fib.h - forwarding through the kernel's FIB from XDP: bpf_fib_lookup for
 * the egress interface and next-hop MAC, TTL/hop-limit decrement, redirect.
 * What XDP cannot finish (no neighbour yet, TTL expiring, MTU, local delivery)
 * goes to the stack, which resolves or answers it. */
#ifndef VC_FIB_H
#define VC_FIB_H

/* RFC 1624 incremental update for the one-byte TTL decrement */
static __always_inline void vc_ipv4_ttl_dec(struct iphdr *ip)
{
	__u32 sum = ip->check;

	sum += htons(0x0100);
	ip->check = (__u16)(sum + (sum >= 0xFFFF));
	ip->ttl--;
}

/* what policy routing (ip rule ipproto/sport/dport/iif) and layer-4
 * multipath hashing read of a packet besides its addresses and TOS (IPv6:
 * flowinfo), which the caller sets: without them the lookup may name another
 * route than the one the kernel takes */
static __always_inline void vc_fib_flow(struct xdp_md *ctx, const struct vc_meta *meta, struct bpf_fib_lookup *fib)
{
	fib->l4_protocol = meta->ip_proto;   /* IPv6: the one after extension headers */
	if (meta->l4_off && (meta->ip_proto == IPPROTO_TCP || meta->ip_proto == IPPROTO_UDP)) {
		fib->sport = meta->sport;
		fib->dport = meta->dport;
	}
	fib->ifindex = ctx->ingress_ifindex;
}

static __always_inline int vc_fib_forward(struct xdp_md *ctx, struct vc_meta *meta, __u8 no_route)
{
	struct bpf_fib_lookup fib = {};
	struct ethhdr *eth = vc_at(ctx, 0, sizeof(*eth));
	struct iphdr *ip = 0;
	struct ipv6hdr *ip6 = 0;
	long rc;

	/* a VLAN-tagged frame goes to the stack, which knows its VLAN devices */
	if (!eth || meta->l3_off != sizeof(*eth))
		return VC_PASS;
	if (meta->ip_version == 4) {
		ip = vc_at(ctx, meta->l3_off, sizeof(*ip));
		if (!ip || ip->ttl <= 1)
			return VC_PASS;
		fib.family = AF_INET;
		fib.tos = ip->tos;
		vc_fib_flow(ctx, meta, &fib);
		fib.tot_len = ntohs(ip->tot_len);
		fib.ipv4_src = ip->saddr;
		fib.ipv4_dst = ip->daddr;
	} else if (meta->ip_version == 6) {
		ip6 = vc_at(ctx, meta->l3_off, sizeof(*ip6));
		if (!ip6 || ip6->hop_limit <= 1)
			return VC_PASS;
		fib.family = AF_INET6;
		fib.flowinfo = *(__be32 *)ip6 & htonl(0x0fffffff);    /* traffic class and flow label */
		vc_fib_flow(ctx, meta, &fib);
		fib.tot_len = ntohs(ip6->payload_len);
		__builtin_memcpy(fib.ipv6_src, &ip6->saddr, 16);
		__builtin_memcpy(fib.ipv6_dst, &ip6->daddr, 16);
	} else {
		return VC_PASS;
	}

	rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), 0);
	if (rc == BPF_FIB_LKUP_RET_BLACKHOLE || rc == BPF_FIB_LKUP_RET_UNREACHABLE ||
	    rc == BPF_FIB_LKUP_RET_PROHIBIT)
		return vc_drop(meta, no_route);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS)
		return VC_PASS;

	if (ip)
		vc_ipv4_ttl_dec(ip);
	else if (ip6)
		ip6->hop_limit--;
	__builtin_memcpy(eth->h_dest, fib.dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, fib.smac, ETH_ALEN);
	return vc_redirect(meta, bpf_redirect(fib.ifindex, 0));
}

#endif
