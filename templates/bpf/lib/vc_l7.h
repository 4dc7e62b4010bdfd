/* vc_l7.h - application-layer parsing for the dpi template: the HTTP request
 * line and Host header, the TLS ClientHello SNI and the DNS query name, read
 * as the servers behind the chain read them, and copying such a name into a
 * lookup buffer (lowercased, reversed: see vnfchain/dpi/l7.py, whose
 * http_request, tls_hello and dns_query are these parsers in Python). Where a
 * name (path, method) cannot be told for sure from this packet, the parser
 * says why in req->cause (VC_L7_<CAUSE>), and the dpi applies its
 * `unreadable` policy. Touches no map of its own: req must point into a map
 * value (see vc_l7_read). Every loop is bounded and every offset is checked
 * against VC_MAX_OFF before it meets a packet pointer. Needs from its
 * includer the VC_L7_* limits and causes that
 * vnfchain/functions/dpi/l7_maps.py renders, and the structs vc_l7_span,
 * vc_l7_req and vc_l7_classes, whose layouts are declared in
 * vnfchain/functions/dpi/layouts.py. */
#ifndef VC_L7_H
#define VC_L7_H

/* more extensions than any packet holds: the walk ends at the packet or record */
#define VC_L7_TLS_EXTENSIONS (VC_MAX_OFF / 4)
#define VC_L7_NAME_TRUNCATED 0xff   /* terminator of a name longer than the buffer */
#define VC_L7_CUT 0                 /* vc_l7_authority: the packet ends first */
#define VC_L7_LONG 0xffffffffu      /* vc_l7_authority: longer than VC_L7_HOST_MAX */

/* struct vc_l7_classes: the byte classes the parsers test (VC_L7_C_* bits),
 * and each byte lowercased: one load instead of a chain of comparisons, each
 * of which the verifier would walk both ways.
 *
 * struct vc_l7_req: what the parsers read of a request, and their scratch. It
 * lives in map memory: the verifier does not follow values through it, so the
 * paths out of a parsing loop (one per iteration, each with its own exact
 * offsets) meet again as one state instead of each walking the rest of the
 * program. */

/* a value read back from map memory, unknown to the verifier (see vc_l7_req) */
#define vc_l7_read(x) (*(volatile __typeof__(x) *)&(x))

static __always_inline struct vc_l7_span vc_l7_read_span(struct vc_l7_span *span)
{
	struct vc_l7_span out = { vc_l7_read(span->off), vc_l7_read(span->len) };

	return out;
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

/* the classes of the byte at off; 0 past the packet */
static __always_inline __u16 vc_l7_class(struct xdp_md *ctx, const struct vc_l7_classes *cls, __u32 off)
{
	__u8 *b = vc_l7_at(ctx, off, 1);

	return b ? cls->of[*b] : 0;
}

static __always_inline void vc_l7_unreadable(struct vc_l7_req *req, __u32 cause)
{
	if (!req->cause)
		req->cause = cause;
}

/* 0x80 in every byte of x that is zero, 0 in the others (no carries between bytes) */
static __always_inline __u64 vc_l7_zero_bytes(__u64 x)
{
	__u64 low = 0x7f7f7f7f7f7f7f7fULL;

	return ~(((x & low) + low) | x | low);
}

#define VC_L7_BYTES(b) (0x0101010101010101ULL * (b))

/* the classes of the eight bytes of a word, together */
static __always_inline __u16 vc_l7_word_classes(const struct vc_l7_classes *cls, __u64 w)
{
	return cls->of[w & 0xff] | cls->of[w >> 8 & 0xff] | cls->of[w >> 16 & 0xff] | cls->of[w >> 24 & 0xff] |
	       cls->of[w >> 32 & 0xff] | cls->of[w >> 40 & 0xff] | cls->of[w >> 48 & 0xff] | cls->of[w >> 56];
}

/* the first position in [from, from + len) whose byte has one of the classes
 * in bits, or from + len; req->cut when the packet ends first (the position
 * is then its end), req->none when no byte has them. Eight bytes per bounds
 * check; len <= VC_L7_HOST_MAX. The loops run to constant bounds and the
 * result is clamped after them: a loop that stops at an unknown count makes
 * the verifier walk it many times over. */
static __always_inline __u32 vc_l7_find(struct xdp_md *ctx, const struct vc_l7_classes *cls, __u32 from,
					__u32 len, __u16 bits, struct vc_l7_req *req)
{
	__u32 done, found;

	req->mark = 0;              /* bytes passed */
	for (__u64 i = 0; i < VC_L7_HOST_MAX / 8; i++) {
		__u64 *word = (__u64 *)vc_l7_at(ctx, from + (__u32)i * 8, 8);

		if (!word || vc_l7_word_classes(cls, *word) & bits)
			break;
		req->mark = (__u32)i * 8 + 8;
	}
	done = vc_l7_read(req->mark);
	req->mark = done + 8;
	req->cut = 0;
	for (__u64 k = 0; k < 8; k++) {
		int c = vc_l7_byte(ctx, from + done + (__u32)k);

		if (c < 0 || cls->of[c] & bits) {
			req->mark = done + (__u32)k;
			req->cut = c < 0;
			break;
		}
	}
	found = vc_l7_read(req->mark);
	req->none = found >= len;
	if (found >= len) {
		req->mark = len;
		req->cut = 0;
	}
	return from + vc_l7_read(req->mark);
}

/* -- HTTP: vc_l7_http_method, then (a method) vc_l7_http_target and vc_l7_http_headers */

/* the CR and LF bytes before a request line at off are skipped (RFC 9112 2.2),
 * up to VC_L7_HTTP_LEADING (whole words first); then the method. 1: req->token
 * holds an uppercase word and a space (for the separator that ended it),
 * req->at where the target may start; 0: the packet ends inside the word
 * (req->token: its letters alone); 2: more CR/LF bytes than are skipped
 * (req->cause set, req->token 0); -1: not a request. */
static __always_inline int vc_l7_http_method(struct xdp_md *ctx, __u32 off, const struct vc_l7_classes *cls,
					     struct vc_l7_req *req)
{
	__u64 token = 0;
	__u32 at;
	int c;

	__builtin_memset(req, 0, sizeof(*req));
	req->at = off;
	for (__u64 i = 0; i < VC_L7_HTTP_LEADING / 8 - 1; i++) {
		__u64 *word = (__u64 *)vc_l7_at(ctx, off + (__u32)i * 8, 8);

		if (!word || (vc_l7_zero_bytes(*word ^ VC_L7_BYTES('\r')) | vc_l7_zero_bytes(*word ^ VC_L7_BYTES('\n')))
			     != VC_L7_BYTES(0x80))
			break;
		req->at = off + (__u32)i * 8 + 8;
	}
	at = vc_l7_read(req->at);
	for (__u64 k = 0; k < 8; k++) {
		if (!(vc_l7_class(ctx, cls, at + (__u32)k) & VC_L7_C_CRLF))
			break;
		req->at = at + (__u32)k + 1;
	}
	at = vc_l7_read(req->at);
	if (vc_l7_class(ctx, cls, at) & VC_L7_C_CRLF) {    /* more than VC_L7_HTTP_LEADING */
		req->cause = VC_L7_HTTP_BLANK_LINES;
		return 2;
	}
#pragma unroll
	for (int k = 0; k < 8; k++) {
		c = vc_l7_byte(ctx, at + k);
		if (c < 0) {
			req->token = token;
			return k ? 0 : -1;
		}
		if (cls->of[c] & VC_L7_C_SEPARATOR) {
			if (!k)
				return -1;
			req->token = token | (__u64)' ' << (8 * k);
			req->at = at + k + 1;
			return 1;
		}
		if (!(cls->of[c] & VC_L7_C_UPPER))
			return -1;
		token |= (__u64)c << (8 * k);
	}
	return -1;
}

/* the path at off: up to a separator or the end of the line, at most VC_L7_NAME_MAX bytes */
static __always_inline void vc_l7_http_path(struct xdp_md *ctx, __u32 off, const struct vc_l7_classes *cls,
					    struct vc_l7_req *req)
{
	req->path.off = off;
	req->path.len = vc_l7_find(ctx, cls, off, VC_L7_NAME_MAX, VC_L7_C_PATH_END, req) - off;
}

/* where the authority of an absolute-form target at t begins (after its
 * scheme and "://", any case); 0 when the target has none; VC_L7_LONG when it
 * is cut short by the packet or its scheme is longer than VC_L7_SCHEME_MAX */
static __always_inline __u32 vc_l7_absolute_form(struct xdp_md *ctx, __u32 t, const struct vc_l7_classes *cls,
						 struct vc_l7_req *req)
{
	if (!(vc_l7_class(ctx, cls, t) & VC_L7_C_LETTER))
		return 0;
	req->mark = VC_L7_LONG;
	for (__u64 i = 1; i <= VC_L7_SCHEME_MAX; i++) {
		int c = vc_l7_byte(ctx, t + (__u32)i);
		__u8 *slashes;

		if (c < 0)
			break;
		if (c == ':') {
			slashes = vc_l7_at(ctx, t + (__u32)i + 1, 2);
			if (slashes)
				req->mark = slashes[0] == '/' && slashes[1] == '/' ? t + (__u32)i + 3 : 0;
			break;
		}
		if (!(cls->of[c] & VC_L7_C_SCHEME)) {
			req->mark = 0;
			break;
		}
	}
	return vc_l7_read(req->mark);
}

/* the host of the authority at start — after a userinfo '@', before a
 * :port outside [...] — into *host; returns where the authority ends, or
 * VC_L7_CUT if the packet ends first, VC_L7_LONG if it runs past
 * VC_L7_HOST_MAX bytes or holds two '@' */
static __always_inline __u32 vc_l7_authority(struct xdp_md *ctx, __u32 start, const struct vc_l7_classes *cls,
					     struct vc_l7_req *req, struct vc_l7_span *host)
{
	__u32 end, from;

	end = vc_l7_find(ctx, cls, start, VC_L7_HOST_MAX, VC_L7_C_AUTHORITY_END | VC_L7_C_AT, req);
	req->userinfo = start;
	if (!vc_l7_read(req->cut) && !vc_l7_read(req->none) && vc_l7_byte(ctx, end) == '@') {
		req->userinfo = end + 1;
		req->end = VC_L7_HOST_MAX - (end + 1 - start);  /* what is left of the authority's bytes */
		end = vc_l7_find(ctx, cls, end + 1, vc_l7_read(req->end), VC_L7_C_AUTHORITY_END | VC_L7_C_AT, req);
		if (!vc_l7_read(req->cut) && !vc_l7_read(req->none) && vc_l7_byte(ctx, end) == '@')
			return VC_L7_LONG;
	}
	if (vc_l7_read(req->cut))
		return VC_L7_CUT;
	if (vc_l7_read(req->none))
		return VC_L7_LONG;
	req->end = end;
	from = vc_l7_read(req->userinfo);
	host->off = from;
	req->rest = end - from;
	if (vc_l7_byte(ctx, from) == '[')
		from = vc_l7_find(ctx, cls, from, vc_l7_read(req->rest), VC_L7_C_RBRACKET, req);
	end = vc_l7_read(req->end);
	req->rest = end - from;
	host->len = vc_l7_find(ctx, cls, from, vc_l7_read(req->rest), VC_L7_C_COLON, req) - host->off;
	return vc_l7_read(req->end);
}

/* the request target after the method (req->at): up to VC_L7_HTTP_GAP more
 * separators, then where its authority starts (CONNECT; an absolute-form
 * target) into req->authority, or the path itself */
static __always_inline void vc_l7_http_target(struct xdp_md *ctx, const struct vc_l7_classes *cls,
					      struct vc_l7_req *req, int connect)
{
	__u32 t = vc_l7_read(req->at), a;

	for (__u64 i = 0; i < VC_L7_HTTP_GAP; i++) {
		if (!(vc_l7_class(ctx, cls, t + (__u32)i) & VC_L7_C_SEPARATOR))
			break;
		req->at = t + (__u32)i + 1;
	}
	t = vc_l7_read(req->at);
	req->start = t;
	if (vc_l7_byte(ctx, t) < 0 || vc_l7_class(ctx, cls, t) & VC_L7_C_SEPARATOR) {
		req->cause = VC_L7_HTTP_REQUEST_LINE;
		return;
	}
	a = connect ? t : vc_l7_absolute_form(ctx, t, cls, req);
	if (a == VC_L7_LONG)
		req->cause = VC_L7_HTTP_REQUEST_LINE;
	else if (a)
		req->authority = a;
	else
		vc_l7_http_path(ctx, t, cls, req);
}

/* the host the target's authority names, and its path ("/" if empty) */
static __always_inline void vc_l7_http_authority(struct xdp_md *ctx, const struct vc_l7_classes *cls,
						 struct vc_l7_req *req, int connect)
{
	struct vc_l7_span host = { 0, 0 };
	__u32 end = vc_l7_authority(ctx, vc_l7_read(req->authority), cls, req, &host);

	if (end == VC_L7_CUT || end == VC_L7_LONG || !host.len) {
		req->cause = VC_L7_HTTP_REQUEST_LINE;
		return;
	}
	req->target = host;
	if (connect)
		return;
	req->slash = vc_l7_byte(ctx, end) != '/';
	vc_l7_http_path(ctx, end, cls, req);
}

/* hosts: the Host header lines among the newlines of a word at at (0x80 in
 * the byte of each '\n'): the first one's value start into req->host_at,
 * req->dup for more. No branch: the verifier walks this for every word. */
static __always_inline void vc_l7_http_hosts(struct vc_l7_req *req, __u32 at, __u64 hosts)
{
	__u64 seen = req->hosts;                    /* all ones once one was seen */
	__u64 first = hosts & -hosts & ~seen;       /* 0x80 in the byte of the first, if in this word */
	__u32 k = ((first >> 7) * 0x0001020304050607ULL) >> 56;    /* which byte */

	req->dup |= (hosts & seen) | (hosts & (hosts - 1));
	req->host_at += (at + k + 6) & -(__u32)((first | -first) >> 63);
	req->hosts = seen | -((hosts | -hosts) >> 63);
}

/* a header line starting after the '\n' at nl, read byte by byte (the end
 * of a packet); 1 when it is the empty line that ends them */
static __always_inline int vc_l7_http_line(struct xdp_md *ctx, const struct vc_l7_classes *cls, __u32 nl,
					   struct vc_l7_req *req)
{
	__u8 *head = vc_l7_at(ctx, nl + 1, 5);
	int c = vc_l7_byte(ctx, nl + 1);

	if (c == '\n' || (c == '\r' && vc_l7_byte(ctx, nl + 2) == '\n')) {
		req->ended = 1;
		return 1;
	}
	if (c >= 0 && cls->of[c] & VC_L7_C_BLANK)
		req->folded = 1;
	else if (head && (*(__u32 *)head | 0x20202020) == 0x74736f68 && head[4] == ':')   /* "host", any case */
		vc_l7_http_hosts(req, nl, 0x80);
	else if (head && (*(__u32 *)head | 0x20202020) == 0x74736f68 && cls->of[head[4]] & VC_L7_C_BLANK)
		req->folded = 1;
	return 0;
}

/* the header lines whose '\n' lies in the VC_L7_HTTP_SCAN bytes from the
 * target on, to the empty line that ends them: the first Host value, a second
 * Host, a folded line (obs-fold) or a Host with blanks before its colon.
 * Eight newlines' lines at a time: the six words at 0..5 bytes past a word
 * hold, byte k, the bytes 0..5 past position k, which tell a line at once. */
static __always_inline void vc_l7_http_headers(struct xdp_md *ctx, const struct vc_l7_classes *cls,
					       struct vc_l7_req *req)
{
	__u32 base = vc_l7_read(req->start);

	req->mark = base;
	for (__u64 i = 0; i < (VC_L7_HTTP_SCAN - 16) / 8; i++) {
		__u32 at = base + (__u32)i * 8;
		__u8 *p = vc_l7_at(ctx, at, 13);
		__u64 nl, end, before, host, l1, l5;

		if (!p)
			break;
		req->mark = at + 8;
		nl = vc_l7_zero_bytes(*(__u64 *)p ^ VC_L7_BYTES('\n'));
		if (!nl)
			continue;
		l1 = *(__u64 *)(p + 1);
		l5 = *(__u64 *)(p + 5);
		end = nl & (vc_l7_zero_bytes(l1 ^ VC_L7_BYTES('\n')) |
			    (vc_l7_zero_bytes(l1 ^ VC_L7_BYTES('\r')) & vc_l7_zero_bytes(*(__u64 *)(p + 2) ^ VC_L7_BYTES('\n'))));
		before = (end & -end) - 1;      /* the lines before the end (all, if none) */
		host = nl & before & vc_l7_zero_bytes((l1 | VC_L7_BYTES(0x20)) ^ VC_L7_BYTES('h')) &
		       vc_l7_zero_bytes((*(__u64 *)(p + 2) | VC_L7_BYTES(0x20)) ^ VC_L7_BYTES('o')) &
		       vc_l7_zero_bytes((*(__u64 *)(p + 3) | VC_L7_BYTES(0x20)) ^ VC_L7_BYTES('s')) &
		       vc_l7_zero_bytes((*(__u64 *)(p + 4) | VC_L7_BYTES(0x20)) ^ VC_L7_BYTES('t'));
		req->folded |= (nl & before & (vc_l7_zero_bytes(l1 ^ VC_L7_BYTES(' ')) | vc_l7_zero_bytes(l1 ^ VC_L7_BYTES('\t')))) |
			       (host & (vc_l7_zero_bytes(l5 ^ VC_L7_BYTES(' ')) | vc_l7_zero_bytes(l5 ^ VC_L7_BYTES('\t'))));
		vc_l7_http_hosts(req, at, host & vc_l7_zero_bytes(l5 ^ VC_L7_BYTES(':')));
		if (end) {
			req->ended = 1;
			break;
		}
	}
	base = vc_l7_read(req->mark);
	for (__u64 k = 0; k < 16; k++) {    /* the last bytes of the packet, or of the scan */
		__u32 pos = base + (__u32)k;

		if (vc_l7_read(req->ended) || vc_l7_byte(ctx, pos) < 0)
			break;
		if (vc_l7_byte(ctx, pos) == '\n')
			vc_l7_http_line(ctx, cls, pos, req);
	}
	if (vc_l7_read(req->folded) || vc_l7_read(req->dup))
		vc_l7_unreadable(req, VC_L7_HTTP_HOST_AMBIGUOUS);
	if (!vc_l7_read(req->host_at) && !vc_l7_read(req->ended) && !vc_l7_read(req->authority))
		vc_l7_unreadable(req, VC_L7_HTTP_HOST_UNSEEN);
}

/* the first Host header's host (its value at req->host_at, after up to
 * VC_L7_HTTP_GAP blanks) into req->name */
static __always_inline void vc_l7_http_host(struct xdp_md *ctx, const struct vc_l7_classes *cls,
					    struct vc_l7_req *req)
{
	__u32 at = vc_l7_read(req->host_at), end;
	struct vc_l7_span host = { 0, 0 };

	req->at = at;
	for (__u64 i = 0; i < VC_L7_HTTP_GAP; i++) {
		if (!(vc_l7_class(ctx, cls, at + (__u32)i) & VC_L7_C_BLANK))
			break;
		req->at = at + (__u32)i + 1;
	}
	at = vc_l7_read(req->at);
	if (vc_l7_class(ctx, cls, at) & VC_L7_C_BLANK) {
		vc_l7_unreadable(req, VC_L7_HTTP_HOST_AMBIGUOUS);
		return;
	}
	end = vc_l7_authority(ctx, at, cls, req, &host);
	if (end == VC_L7_CUT)
		vc_l7_unreadable(req, VC_L7_HTTP_HOST_UNSEEN);
	else if (end == VC_L7_LONG)
		vc_l7_unreadable(req, VC_L7_HTTP_HOST_AMBIGUOUS);
	else
		req->name = host;
}

/* -- TLS ---------------------------------------------------------------------- */

/* a width-byte (1 or 2) big-endian number at at, or -1 past limit or the packet */
static __always_inline int vc_l7_number(struct xdp_md *ctx, __u32 at, __u32 width, __u32 limit)
{
	__u8 *b;

	if (at + width > limit)
		return -1;
	b = vc_l7_at(ctx, at, width);
	if (!b)
		return -1;
	return width == 1 ? b[0] : (int)b[0] << 8 | b[1];
}

/* the host_name in the server_name extension whose data starts at at */
static __always_inline void vc_l7_tls_server_name(struct xdp_md *ctx, __u32 at, __u32 limit, struct vc_l7_req *req)
{
	int n = vc_l7_number(ctx, at, 2, limit);
	__u32 end, e;

	req->cause = VC_L7_TLS_SNI_UNREACHED;   /* unless the list ends or holds a host_name */
	if (n < 0)
		return;
	end = at + 2 + n;
	req->at = at + 2;
	for (__u64 i = 0; i < VC_L7_SNI_NAMES; i++) {
		__u8 *entry;

		e = vc_l7_read(req->at);
		if (e >= end)
			break;
		entry = e + 3 <= limit ? vc_l7_at(ctx, e, 3) : 0;
		if (!entry)
			break;
		n = entry[1] << 8 | entry[2];
		if (entry[0] == 0) {
			if (e + 3 + n <= limit && (!n || vc_l7_at(ctx, e + 3 + n - 1, 1))) {
				req->name.off = e + 3;
				req->name.len = n;
				req->cause = 0;
			}
			return;
		}
		req->at = e + 3 + n;
	}
	if (vc_l7_read(req->at) >= end)
		req->cause = 0;         /* no host_name in the list */
}

/* a TLS ClientHello starting at off: 1 if it is one, the server_name's
 * host_name in req->name (len 0: none). Only its first TLS record, as far as
 * this packet holds it, is read: where the extensions go on past it, a record
 * too short for the handshake header, or more than VC_L7_SNI_NAMES names
 * before the host_name, req->cause says the SNI was not reached. */
static __always_inline int vc_l7_tls_hello(struct xdp_md *ctx, __u32 off, struct vc_l7_req *req)
{
	int c = vc_l7_byte(ctx, off + 1), n;
	__u8 *rec = vc_l7_at(ctx, off, 6);
	__u32 size, limit, p, end;

	__builtin_memset(req, 0, sizeof(*req));
	if (vc_l7_byte(ctx, off) != 0x16 || (c >= 0 && c != 0x03))
		return 0;               /* a handshake record, TLS 1.x (or the packet ends first) */
	req->cause = VC_L7_TLS_SNI_UNREACHED;
	if (!rec)
		return 1;
	size = rec[3] << 8 | rec[4];
	if (size >= 4 && rec[5] != 0x01)
		return 0;               /* another handshake message */
	if (size < 4)
		return 1;
	limit = off + 5 + size;
	p = off + 43;               /* record and handshake headers, version, random */
	n = vc_l7_number(ctx, p, 1, limit);                 /* session id */
	p += 1 + n;
	n = n < 0 ? n : vc_l7_number(ctx, p, 2, limit);     /* cipher suites */
	p += 2 + n;
	n = n < 0 ? n : vc_l7_number(ctx, p, 1, limit);     /* compression methods */
	p += 1 + n;
	if (n < 0)
		return 1;
	if (p >= off + 9 + ((__u32)vc_l7_byte(ctx, off + 6) << 16 | (__u32)vc_l7_number(ctx, off + 7, 2, VC_MAX_OFF))) {
		req->cause = 0;         /* no extensions */
		return 1;
	}
	n = vc_l7_number(ctx, p, 2, limit);
	if (n < 0)
		return 1;
	end = p + 2 + n;
	req->at = p + 2;
	req->mark = 0;              /* where the server_name's data starts */
	for (__u64 i = 0; i < VC_L7_TLS_EXTENSIONS; i++) {
		__u8 *ext;

		p = vc_l7_read(req->at);
		if (p >= end) {
			req->cause = 0; /* every extension walked: no server_name */
			break;
		}
		ext = p + 4 <= limit ? vc_l7_at(ctx, p, 4) : 0;
		if (!ext)
			break;
		if (!ext[0] && !ext[1]) {
			req->mark = p + 4;
			break;
		}
		req->at = p + 4 + (ext[2] << 8 | ext[3]);
	}
	p = vc_l7_read(req->mark);
	if (p)
		vc_l7_tls_server_name(ctx, p, limit, req);
	return 1;
}

/* -- DNS ---------------------------------------------------------------------- */

/* the first question's name of a DNS query at off (a UDP payload, or with
 * tcp a TCP one behind its two-byte length): 1 if it is a query, the name's
 * wire bytes after its first length octet in req->name
 * ("3www3bad7example0" -> "www3bad7example", which vc_l7_dns_dots then
 * punctuates). A name compressed, cut short or longer than
 * VC_L7_DNS_MAX_LABELS labels is none, and req->cause says so, as it does
 * for a query of more than one question. */
static __always_inline int vc_l7_dns_query(struct xdp_md *ctx, __u32 off, int tcp, struct vc_l7_req *req)
{
	__u32 total = 0;
	__u8 *hdr;

	__builtin_memset(req, 0, sizeof(*req));
	req->at = off;
	if (tcp) {
		if (vc_l7_byte(ctx, off) < 0)
			return 0;
		if (!vc_l7_at(ctx, off, 14)) {
			req->cause = VC_L7_DNS_NAME_UNREAD;
			return 1;
		}
		req->at = off + 2;
	}
	off = vc_l7_read(req->at);  /* one walk below for UDP and TCP */
	hdr = vc_l7_at(ctx, off, 12);
	if (!hdr || hdr[2] & 0x80 || (hdr[4] == 0 && hdr[5] == 0))
		return 0;               /* a response, or no question */
	req->cause = VC_L7_DNS_NAME_UNREAD;
	if (hdr[4] != 0 || hdr[5] != 1)
		req->mark = VC_L7_DNS_QUESTIONS;
	for (__u64 i = 0; i < VC_L7_DNS_MAX_LABELS; i++) {
		int len = vc_l7_byte(ctx, off + 12 + total);

		if (len < 0 || len & 0xc0)
			break;              /* cut short, or compressed (queries are not) */
		if (len == 0) {
			req->name.off = off + 13;
			req->name.len = total ? total - 1 : 0;
			req->cause = req->mark;
			break;
		}
		total += len + 1;
	}
	return 1;
}

/* -- names into lookup keys --------------------------------------------------- */

/* is all of the span inside the packet? */
static __always_inline int vc_l7_whole(struct xdp_md *ctx, struct vc_l7_span span)
{
	return span.len && vc_l7_at(ctx, span.off + span.len - 1, 1);
}

/* zero the buffer, then copy the name at span into it: lowercased, last byte
 * first, at most VC_L7_NAME_MAX bytes (the end of a longer name), then the
 * terminator; one trailing dot ("www.example.", a fully qualified name) is
 * left out. Returns the bytes copied. */
static __always_inline __u32 vc_l7_copy_reversed(struct xdp_md *ctx, struct vc_l7_span span,
						  const struct vc_l7_classes *cls, __u8 *buf)
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
		buf[vc_l7_index(r)] = cls->lower[c];
	}
	if (span.len > VC_L7_NAME_MAX)
		buf[VC_L7_NAME_MAX] = VC_L7_NAME_TRUNCATED;
	return n;
}

/* the same without reversing or lowercasing (HTTP paths), into buf from
 * position at (0 or 1), up to VC_L7_NAME_MAX - at bytes */
static __always_inline __u32 vc_l7_copy(struct xdp_md *ctx, struct vc_l7_span span, __u8 *buf, __u32 at)
{
	__builtin_memset(buf, 0, VC_L7_NAME_MAX + 1);
	if (at)
		buf[0] = '/';
	if (!vc_l7_whole(ctx, span))
		return 0;
	for (__u64 i = 0; i + at < VC_L7_NAME_MAX; i++) {
		int c;

		if (i >= span.len)
			break;
		c = vc_l7_byte(ctx, span.off + (__u32)i);
		if (c < 0)
			return 0;
		buf[vc_l7_index(i + at)] = c;
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
