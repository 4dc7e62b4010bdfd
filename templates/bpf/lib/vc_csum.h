/* vc_csum.h - incremental Internet checksum updates (RFC 1624) for functions
 * that rewrite addresses and ports: NAT, load balancers. Values are passed as
 * they sit in the packet (network order); one's complement sums do not care
 * about byte order as long as both sides agree. */
#ifndef VC_CSUM_H
#define VC_CSUM_H

static __always_inline __u16 vc_csum_fold(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)sum;
}

/* the checksum at sum after a 16-bit field changed from old to new */
static __always_inline void vc_csum_replace2(__u16 *sum, __u16 old, __u16 new)
{
	__u32 s = (__u16)~*sum;

	s += (__u16)~old;
	s += new;
	*sum = ~vc_csum_fold(s);
}

/* ... and after a 32-bit field (an IPv4 address) changed */
static __always_inline void vc_csum_replace4(__u16 *sum, __u32 old, __u32 new)
{
	__u32 s = (__u16)~*sum;

	s += (__u16)~(old & 0xffff);
	s += (__u16)~(old >> 16);
	s += new & 0xffff;
	s += new >> 16;
	*sum = ~vc_csum_fold(s);
}

#endif
