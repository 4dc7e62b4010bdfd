/* vc_parse.h - the one packet parser. The entry program reads Ethernet, VLAN
 * tags, IPv4 (with its options) or IPv6 (with its extension headers) and the
 * transport header into struct vc_meta once, as the receiving kernel would read
 * them, so that no function parses headers again. A frame it cannot classify
 * the way the kernel would act on it gets meta->unparsed = the reason
 * (VC_UNPARSED_*, defined in vnfchain/chain/verdicts.py); every function type
 * has a documented policy for such frames. Included by the rendered prelude. */
#ifndef VC_PARSE_H
#define VC_PARSE_H

struct vc_vlan_hdr {
	__be16 tci;
	__be16 proto;
};

/* RFC 8200 4.5 */
struct vc_frag6_hdr {
	__u8 nexthdr;
	__u8 reserved;
	__be16 frag_off;    /* offset in 8-byte units << 3 | M */
	__be32 id;
};

#define VC_IPPROTO_HOPOPTS 0
#define VC_IPPROTO_ROUTING 43
#define VC_IPPROTO_FRAGMENT 44
#define VC_IPPROTO_DSTOPTS 60
#define VC_IPOPT_LSRR 131
#define VC_IPOPT_SSRR 137
#define VC_IPV4_OPTION_STEPS 8

/* the transport header at meta->l4_off, which must fit before end (the end of
 * the datagram); fields are written only once the whole header is known good */
static __always_inline __u8 vc_parse_l4(struct xdp_md *ctx, struct vc_meta *meta, __u32 end)
{
	__u32 off = meta->l4_off;

	if (meta->ip_proto == IPPROTO_TCP) {
		struct vc_tcphdr *tcp = vc_at(ctx, off, sizeof(*tcp));
		__u32 hlen;

		if (!tcp || off + sizeof(*tcp) > end)
			return VC_UNPARSED_L4_HEADER;
		hlen = (tcp->doff_res >> 4) * 4;
		if (hlen < sizeof(*tcp) || off + hlen > end)
			return VC_UNPARSED_L4_HEADER;
		meta->sport = tcp->source;
		meta->dport = tcp->dest;
		meta->tcp_flags = tcp->flags;
		meta->payload_off = off + hlen;
	} else if (meta->ip_proto == IPPROTO_UDP) {
		struct udphdr *udp = vc_at(ctx, off, sizeof(*udp));
		__u32 len;

		if (!udp || off + sizeof(*udp) > end)
			return VC_UNPARSED_L4_HEADER;
		len = ntohs(udp->len);
		/* a first fragment holds only the start of what the length counts */
		if (len < sizeof(*udp) || (!(meta->frag & VC_FRAG_MORE) && off + len > end))
			return VC_UNPARSED_L4_HEADER;
		meta->sport = udp->source;
		meta->dport = udp->dest;
		meta->payload_off = off + sizeof(*udp);
	} else if ((meta->ip_version == 4 && meta->ip_proto == IPPROTO_ICMP) ||
		   (meta->ip_version == 6 && meta->ip_proto == IPPROTO_ICMPV6)) {
		/* the kernel drops ICMP shorter than its 8-byte header */
		struct vc_icmphdr *icmp = vc_at(ctx, off, sizeof(*icmp));

		if (!icmp || off + sizeof(*icmp) > end)
			return VC_UNPARSED_L4_HEADER;
		meta->icmp_type = icmp->type;
		meta->icmp_code = icmp->code;
		meta->sport = icmp->id;
	}
	return 0;
}

/* IPv4 options between off and end: a source route (LSRR/SSRR) is one the
 * kernel would drop (accept_source_route off) or follow to another address;
 * a malformed list it would drop too. Real option lists are an option or two
 * and a little padding: one that takes more steps than VC_IPV4_OPTION_STEPS
 * is not walked to its end, and is unparsed too. */
static __always_inline __u8 vc_parse_ipv4_options(struct xdp_md *ctx, struct vc_meta *meta,
						   __u32 off, __u32 end)
{
	for (int i = 0; i < VC_IPV4_OPTION_STEPS; i++) {
		__u8 *opt, *len;

		if (off >= end)
			return 0;
		opt = vc_at(ctx, off, 1);
		if (!opt || *opt == 0)          /* end of the option list */
			return 0;
		if (*opt == VC_IPOPT_LSRR || *opt == VC_IPOPT_SSRR)
			return VC_UNPARSED_SOURCE_ROUTE;
		if (*opt == 1) {                /* no-operation */
			off++;
		} else {
			len = vc_at(ctx, off + 1, 1);
			if (!len || *len < 2 || off + *len > end)
				return VC_UNPARSED_IP_HEADER;
			off += *len;
		}
		/* through memory: every step then starts from the same unknown
		 * offset, and the verifier checks the walk once, not once per path */
		meta->l4_off = off;
		asm volatile("" ::: "memory");
		off = meta->l4_off & 0xfff;   /* a bound the packet range check can use */
	}
	return off >= end ? 0 : VC_UNPARSED_IP_HEADER;
}

static __always_inline __u8 vc_parse_ipv4(struct xdp_md *ctx, struct vc_meta *meta, __u32 off)
{
	struct iphdr *ip = vc_at(ctx, off, sizeof(*ip));
	__u32 frame = ctx->data_end - ctx->data, hlen, len, frag;
	__u8 reason;

	if (!ip || ip->version != 4)
		return VC_UNPARSED_IP_HEADER;
	meta->ip_version = 4;
	meta->l3_off = off;
	meta->ip_proto = ip->protocol;
	meta->saddr[0] = ip->saddr;
	meta->daddr[0] = ip->daddr;
	hlen = ip->ihl * 4;
	len = ntohs(ip->tot_len);
	if (hlen < sizeof(*ip))
		return VC_UNPARSED_IP_HEADER;
	if (len < hlen || off + len > frame)
		return VC_UNPARSED_IP_LENGTH;
	meta->l3_end = off + len;
	frag = ntohs(ip->frag_off) & 0x3fff;
	if (frag) {
		meta->frag_id = ip->id;
		meta->frag = (frag & 0x2000 ? VC_FRAG_MORE : 0) | (frag & 0x1fff ? VC_FRAG_LATER : 0);
	}
	if (hlen > sizeof(*ip)) {
		reason = vc_parse_ipv4_options(ctx, meta, off + sizeof(*ip), off + hlen);
		if (reason)
			return reason;
	}
	if (frag & 0x1fff)   /* RFC 1858: offset 1 lets TCP rewrite the first fragment's flags */
		return (frag & 0x1fff) == 1 && ip->protocol == IPPROTO_TCP ?
		       VC_UNPARSED_FRAGMENT_OVERLAP : VC_UNPARSED_LATER_FRAGMENT;
	meta->l4_off = off + hlen;
	return vc_parse_l4(ctx, meta, meta->l3_end);
}

/* AH is not among them: the kernel hands it to IPsec, which must authenticate
 * it before anything behind it is delivered, and nftables (ipv6_find_hdr with
 * IP6_FH_F_AUTH) matches it as the protocol: so does the firewall (proto 51) */
static __always_inline int vc_ipv6_ext(__u8 next)
{
	return next == VC_IPPROTO_HOPOPTS || next == VC_IPPROTO_ROUTING || next == VC_IPPROTO_FRAGMENT ||
	       next == VC_IPPROTO_DSTOPTS;
}

/* the extension headers the kernel walks before the upper layer (RFC 8200 4),
 * up to VC_MAX_EXT_HEADERS of them, then the transport header */
static __always_inline __u8 vc_parse_ipv6(struct xdp_md *ctx, struct vc_meta *meta, __u32 off)
{
	struct ipv6hdr *ip6 = vc_at(ctx, off, sizeof(*ip6));
	__u32 frame = ctx->data_end - ctx->data, end;
	__u8 next, behind = 0;

	if (!ip6 || ip6->version != 6)
		return VC_UNPARSED_IP_HEADER;
	meta->ip_version = 6;
	meta->l3_off = off;
	__builtin_memcpy(meta->saddr, &ip6->saddr, 16);
	__builtin_memcpy(meta->daddr, &ip6->daddr, 16);
	next = ip6->nexthdr;
	meta->ip_proto = next;
	end = off + sizeof(*ip6) + ntohs(ip6->payload_len);
	/* a payload length of 0 before hop-by-hop options announces a jumbogram */
	if (end > frame || (end == off + sizeof(*ip6) && next == VC_IPPROTO_HOPOPTS))
		return VC_UNPARSED_IP_LENGTH;
	meta->l3_end = end;
	off += sizeof(*ip6);

#pragma unroll
	for (int i = 0; i < VC_MAX_EXT_HEADERS; i++) {
		__u8 *h;

		if (!vc_ipv6_ext(next))
			break;
		/* every extension header is at least 8 bytes; hop-by-hop only comes first */
		h = vc_at(ctx, off, 8);
		if (!h || off + 8 > end || (next == VC_IPPROTO_HOPOPTS && i > 0))
			return VC_UNPARSED_EXT_HEADERS;
		if (next == VC_IPPROTO_FRAGMENT) {
			struct vc_frag6_hdr *fh = (void *)h;
			__u32 fo = ntohs(fh->frag_off);

			/* behind destination options or a routing header: an order
			 * the kernel's netfilter defragmentation refuses */
			if (behind)
				return VC_UNPARSED_EXT_HEADERS;

			if (fo & 0xfff9) {   /* an offset, or more fragments: a real fragment */
				meta->frag_id = fh->id;
				meta->frag = (fo & 1 ? VC_FRAG_MORE : 0) | (fo >> 3 ? VC_FRAG_LATER : 0);
			}
			if (fo >> 3) {
				meta->ip_proto = fh->nexthdr;
				return fo >> 3 == 1 && fh->nexthdr == IPPROTO_TCP ?
				       VC_UNPARSED_FRAGMENT_OVERLAP : VC_UNPARSED_LATER_FRAGMENT;
			}
			off += 8;
		} else {
			if (next == VC_IPPROTO_ROUTING && h[3])   /* segments left */
				return VC_UNPARSED_SOURCE_ROUTE;
			behind |= next != VC_IPPROTO_HOPOPTS;
			off += (h[1] + 1) * 8;
		}
		next = h[0];
		if (off > end)
			return VC_UNPARSED_EXT_HEADERS;
	}
	if (vc_ipv6_ext(next))
		return VC_UNPARSED_EXT_HEADERS;
	meta->ip_proto = next;
	meta->l4_off = off;
	return vc_parse_l4(ctx, meta, end);
}

/* the upper-layer header of a quoted IPv6 packet (inside an ICMPv6 error) behind
 * its extension headers at off, *next its protocol; 0 when it is not reached
 * (cut short, more than VC_MAX_EXT_HEADERS, or a later fragment) */
static __always_inline __u32 vc_ipv6_skip_ext(struct xdp_md *ctx, __u32 off, __u8 *next)
{
#pragma unroll
	for (int i = 0; i < VC_MAX_EXT_HEADERS; i++) {
		__u8 *h;

		if (!vc_ipv6_ext(*next))
			return off;
		h = vc_at(ctx, off, 8);
		if (!h)
			return 0;
		if (*next == VC_IPPROTO_FRAGMENT) {
			if (ntohs(((struct vc_frag6_hdr *)h)->frag_off) >> 3)
				return 0;
			off += 8;
		} else {
			off += (h[1] + 1) * 8;
		}
		*next = h[0];
	}
	return vc_ipv6_ext(*next) ? 0 : off;
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

/* VLAN tags (802.1Q, 802.1ad) as the kernel strips them, then the IP layers */
static __always_inline __u8 vc_parse_frame(struct xdp_md *ctx, struct vc_meta *meta)
{
	struct ethhdr *eth = vc_at(ctx, 0, sizeof(*eth));
	__u32 off = sizeof(struct ethhdr);
	__be16 proto;

	if (!eth)
		return 0;   /* a runt: not IP, nothing to classify */
	proto = eth->h_proto;
#pragma unroll
	for (int i = 0; i < VC_MAX_VLAN_TAGS; i++) {
		struct vc_vlan_hdr *vlan;

		if (proto != htons(ETH_P_8021Q) && proto != htons(ETH_P_8021AD))
			break;
		vlan = vc_at(ctx, off, sizeof(*vlan));
		if (!vlan)
			return VC_UNPARSED_VLAN;
		proto = vlan->proto;
		off += sizeof(*vlan);
	}
	meta->eth_proto = ntohs(proto);
	if (proto == htons(ETH_P_8021Q) || proto == htons(ETH_P_8021AD))
		return VC_UNPARSED_VLAN;
	if (proto == htons(ETH_P_IP))
		return vc_parse_ipv4(ctx, meta, off);
	if (proto == htons(ETH_P_IPV6))
		return vc_parse_ipv6(ctx, meta, off);
	return 0;
}

static __always_inline void vc_parse(struct xdp_md *ctx, struct vc_meta *meta)
{
	__u8 reason;

	__builtin_memset(meta, 0, sizeof(*meta));
	meta->ifindex = ctx->ingress_ifindex;
	reason = vc_parse_frame(ctx, meta);
	if (reason == VC_UNPARSED_L4_HEADER && (meta->frag & VC_FRAG_MORE))
		reason = VC_UNPARSED_TINY_FRAGMENT;
	if (reason) {
		/* nothing past what failed may be read as a transport header */
		meta->l4_off = 0;
		meta->payload_off = 0;
	}
	meta->unparsed = reason;
	meta->flow_hash = vc_flow_hash(meta);
}

#endif
