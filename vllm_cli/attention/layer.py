"""Attention: the paged attention of one decoder layer, the base of every native model's attention.

A model's attention module subclasses it and adds its own projections under its checkpoint's
names (qkv_proj / Wqkv / c_attn / query_key_value, ...); its forward is then

    return self.o_proj(self.attend(self.qkv_proj(hidden), ctx))

`attend` splits the fused qkv output into heads, applies the step's position encoding (rotary,
looked up once per step by the model, on q and k together and in place on the CPU; or ALiBi
slopes, which the backend turns into a bias), writes K/V into this layer's cache and attends on
the step's backend. A subclass, not a child module, so that a layer pays no extra module call.
"""

from __future__ import annotations

import torch
from torch import nn

from vllm_cli.attention.backend import ForwardContext


class Attention(nn.Module):
    """num_heads / num_kv_heads are this rank's (all of them without tensor parallelism)."""

    def __init__(
        self,
        layer_idx: int,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        scale: float,
        sliding_window: int | None = None,
    ):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.q_size, self.kv_size = num_heads * head_dim, num_kv_heads * head_dim
        self.scale = scale
        self.sliding_window = sliding_window

    def attend(self, qkv: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        """qkv [T, q_size + 2 * kv_size] (q heads, then k heads, then v heads) -> [T, q_size]."""
        # A step of decodes on the CPU kernels: rotary, KV write and attention in one call.
        attend_qkv = getattr(ctx.attn_metadata, "attend_qkv", None)
        if attend_qkv is not None:
            out = attend_qkv(self, qkv, ctx)
            if out is not None:
                return out
        rotary, cos, sin = ctx.rotary, ctx.cos, ctx.sin
        if rotary is not None and cos is not None and sin is not None:
            qk, v = qkv.split([self.q_size + self.kv_size, self.kv_size], dim=-1)
            # q and k rotated together: one call, in place on the CPU
            qk = rotary.rotate(qk.view(-1, self.num_heads + self.num_kv_heads, self.head_dim), cos, sin)
            q, k = qk[:, : self.num_heads], qk[:, self.num_heads :]
        else:
            q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
            q, k = q.reshape(-1, self.num_heads, self.head_dim), k.reshape(-1, self.num_kv_heads, self.head_dim)
        return self.attend_heads(q, k, v.reshape(-1, self.num_kv_heads, self.head_dim), ctx)

    def attend_heads(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        """`attend` for a model that transforms the heads itself (Qwen3's q/k norms, MPT's qk_ln):
        q [T, num_heads, head_dim], k/v [T, num_kv_heads, head_dim], position encoding applied
        but for ALiBi -> [T, q_size]."""
        k_cache, v_cache = ctx.kv_caches[self.layer_idx]
        out = ctx.backend.forward(
            q,
            k,
            v,
            k_cache,
            v_cache,
            ctx.attn_metadata,
            self.scale,
            alibi_slopes=ctx.alibi_slopes,
            sliding_window=self.sliding_window,
        )
        return out.view(-1, self.q_size)
