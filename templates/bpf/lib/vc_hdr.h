/* vc_hdr.h - the protocol headers vnfchain parses, declared here rather than
 * taken from <linux/tcp.h>, <linux/icmp.h> and <linux/in.h>: those pull in
 * half the kernel and triple BCC's compile time. Layouts follow the RFCs. */
#ifndef VC_HDR_H
#define VC_HDR_H

#ifndef IPPROTO_ICMP
#define IPPROTO_ICMP 1
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
#define IPPROTO_ICMPV6 58
#endif

/* RFC 9293 */
struct vc_tcphdr {
	__be16 source;
	__be16 dest;
	__be32 seq;
	__be32 ack_seq;
	__u8 doff_res;  /* data offset in the high nibble */
	__u8 flags;     /* CWR ECE URG ACK PSH RST SYN FIN */
	__be16 window;
	__sum16 check;
	__be16 urg_ptr;
};

#define VC_TCP_FIN 0x01
#define VC_TCP_SYN 0x02
#define VC_TCP_RST 0x04
#define VC_TCP_PSH 0x08
#define VC_TCP_ACK 0x10

/* RFC 792 / RFC 4443: type, code, checksum, then echo identifier and sequence */
struct vc_icmphdr {
	__u8 type;
	__u8 code;
	__sum16 check;
	__be16 id;
	__be16 seq;
};

#endif
