/* vc_stats.h - per-function per-CPU counters: a struct vc_row per function in
 * the chain's per-CPU state (struct vc_state, declared by the rendered prelude). */
#ifndef VC_STATS_H
#define VC_STATS_H

static __always_inline void vc_count_rx(struct vc_row *row, struct xdp_md *ctx)
{
	row->c[VC_CTR_RX_PACKETS]++;
	row->c[VC_CTR_RX_BYTES] += ctx->data_end - ctx->data;
}

static __always_inline void vc_count(struct vc_row *row, __u32 ctr)
{
	row->c[ctr & (VC_ROW_SLOTS - 1)]++;
}

static __always_inline void vc_count_verdict(struct vc_row *row, int verdict, struct vc_meta *meta)
{
	if (verdict == VC_CONTINUE)
		vc_count(row, VC_CTR_CONTINUE);
	else if (verdict >= VC_LABEL_BASE)
		vc_count(row, VC_CTR_BRANCH);
	else
		vc_count(row, VC_CTR_DROP + (verdict - VC_DROP));
	if (verdict == VC_DROP)
		vc_count(row, VC_CTR_REASON_BASE + meta->reason);
}

/* the entry counts every frame its parser could not classify, by reason */
static __always_inline void vc_count_unparsed(struct vc_row *row, const struct vc_meta *meta)
{
	if (meta->unparsed)
		vc_count(row, VC_CTR_UNPARSED_BASE + meta->unparsed);
}

/* a tail call returns only when its slot is empty: count it, end in on_miss */
static __always_inline int vc_tail_call_missed(struct vc_row *row)
{
	vc_count(row, VC_CTR_TAIL_CALL_MISS);
	return VC_ON_MISS;
}

#endif
