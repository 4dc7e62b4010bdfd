/* vc_chain.h - what every chain program shares: the packet metadata that the
 * entry program fills once and later functions read, and the verdict helpers.
 * Included by the rendered prelude after the VC_* constants are defined. */
#ifndef VC_CHAIN_H
#define VC_CHAIN_H

#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/udp.h>
#include "vc_hdr.h"

#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif

/* parsed once per packet by the entry program (vc_parse.h); addresses and ports
 * in network order. When unparsed is set, only eth_proto, ip_version, the
 * addresses (if ip_version), ip_proto, frag and frag_id may be trusted: the
 * transport fields are zero. */
struct vc_meta {
	__u32 saddr[4];     /* IPv4 in saddr[0] */
	__u32 daddr[4];
	__u32 flow_hash;    /* of the 5-tuple, for load spreading */
	__u32 ifindex;      /* ingress interface */
	__u32 redirect_rc;  /* what bpf_redirect*() returned, for VC_REDIRECT */
	__u32 frag_id;      /* IPv4 identification or IPv6 fragment id, when frag */
	__u16 l3_off;       /* network header offset from data (0: not IP) */
	__u16 l4_off;       /* transport header offset (0: none, e.g. a later fragment) */
	__u16 payload_off;  /* TCP/UDP payload offset (0: none) */
	__u16 l3_end;       /* end of the IP datagram by its length field */
	__u16 eth_proto;    /* host order, after the VLAN tags */
	__u16 sport;        /* tcp/udp source port; icmp echo identifier */
	__u16 dport;        /* tcp/udp destination port */
	__u8  ip_version;   /* 4, 6, or 0 when not IP */
	__u8  ip_proto;     /* the transport protocol, after IPv6 extension headers */
	__u8  tcp_flags;
	__u8  icmp_type;
	__u8  icmp_code;
	__u8  reason;       /* drop reason of a VC_DROP verdict */
	__u8  frag;         /* VC_FRAG_MORE | VC_FRAG_LATER: an IP fragment */
	__u8  unparsed;     /* 0, or why the parser could not classify the frame (VC_UNPARSED_*) */
};

#define VC_FRAG_MORE 1      /* more fragments follow (a first or middle fragment) */
#define VC_FRAG_LATER 2     /* fragment offset is not 0: no transport header */

/* one row of per-function counters; see vnfchain/chain/verdicts.py */
struct vc_row {
	__u64 c[VC_ROW_SLOTS];
};

#define VC_LABEL(id) (VC_LABEL_BASE + (id))

/* a function's map, pinned where the renderer says (VC_PIN_<name>): kept across
 * live changes for as long as its definition stays the same */
#define VC_MAP(type, key, value, name, size) \
	BPF_TABLE_PINNED(type, key, value, name, size, VC_PIN_##name)

/* the same with map flags, e.g. BPF_F_NO_PREALLOC, which LPM tries require */
#define VC_MAP_F(type, key, value, name, size, flags) \
	BPF_TABLE_PINNED(type, key, value, name, size, VC_PIN_##name, flags)

/* a function's ring buffer of events for user space (size in bytes: a power
 * of two, at least a page), pinned like VC_MAP's maps so that a later process
 * (`vnfchain events`) can read it; BCC's BPF_RINGBUF_OUTPUT cannot be pinned */
#define VC_RINGBUF(name, size) \
	struct name##_table_t { \
		int key; \
		u32 leaf; \
		int (*ringbuf_output)(void *, u64, u64); \
		void *(*ringbuf_reserve)(u64); \
		void (*ringbuf_discard)(void *, u64); \
		void (*ringbuf_submit)(void *, u64); \
		u32 max_entries; \
	}; \
	__attribute__((section("maps/ringbuf:" VC_PIN_##name))) \
	struct name##_table_t name = { .max_entries = (size) }

static __always_inline int vc_drop(struct vc_meta *meta, __u8 reason)
{
	meta->reason = reason;
	return VC_DROP;
}

/* has more than age ns passed since stamp? Signed: another CPU may have
 * stamped an entry after this one read the clock, and that is not "long ago" */
static __always_inline int vc_older_than(__u64 now, __u64 stamp, __u64 age)
{
	return (__s64)(now - stamp) > (__s64)age;
}

/* drop a frame the parser could not classify, counted under its reason */
static __always_inline int vc_drop_unparsed(struct vc_meta *meta)
{
	return vc_drop(meta, VC_REASON_UNPARSED_BASE + meta->unparsed);
}

/* after the last function, "continue" is the chain's exit action: counted as
 * what it is (a drop by exit: drop has the reason "exit") */
static __always_inline int vc_exit_verdict(int verdict, struct vc_meta *meta)
{
	if (verdict != VC_CONTINUE)
		return verdict;
	if (VC_EXIT_VERDICT == VC_DROP)
		return vc_drop(meta, VC_REASON_EXIT);
	return VC_EXIT_VERDICT;
}

/* rc is what bpf_redirect()/bpf_redirect_map() returned */
static __always_inline int vc_redirect(struct vc_meta *meta, long rc)
{
	if (rc != XDP_REDIRECT)
		return vc_drop(meta, VC_REASON_REDIRECT_FAILED);
	meta->redirect_rc = rc;
	return VC_REDIRECT;
}

/* a verdict that ends the chain here */
static __always_inline int vc_is_final(int verdict)
{
	return verdict > VC_CONTINUE && verdict < VC_LABEL_BASE;
}

static __always_inline int vc_final_action(int verdict, struct vc_meta *meta)
{
	switch (verdict) {
	case VC_DROP:
		return XDP_DROP;
	case VC_PASS:
		return XDP_PASS;
	case VC_TX:
		return XDP_TX;
	case VC_REDIRECT:
		return meta->redirect_rc;
	}
	return XDP_ABORTED;
}

/* headers start within the first VC_MAX_OFF bytes; the bound lets the verifier
 * accept a packet pointer plus a variable offset */
#define VC_MAX_OFF 4096

/* pointer to len bytes at off, or NULL if the packet is shorter */
static __always_inline void *vc_at(struct xdp_md *ctx, __u32 off, __u32 len)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	void *p;

	if (off > VC_MAX_OFF)
		return 0;
	p = data + off;

	if (p + len > data_end)
		return 0;
	return p;
}

#endif
