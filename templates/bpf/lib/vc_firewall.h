/* vc_firewall.h - helpers of the firewall template that touch no map: packet
 * predicates for classification and conntrack, and the lowest-set-bit search.
 * Needs the FW_* constants the firewall template renders first. */
#ifndef VC_FIREWALL_H
#define VC_FIREWALL_H

#define FW_FIN_ORIG 1
#define FW_FIN_REPLY 2

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

/* destination unreachable, time exceeded, parameter problem (ICMPv4) */
static __always_inline int fw_is_icmp_error(__u8 type)
{
	return type == 3 || type == 11 || type == 12;
}

/* may this packet open a flow? TCP only with a bare SYN, ICMP only with an echo request */
static __always_inline int fw_may_open(const struct vc_meta *meta)
{
	if (meta->ip_proto == IPPROTO_TCP)
		return (meta->tcp_flags & (VC_TCP_SYN | VC_TCP_ACK)) == VC_TCP_SYN;
	if (fw_is_icmp(meta))
		return meta->icmp_type == (meta->ip_version == 4 ? 8 : 128);
	return 1;
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
