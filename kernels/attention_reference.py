"""Plain-torch references for paged attention, in float64, sequence by sequence: what the Triton
kernels (paged_attention.py) and the CPU decode kernel (cpu.py) are tested against. No triton
import, so the CPU tests can use them without it."""

from __future__ import annotations

import torch


def paged_prefill_attention_ref(
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
) -> torch.Tensor:
    """Sequence by sequence, in float64: gather the context through the block table, mask
    (causal, window), add ALiBi, softmax, weighted sum."""
    num_heads = q.shape[1]
    group = num_heads // k_cache.shape[1]
    out = torch.zeros_like(q)
    cu = cu_seqlens_q.tolist()
    for s in range(len(cu) - 1):
        ctx = int(context_lens[s])
        q_len = cu[s + 1] - cu[s]
        key_pos = torch.arange(ctx, device=q.device)
        slots = block_tables[s, key_pos // block_size].long() * block_size + key_pos % block_size
        keys = k_cache[slots].double().repeat_interleave(group, dim=1)  # [L, H, D]
        values = v_cache[slots].double().repeat_interleave(group, dim=1)
        queries = q[cu[s] : cu[s + 1]].double()  # [Q, H, D]
        q_pos = torch.arange(ctx - q_len, ctx, device=q.device)
        scores = torch.einsum("qhd,lhd->hql", queries, keys) * scale
        rel = (key_pos[None, :] - q_pos[:, None]).double()  # [Q, L]
        if alibi_slopes is not None:
            scores = scores + alibi_slopes.double()[:, None, None] * rel
        allowed = rel <= 0
        if sliding_window:
            allowed &= rel > -sliding_window
        scores = scores.masked_fill(~allowed, float("-inf"))
        out[cu[s] : cu[s + 1]] = torch.einsum("hql,lhd->qhd", scores.softmax(-1), values).to(q.dtype)
    return out


def paged_decode_attention_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    block_size: int,
    scale: float,
    alibi_slopes: torch.Tensor | None = None,
    sliding_window: int | None = None,
) -> torch.Tensor:
    """q [S, H, D], one query per sequence at position context_len - 1."""
    cu = torch.arange(q.shape[0] + 1, device=q.device)
    return paged_prefill_attention_ref(
        q, k_cache, v_cache, block_tables, cu, context_lens, block_size, scale, alibi_slopes, sliding_window
    )
