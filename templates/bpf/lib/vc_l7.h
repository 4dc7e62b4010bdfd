/* vc_l7.h - application-layer parsing for the dpi template: where the HTTP
 * request line and Host header, the TLS ClientHello SNI and the DNS query name
 * lie in a packet, and copying such a name into a lookup buffer (lowercased,
 * reversed: see vnfchain/dpi/l7.py). Touches no map; every loop is bounded and
 * every offset is checked against VC_MAX_OFF before it meets a packet pointer.
 * Needs VC_L7_NAME_MAX (a power of two) and VC_L7_HTTP_SCAN from its includer. */
#ifndef VC_L7_H
#define VC_L7_H

#define VC_L7_TLS_MAX_EXTENSIONS 32
#define VC_L7_HTTP_BLANKS 16        /* blanks skipped before the Host value */
#define VC_L7_DNS_MAX_LABELS 128    /* a 255-byte name and its terminator */
#define VC_L7_NAME_TRUNCATED 0xff   /* terminator of a name longer than the buffer */

/* where a name lies in the packet */
struct vc_l7_span {
	__u32 off;
	__u32 len;
};

/* a span written to map memory and read back: the verifier forgets how it was
 * computed, so the paths out of a parsing loop (one per iteration, each with
 * its own exact offsets) meet again as one state instead of each walking the
 * rest of the program. slot must point into a map value. */
static __always_inline struct vc_l7_span vc_l7_forget(struct vc_l7_span span, struct vc_l7_span *slot)
{
	slot->off = span.off;
	slot->len = span.len;
	span.off = *(volatile __u32 *)&slot->off;
	span.len = *(volatile __u32 *)&slot->len;
	return span;
}

/* vc_at for offsets computed from packet bytes: masked, so the verifier sees
 * the bound (the empty asm hides the comparison from the compiler, which would
 * otherwise drop the mask as redundant and add the unbounded value) */
static __always_inline __u8 *vc_l7_at(struct xdp_md *ctx, __u32 off, __u32 len)
{
	if (off >= VC_MAX_OFF)
		return 0;
	asm volatile("" : "+r"(off));
	return vc_at(ctx, off & (VC_MAX_OFF - 1), len);
}

/* i as an index into a name buffer, masked where the verifier sees it (the
 * empty asm again keeps the compiler from dropping a mask it knows is moot) */
static __always_inline __u32 vc_l7_index(__u64 i)
{
	__u32 at = i;

	asm volatile("" : "+r"(at));
	return at & (VC_L7_NAME_MAX - 1);
}

static __always_inline int vc_l7_byte(struct xdp_md *ctx, __u32 off)
{
	__u8 *b = vc_l7_at(ctx, off, 1);

	return b ? *b : -1;
}

static __always_inline __u32 vc_l7_be16(struct xdp_md *ctx, __u32 off)
{
	__u8 *b = vc_l7_at(ctx, off, 2);

	return b ? (__u32)b[0] << 8 | b[1] : 0;
}

static __always_inline __u8 vc_l7_lower(__u8 c)
{
	return c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c;
}

/* the first word of an HTTP request and its space as a little-endian u64
 * ("GET " -> 0x20544547), or 0; *len is the token's length with the space */
static __always_inline __u64 vc_l7_http_token(struct xdp_md *ctx, __u32 off, __u32 *len)
{
	__u8 *word = vc_l7_at(ctx, off, 8);
	__u64 token = 0;

	if (!word)
		return 0;
#pragma unroll
	for (int i = 0; i < 8; i++) {
		token |= (__u64)word[i] << (8 * i);
		if (word[i] == ' ') {
			*len = i + 1;
			return i ? token : 0;
		}
		if (word[i] < 'A' || word[i] > 'Z')
			return 0;
	}
	return 0;
}

/* the request path: from off to the next space (at most VC_L7_NAME_MAX bytes are used) */
static __always_inline struct vc_l7_span vc_l7_http_path(struct xdp_md *ctx, __u32 off)
{
	struct vc_l7_span span = { off, 0 };

	for (__u64 i = 0; i < VC_L7_NAME_MAX; i++) {
		int c = vc_l7_byte(ctx, off + (__u32)i);

		if (c < 0 || c == ' ')
			break;
		span.len = i + 1;
	}
	return span;
}

/* the Host header's value within VC_L7_HTTP_SCAN bytes from off, after up to
 * VC_L7_HTTP_BLANKS blanks, up to an optional :port or a blank, \r or \n; len 0
 * if there is none before the end of the headers (an empty line, whether its
 * lines end in \r\n or a bare \n) or of the packet. vnfchain/dpi/l7.py
 * http_host is the same in Python. slot: see vc_l7_forget */
static __always_inline struct vc_l7_span vc_l7_http_host(struct xdp_md *ctx, __u32 off,
							 struct vc_l7_span *slot)
{
	struct vc_l7_span span = { 0, 0 };
	__u64 window = 0;
	__u32 start = 0;

	for (__u64 i = 0; i < VC_L7_HTTP_SCAN; i++) {
		int c = vc_l7_byte(ctx, off + (__u32)i);

		if (c < 0)
			return span;
		window = window << 8 | vc_l7_lower(c);
		if ((window & 0xffffULL) == 0x0a0aULL ||             /* "\n\n" or "\n\r\n": end of headers */
		    (window & 0xffffffULL) == 0x0a0d0aULL)
			return span;
		if ((window & 0xffffffffffffULL) == 0x0a686f73743aULL) { /* "\nhost:" */
			start = off + (__u32)i + 1;
			break;
		}
	}
	if (!start)
		return span;
	span.off = start;
	start = vc_l7_forget(span, slot).off;   /* once after the search, once after the blanks */
	/* optional white space: the value's start goes to map memory, not a
	 * register, so that every way out of the loop is one state */
	for (__u64 i = 0; i < VC_L7_HTTP_BLANKS; i++) {
		int c = vc_l7_byte(ctx, start + (__u32)i);

		if (c != ' ' && c != '\t')
			break;
		slot->off = start + (__u32)i + 1;
	}
	start = *(volatile __u32 *)&slot->off;
	for (__u64 i = 0; i < 256; i++) {
		int c = vc_l7_byte(ctx, start + (__u32)i);

		if (c < 0)
			return span;        /* the line goes on in a later packet */
		if (c == '\r' || c == '\n' || c == ':' || c == ' ' || c == '\t') {
			span.off = start;
			span.len = i;
			return span;
		}
	}
	return span;
}

/* the server_name of a TLS ClientHello starting at off (a handshake record);
 * *hello is whether the packet starts a ClientHello at all; len 0 if it has
 * no SNI in this packet (none, e.g. to an IP address, or further on) */
static __always_inline struct vc_l7_span vc_l7_tls_sni(struct xdp_md *ctx, __u32 off, int *hello)
{
	struct vc_l7_span span = { 0, 0 };
	__u8 *rec = vc_l7_at(ctx, off, 6);
	__u32 p, end;

	*hello = 0;
	if (!rec || rec[0] != 0x16 || rec[1] != 0x03 || rec[5] != 0x01)
		return span;            /* handshake record, TLS 1.x, ClientHello */
	*hello = 1;
	p = off + 5 + 4 + 2 + 32;   /* record and handshake headers, version, random */
	p += 1 + vc_l7_byte(ctx, p) % 256;                  /* session id */
	p += 2 + vc_l7_be16(ctx, p);                        /* cipher suites */
	p += 1 + vc_l7_byte(ctx, p) % 256;                  /* compression methods */
	if (p >= VC_MAX_OFF)
		return span;
	end = p + 2 + vc_l7_be16(ctx, p);
	p += 2;
	for (__u64 i = 0; i < VC_L7_TLS_MAX_EXTENSIONS && p + 4 <= end; i++) {
		__u32 type = vc_l7_be16(ctx, p), len = vc_l7_be16(ctx, p + 2);

		if (!vc_l7_at(ctx, p, 4))
			return span;
		if (type == 0) {        /* server_name: list length, name type 0 (host), length, name */
			if (vc_l7_byte(ctx, p + 6) != 0)
				return span;
			span.len = vc_l7_be16(ctx, p + 7);
			span.off = p + 9;
			return span;
		}
		p += 4 + len;
	}
	return span;
}

/* the first question's name of a DNS query at off (the UDP payload), as the
 * span of its wire bytes after the first length octet: "3www3bad7example0"
 * -> "www3bad7example", which vc_l7_dns_dots then punctuates. off 0: not a
 * query. A name cut short by the packet or compressed is len 0 (only rules
 * without a name match); one longer than VC_L7_DNS_MAX_LABELS labels (over
 * 255 bytes: not legal) is the span read so far, compared on its end. */
static __always_inline struct vc_l7_span vc_l7_dns_qname(struct xdp_md *ctx, __u32 off)
{
	struct vc_l7_span span = { 0, 0 };
	__u8 *hdr = vc_l7_at(ctx, off, 12);
	__u32 p = off + 12, total = 0;

	if (!hdr || hdr[2] & 0x80 || (hdr[4] == 0 && hdr[5] == 0))
		return span;            /* a response, or no question */
	span.off = p + 1;
	for (__u64 i = 0; i < VC_L7_DNS_MAX_LABELS; i++) {
		int len = vc_l7_byte(ctx, p + total);

		if (len < 0 || len & 0xc0)
			return span;        /* cut short, or compressed (queries are not) */
		if (len == 0) {
			if (total)
				span.len = total - 1;
			return span;
		}
		total += len + 1;
	}
	span.len = total - 1;
	return span;
}

/* is all of the span inside the packet? */
static __always_inline int vc_l7_whole(struct xdp_md *ctx, struct vc_l7_span span)
{
	return span.len && vc_l7_at(ctx, span.off + span.len - 1, 1);
}

/* zero the buffer, then copy the name at span into it: lowercased, last byte
 * first, at most VC_L7_NAME_MAX bytes (the end of a longer name), then the
 * terminator; one trailing dot ("www.example.", a fully qualified name) is
 * left out. Returns the bytes copied. */
static __always_inline __u32 vc_l7_copy_reversed(struct xdp_md *ctx, struct vc_l7_span span, __u8 *buf)
{
	__u32 n;

	__builtin_memset(buf, 0, VC_L7_NAME_MAX + 1);
	if (!vc_l7_whole(ctx, span))
		return 0;
	if (vc_l7_byte(ctx, span.off + span.len - 1) == '.')
		span.len--;
	n = span.len < VC_L7_NAME_MAX ? span.len : VC_L7_NAME_MAX;
	asm volatile("" : "+r"(n));     /* keeps the loop's own bound: the verifier needs it */
	for (__u64 r = 0; r < VC_L7_NAME_MAX; r++) {
		int c;

		if (r >= n)
			break;
		c = vc_l7_byte(ctx, span.off + span.len - 1 - (__u32)r);
		if (c < 0)
			return 0;
		buf[vc_l7_index(r)] = vc_l7_lower(c);
	}
	if (span.len > VC_L7_NAME_MAX)
		buf[VC_L7_NAME_MAX] = VC_L7_NAME_TRUNCATED;
	return n;
}

/* the same without reversing or lowercasing (HTTP paths), up to n bytes */
static __always_inline __u32 vc_l7_copy(struct xdp_md *ctx, struct vc_l7_span span, __u8 *buf)
{
	__builtin_memset(buf, 0, VC_L7_NAME_MAX + 1);
	if (!vc_l7_whole(ctx, span))
		return 0;
	for (__u64 i = 0; i < VC_L7_NAME_MAX; i++) {
		int c;

		if (i >= span.len)
			break;
		c = vc_l7_byte(ctx, span.off + (__u32)i);
		if (c < 0)
			return 0;
		buf[vc_l7_index(i)] = c;
	}
	return span.len;
}

/* turn the label lengths inside a reversed DNS name into dots: walks the labels
 * again from the first length octet at off - 1 */
static __always_inline void vc_l7_dns_dots(struct xdp_md *ctx, struct vc_l7_span span, __u8 *buf)
{
	__u32 at = vc_l7_byte(ctx, span.off - 1) % 256;    /* name position of the next length octet */

	for (__u64 i = 0; i < VC_L7_DNS_MAX_LABELS; i++) {
		__u32 r;
		int len;

		if (at >= span.len)
			return;
		r = span.len - 1 - at;  /* its place in the reversed buffer */
		if (r < VC_L7_NAME_MAX)
			buf[vc_l7_index(r)] = '.';
		len = vc_l7_byte(ctx, span.off + at);
		if (len < 0)
			return;
		at += 1 + len;
	}
}

#endif
