"""Paged attention over the KV cache: decode (one query per sequence) and varlen prefill.

The cache of one layer is [num_slots, num_kv_heads, head_dim]; the key at position p of a
sequence lives in slot block_tables[seq, p // block_size] * block_size + p % block_size. Both
kernels read every key through the block table (new tokens included: they are written to
the cache first), so prefix-cached and chunked prefills need nothing special. Scores and the
softmax accumulate in float32 (exp2 with log2(e) folded into the scale); ALiBi adds
slope * (key_pos - query_pos); a sliding window keeps keys with key_pos > query_pos - window.

- Decode: one program per (sequence, KV head, split). The query heads of one KV head are the
  rows of a [GROUP_PAD, D] tile, so grouped-query attention reads each K/V tile once. With
  num_splits > 1 (flash-decoding) each split covers a contiguous share of the context and
  writes a normalized partial output and its log-sum-exp; a second kernel combines them.
- Prefill: one program per (sequence, query head, BLOCK_M query rows), flash-attention style
  over the causal range (and window) of its rows. Query positions start at
  context_len - query_len: earlier context comes from the cache.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# The plain-torch references live in attention_reference.py (no triton import, so the CPU
# kernel's tests share them); re-exported here beside the kernels they check.
from vllm_cli.kernels.attention_reference import paged_decode_attention_ref, paged_prefill_attention_ref

LOG2E = 1.4426950408889634


@triton.jit
def _mm(a, b, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    # UPCAST: the interpreter multiplies the raw bits of bfloat16 dot operands (triton 3.9,
    # triton-lang/triton#11584, unsupported upstream); products of
    # bfloat16 values are exact in float32, so upcasting first is what the tensor cores compute.
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        return tl.dot(a, b, input_precision=PRECISION)


@triton.jit
def _paged_decode_kernel(
    q_ptr,
    k_cache_ptr,
    v_cache_ptr,
    out_ptr,
    part_out_ptr,
    part_lse_ptr,
    seq_ids_ptr,
    query_rows_ptr,
    block_tables_ptr,
    context_lens_ptr,
    slopes_ptr,
    scale_log2,
    window,
    stride_qt,
    stride_qh,
    stride_ot,
    stride_oh,
    stride_ks,
    stride_kh,
    stride_vs,
    stride_vh,
    stride_bt,
    stride_pi,
    stride_ph,
    stride_ps,
    GROUP: tl.constexpr,
    GROUP_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    D_PAD: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    HAS_ALIBI: tl.constexpr,
    HAS_WINDOW: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    DOT_UPCAST: tl.constexpr,
):
    i = tl.program_id(0).to(tl.int64)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    seq = tl.load(seq_ids_ptr + i).to(tl.int64)
    row = tl.load(query_rows_ptr + i).to(tl.int64)
    ctx = tl.load(context_lens_ptr + seq)
    lo = ctx * 0
    if HAS_WINDOW:
        lo = tl.maximum(ctx - window, 0)
    chunk = tl.cdiv(tl.cdiv(ctx - lo, NUM_SPLITS), BLOCK_N) * BLOCK_N
    start = lo + split * chunk
    end = tl.minimum(start + chunk, ctx)

    g = tl.arange(0, GROUP_PAD)
    d = tl.arange(0, D_PAD)
    gmask = g < GROUP
    dmask = d < HEAD_DIM
    heads = kvh * GROUP + g
    q = tl.load(
        q_ptr + row * stride_qt + heads[:, None] * stride_qh + d[None, :],
        mask=gmask[:, None] & dmask[None, :],
        other=0.0,
    )
    if HAS_ALIBI:
        slopes = tl.load(slopes_ptr + heads, mask=gmask, other=0.0).to(tl.float32) * 1.4426950408889634
    # A finite floor (not -inf) for the running max: a fully masked tile gives p = 0, not NaN.
    m_i = tl.full([GROUP_PAD], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([GROUP_PAD], dtype=tl.float32)
    acc = tl.zeros([GROUP_PAD, D_PAD], dtype=tl.float32)
    bt_row = block_tables_ptr + seq * stride_bt
    for n0 in range(start, end, BLOCK_N):
        pos = n0 + tl.arange(0, BLOCK_N)
        valid = pos < end
        block = tl.load(bt_row + pos // BLOCK_SIZE, mask=valid, other=0).to(tl.int64)
        slot = block * BLOCK_SIZE + pos % BLOCK_SIZE
        kv_mask = valid[:, None] & dmask[None, :]
        k = tl.load(k_cache_ptr + slot[:, None] * stride_ks + kvh * stride_kh + d[None, :], mask=kv_mask, other=0.0)
        s = _mm(q, tl.trans(k), DOT_PRECISION, DOT_UPCAST) * scale_log2
        if HAS_ALIBI:
            s += slopes[:, None] * (pos - (ctx - 1)).to(tl.float32)[None, :]
        s = tl.where(valid[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_cache_ptr + slot[:, None] * stride_vs + kvh * stride_vh + d[None, :], mask=kv_mask, other=0.0)
        acc = acc * alpha[:, None] + _mm(p.to(v.dtype), v, DOT_PRECISION, DOT_UPCAST)
        m_i = m_new

    has_keys = l_i > 0
    l_safe = tl.where(has_keys, l_i, 1.0)
    out = acc / l_safe[:, None]
    out_mask = gmask[:, None] & dmask[None, :]
    if NUM_SPLITS == 1:
        tl.store(
            out_ptr + row * stride_ot + heads[:, None] * stride_oh + d[None, :],
            out.to(out_ptr.dtype.element_ty),
            mask=out_mask,
        )
    else:
        base = i * stride_pi + heads * stride_ph + split * stride_ps
        tl.store(part_out_ptr + base[:, None] * D_PAD + d[None, :], out, mask=out_mask)
        lse = tl.where(has_keys, m_i + tl.log2(l_safe), float("-inf"))
        tl.store(part_lse_ptr + base, lse, mask=gmask)


@triton.jit
def _paged_decode_reduce_kernel(
    out_ptr,
    part_out_ptr,
    part_lse_ptr,
    query_rows_ptr,
    stride_ot,
    stride_oh,
    stride_pi,
    stride_ph,
    stride_ps,
    HEAD_DIM: tl.constexpr,
    D_PAD: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    SPLIT_PAD: tl.constexpr,
):
    i = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    row = tl.load(query_rows_ptr + i).to(tl.int64)
    sp = tl.arange(0, SPLIT_PAD)
    d = tl.arange(0, D_PAD)
    smask = sp < NUM_SPLITS
    base = i * stride_pi + h * stride_ph + sp * stride_ps
    lse = tl.load(part_lse_ptr + base, mask=smask, other=float("-inf"))
    weights = tl.exp2(lse - tl.max(lse, 0))  # split 0 always has keys: the max is finite
    parts = tl.load(
        part_out_ptr + base[:, None] * D_PAD + d[None, :], mask=smask[:, None] & (d[None, :] < HEAD_DIM), other=0.0
    )
    out = tl.sum(parts * weights[:, None], 0) / tl.sum(weights, 0)
    tl.store(out_ptr + row * stride_ot + h * stride_oh + d, out.to(out_ptr.dtype.element_ty), mask=d < HEAD_DIM)


@triton.jit
def _paged_prefill_kernel(
    q_ptr,
    k_cache_ptr,
    v_cache_ptr,
    out_ptr,
    cu_seqlens_ptr,
    block_tables_ptr,
    context_lens_ptr,
    slopes_ptr,
    scale_log2,
    window,
    stride_qt,
    stride_qh,
    stride_ot,
    stride_oh,
    stride_ks,
    stride_kh,
    stride_vs,
    stride_vh,
    stride_bt,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    D_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    HAS_ALIBI: tl.constexpr,
    HAS_WINDOW: tl.constexpr,
    SKIP_DECODE: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    DOT_UPCAST: tl.constexpr,
):
    seq = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    mb = tl.program_id(2)
    q_start = tl.load(cu_seqlens_ptr + seq).to(tl.int64)
    q_len = (tl.load(cu_seqlens_ptr + seq + 1) - q_start).to(tl.int32)
    skip = mb * BLOCK_M >= q_len
    if SKIP_DECODE:
        skip = skip | (q_len == 1)  # left to the decode kernel
    if skip:
        return
    ctx = tl.load(context_lens_ptr + seq)
    kvh = h // GROUP
    m = mb * BLOCK_M + tl.arange(0, BLOCK_M)
    d = tl.arange(0, D_PAD)
    mmask = m < q_len
    dmask = d < HEAD_DIM
    q_pos = ctx - q_len + m  # absolute positions of this tile's queries
    q = tl.load(
        q_ptr + (q_start + m)[:, None] * stride_qt + h * stride_qh + d[None, :],
        mask=mmask[:, None] & dmask[None, :],
        other=0.0,
    )
    if HAS_ALIBI:
        slope = tl.load(slopes_ptr + h).to(tl.float32) * 1.4426950408889634
    first_pos = ctx - q_len + mb * BLOCK_M
    hi = tl.minimum(ctx, first_pos + BLOCK_M)  # causal: no key past the tile's last query
    lo = first_pos * 0
    if HAS_WINDOW:
        lo = tl.maximum(first_pos - window + 1, 0)
    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, D_PAD], dtype=tl.float32)
    bt_row = block_tables_ptr + seq * stride_bt
    for n0 in range(lo, hi, BLOCK_N):
        pos = n0 + tl.arange(0, BLOCK_N)
        kvalid = pos < hi
        block = tl.load(bt_row + pos // BLOCK_SIZE, mask=kvalid, other=0).to(tl.int64)
        slot = block * BLOCK_SIZE + pos % BLOCK_SIZE
        kv_mask = kvalid[:, None] & dmask[None, :]
        k = tl.load(k_cache_ptr + slot[:, None] * stride_ks + kvh * stride_kh + d[None, :], mask=kv_mask, other=0.0)
        s = _mm(q, tl.trans(k), DOT_PRECISION, DOT_UPCAST) * scale_log2
        rel = pos[None, :] - q_pos[:, None]
        if HAS_ALIBI:
            s += slope * rel.to(tl.float32)
        mask = kvalid[None, :] & (rel <= 0)
        if HAS_WINDOW:
            mask = mask & (rel > -window)
        s = tl.where(mask, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_cache_ptr + slot[:, None] * stride_vs + kvh * stride_vh + d[None, :], mask=kv_mask, other=0.0)
        acc = acc * alpha[:, None] + _mm(p.to(v.dtype), v, DOT_PRECISION, DOT_UPCAST)
        m_i = m_new
    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    tl.store(
        out_ptr + (q_start + m)[:, None] * stride_ot + h * stride_oh + d[None, :],
        out.to(out_ptr.dtype.element_ty),
        mask=mmask[:, None] & dmask[None, :],
    )


# ----- launchers -----


def _check(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor):
    num_heads, head_dim = q.shape[1], q.shape[2]
    num_kv_heads = k_cache.shape[1]
    assert k_cache.shape == v_cache.shape and k_cache.shape[2] == head_dim, "caches must be [slots, KVH, D]"
    assert num_heads % num_kv_heads == 0, f"{num_heads} heads are not a multiple of {num_kv_heads} KV heads"
    assert q.stride(-1) == 1 and k_cache.stride(-1) == 1 and v_cache.stride(-1) == 1
    assert block_tables.dim() == 2 and block_tables.stride(-1) == 1
    return num_heads, head_dim, num_kv_heads


def _dot_precision(dtype: torch.dtype) -> str:
    # float32 inputs: 3xTF32 (about float32's accuracy on the tensor cores; tl.dot defaults to
    # plain tf32, and "ieee" spills registers). Ignored for 16-bit inputs.
    return "tf32x3" if dtype == torch.float32 else "tf32"


def _num_warps(dtype: torch.dtype, head_dim: int, prefill: bool) -> int:
    # From ptxas -v on sm_90 (no spills): 16-bit decode at 4 warps ~105 registers, prefill
    # 64 x 64 tiles ~224 at head_dim 128; float32 and head_dim 256 need 8 to avoid spilling.
    if dtype == torch.float32 or (prefill and head_dim > 128):
        return 8
    return 4


def _dot_upcast(dtype: torch.dtype) -> bool:
    return dtype == torch.bfloat16 and type(_paged_decode_kernel).__name__ == "InterpretedFunction"


def _slopes_arg(alibi_slopes: torch.Tensor | None, q: torch.Tensor) -> torch.Tensor:
    if alibi_slopes is None:
        return q  # never read
    assert alibi_slopes.numel() == q.shape[1], "one ALiBi slope per query head"
    return alibi_slopes.contiguous()


_SM_COUNT: dict[int, int] = {}


def _default_num_splits(device: torch.device, num_seqs: int, num_kv_heads: int, max_span: int, block_n: int) -> int:
    """Enough (sequence, KV head, split) programs to fill the GPU, each with >= 256 keys."""
    if device.type != "cuda":
        return 1
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _SM_COUNT:
        _SM_COUNT[index] = torch.cuda.get_device_properties(index).multi_processor_count
    programs = num_seqs * num_kv_heads
    wanted = triton.cdiv(2 * _SM_COUNT[index], programs)
    return max(1, min(wanted, triton.cdiv(max_span, max(256, block_n)), 64))


def paged_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    block_size: int,
    scale: float,
    alibi_slopes: torch.Tensor | None = None,
    sliding_window: int | None = None,
    out: torch.Tensor | None = None,
    seq_ids: torch.Tensor | None = None,
    query_rows: torch.Tensor | None = None,
    max_context_len: int | None = None,
    num_splits: int | None = None,
    block_n: int | None = None,
) -> torch.Tensor:
    """One query token per sequence.

    q [T, H, D]; caches [num_slots, KVH, D]; block_tables [S, max_blocks] (int32/int64);
    context_lens [S] (tokens in the cache, the query's own included: its position is
    context_len - 1). By default program i serves sequence i with query row i; seq_ids [N]
    and query_rows [N] pick a subset of the batch's sequences and their rows of q (a mixed
    step). Writes those rows of `out` ([T, H, D], allocated if None) and returns it.
    """
    num_heads, head_dim, num_kv_heads = _check(q, k_cache, v_cache, block_tables)
    if seq_ids is None:
        seq_ids = torch.arange(block_tables.shape[0], dtype=torch.int32, device=q.device)
    if query_rows is None:
        query_rows = seq_ids
    if out is None:
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    n = seq_ids.shape[0]
    if n == 0:
        return out
    group = num_heads // num_kv_heads
    block_n = block_n or (64 if head_dim <= 128 else 32)
    if max_context_len is None:
        max_context_len = int(context_lens.max())
    span = min(max_context_len, sliding_window) if sliding_window else max_context_len
    if num_splits is None:
        num_splits = _default_num_splits(q.device, n, num_kv_heads, span, block_n)
    num_splits = max(1, min(num_splits, triton.cdiv(max(span, 1), block_n)))
    d_pad = triton.next_power_of_2(head_dim)
    if num_splits > 1:
        part_out = torch.empty((n, num_heads, num_splits, d_pad), dtype=torch.float32, device=q.device)
        part_lse = torch.empty((n, num_heads, num_splits), dtype=torch.float32, device=q.device)
    else:
        part_out = part_lse = out  # never written
    stride_pi, stride_ph, stride_ps = num_heads * num_splits, num_splits, 1
    _paged_decode_kernel[(n, num_kv_heads, num_splits)](
        q,
        k_cache,
        v_cache,
        out,
        part_out,
        part_lse,
        seq_ids,
        query_rows,
        block_tables,
        context_lens,
        _slopes_arg(alibi_slopes, q),
        scale * LOG2E,
        int(sliding_window or 0),
        q.stride(0),
        q.stride(1),
        out.stride(0),
        out.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        v_cache.stride(0),
        v_cache.stride(1),
        block_tables.stride(0),
        stride_pi,
        stride_ph,
        stride_ps,
        GROUP=group,
        GROUP_PAD=max(16, triton.next_power_of_2(group)),
        HEAD_DIM=head_dim,
        D_PAD=d_pad,
        BLOCK_N=block_n,
        BLOCK_SIZE=block_size,
        NUM_SPLITS=num_splits,
        HAS_ALIBI=alibi_slopes is not None,
        HAS_WINDOW=bool(sliding_window),
        DOT_PRECISION=_dot_precision(q.dtype),
        DOT_UPCAST=_dot_upcast(q.dtype),
        num_warps=_num_warps(q.dtype, head_dim, prefill=False),
    )
    if num_splits > 1:
        _paged_decode_reduce_kernel[(n, num_heads)](
            out,
            part_out,
            part_lse,
            query_rows,
            out.stride(0),
            out.stride(1),
            stride_pi,
            stride_ph,
            stride_ps,
            HEAD_DIM=head_dim,
            D_PAD=d_pad,
            NUM_SPLITS=num_splits,
            SPLIT_PAD=triton.next_power_of_2(num_splits),
        )
    return out


def paged_prefill_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    context_lens: torch.Tensor,
    block_size: int,
    scale: float,
    alibi_slopes: torch.Tensor | None = None,
    sliding_window: int | None = None,
    out: torch.Tensor | None = None,
    max_query_len: int | None = None,
    skip_decode: bool = False,
    block_m: int | None = None,
    block_n: int | None = None,
) -> torch.Tensor:
    """Causal attention for a flat varlen batch whose K/V (new tokens included) are in the cache.

    q [T, H, D]; sequence s owns rows cu_seqlens_q[s]:cu_seqlens_q[s + 1] at positions
    context_lens[s] - query_len .. context_lens[s] - 1. skip_decode leaves sequences with a
    single query token unwritten (for paged_decode_attention in the same step).
    """
    num_heads, head_dim, num_kv_heads = _check(q, k_cache, v_cache, block_tables)
    num_seqs = cu_seqlens_q.shape[0] - 1
    if out is None:
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if max_query_len is None:
        max_query_len = int((cu_seqlens_q[1:] - cu_seqlens_q[:-1]).max()) if num_seqs else 0
    if num_seqs == 0 or max_query_len == 0:
        return out
    block_m = block_m or 64
    block_n = block_n or (64 if head_dim <= 128 else 32)
    _paged_prefill_kernel[(num_seqs, num_heads, triton.cdiv(max_query_len, block_m))](
        q,
        k_cache,
        v_cache,
        out,
        cu_seqlens_q,
        block_tables,
        context_lens,
        _slopes_arg(alibi_slopes, q),
        scale * LOG2E,
        int(sliding_window or 0),
        q.stride(0),
        q.stride(1),
        out.stride(0),
        out.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        v_cache.stride(0),
        v_cache.stride(1),
        block_tables.stride(0),
        GROUP=num_heads // num_kv_heads,
        HEAD_DIM=head_dim,
        D_PAD=triton.next_power_of_2(head_dim),
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_SIZE=block_size,
        HAS_ALIBI=alibi_slopes is not None,
        HAS_WINDOW=bool(sliding_window),
        SKIP_DECODE=skip_decode,
        DOT_PRECISION=_dot_precision(q.dtype),
        DOT_UPCAST=_dot_upcast(q.dtype),
        num_warps=_num_warps(q.dtype, head_dim, prefill=True),
    )
    return out


__all__ = [
    "paged_decode_attention",
    "paged_decode_attention_ref",
    "paged_prefill_attention",
    "paged_prefill_attention_ref",
]
