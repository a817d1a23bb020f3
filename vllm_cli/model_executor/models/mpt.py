"""MosaicML MPT (mpt-7b, -instruct, -chat, mpt-30b) for a flat batch and a paged KV cache.

MPT has no position embeddings: attention adds an ALiBi bias, slope_h * (key_pos -
query_pos), computed by the attention backend from absolute positions, so it stays exact
across blocks, chunked prefill, preemption and prefix caching. Fused Wqkv, optional
clip_qkv and q/k LayerNorm, LayerNorm and linears with or without bias (`no_bias`), GELU
MLP of 4 x d_model (as transformers' MptMLP builds it, whatever `expansion_ratio` says),
embeddings tied to the LM head. Real checkpoints carry remote-code
`auto_map`; nothing of it is executed.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vllm_cli.attention.backend import ForwardContext
from vllm_cli.attention.layer import Attention
from vllm_cli.distributed.parallel_state import get_tp_size
from vllm_cli.model_executor.layers.alibi import alibi_slopes
from vllm_cli.model_executor.layers.linear import (
    ColumnParallelLinear,
    QKVParallelLinear,
    RowParallelLinear,
    VocabParallelEmbedding,
    slice_heads,
)
from vllm_cli.model_executor.models.base import DecoderForCausalLM


def _attn_config(config: Any) -> dict[str, Any]:
    attn = getattr(config, "attn_config", None) or {}
    return attn if isinstance(attn, dict) else attn.to_dict()


class MptAttention(Attention):
    def __init__(self, config: Any, layer_idx: int, bias: bool):
        attn = _attn_config(config)
        d_model = config.d_model
        head_dim = d_model // config.n_heads
        Wqkv = QKVParallelLinear(d_model, head_dim, config.n_heads, config.n_heads, bias=bias)
        super().__init__(
            layer_idx, Wqkv.num_heads, Wqkv.num_kv_heads, head_dim, attn.get("softmax_scale") or head_dim**-0.5
        )
        self.clip_qkv = attn.get("clip_qkv")
        self.Wqkv = Wqkv
        self.out_proj = RowParallelLinear(d_model, d_model, bias=bias)
        self.q_ln: nn.LayerNorm | None = None
        self.k_ln: nn.LayerNorm | None = None
        if attn.get("qk_ln"):
            if get_tp_size() > 1:  # normalized over all of d_model: the ranks would need to share statistics
                raise ValueError("MPT with qk_ln is not supported with tensor parallelism")
            self.q_ln = nn.LayerNorm(d_model, eps=config.layer_norm_epsilon, bias=bias)
            self.k_ln = nn.LayerNorm(d_model, eps=config.layer_norm_epsilon, bias=bias)

    def forward(self, hidden: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        qkv = self.Wqkv(hidden)
        if self.clip_qkv:
            qkv = qkv.clamp(min=-self.clip_qkv, max=self.clip_qkv)
        if self.q_ln is None or self.k_ln is None:
            return self.out_proj(self.attend(qkv, ctx))
        q, k, v = qkv.split(self.q_size, dim=-1)
        shape = (-1, self.num_heads, self.head_dim)
        out = self.attend_heads(self.q_ln(q).reshape(shape), self.k_ln(k).reshape(shape), v.reshape(shape), ctx)
        return self.out_proj(out)


class MptFfn(nn.Module):
    """The checkpoint's ffn.up_proj / ffn.down_proj, run inline by MptBlock (no module call per layer)."""

    def __init__(self, d_model: int, hidden: int, bias: bool):
        super().__init__()
        self.up_proj = ColumnParallelLinear(d_model, hidden, bias=bias)
        self.down_proj = RowParallelLinear(hidden, d_model, bias=bias)


class MptBlock(nn.Module):
    def __init__(self, config: Any, layer_idx: int, bias: bool):
        super().__init__()
        eps = config.layer_norm_epsilon
        # transformers' MptMLP is 4 x d_model whatever config.expansion_ratio says, so that is the shape
        # of every checkpoint it saves: follow it (the loader rejects a tensor of any other shape).
        hidden = 4 * config.d_model
        self.norm_1 = nn.LayerNorm(config.d_model, eps=eps, bias=bias)
        self.attn = MptAttention(config, layer_idx, bias)
        self.norm_2 = nn.LayerNorm(config.d_model, eps=eps, bias=bias)
        self.ffn = MptFfn(config.d_model, hidden, bias)

    def forward(self, hidden: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        hidden = hidden + self.attn(self.norm_1(hidden), ctx)
        return hidden + self.ffn.down_proj(F.gelu(self.ffn.up_proj(self.norm_2(hidden))))


class MptForCausalLM(DecoderForCausalLM):
    def __init__(self, config: Any):
        attn = _attn_config(config)
        if attn.get("prefix_lm"):
            raise ValueError("MPT with prefix_lm is not supported")
        if not attn.get("alibi", True):
            raise ValueError("MPT without ALiBi (learned positions) is not supported")
        ffn_type = (getattr(config, "ffn_config", None) or {}).get("ffn_type", "mptmlp")
        if ffn_type != "mptmlp":
            raise ValueError(f"MPT ffn_type {ffn_type!r} is not supported")
        bias = not getattr(config, "no_bias", True)
        # every head's slope is fixed by its index among all heads: each rank takes its own
        slopes = slice_heads(alibi_slopes(config.n_heads, float(attn.get("alibi_bias_max", 8))), config.n_heads)
        super().__init__(
            config,
            "transformer",
            {
                "wte": VocabParallelEmbedding(config.vocab_size, config.d_model),
                "blocks": [MptBlock(config, i, bias) for i in range(config.n_layers)],
                "norm_f": nn.LayerNorm(config.d_model, eps=config.layer_norm_epsilon, bias=bias),
            },
            tie_word_embeddings=True,
            alibi_slopes=slopes,
        )  # MPT always ties the LM head to the embedding
        logit_scale = getattr(config, "logit_scale", None)
        if logit_scale == "inv_sqrt_d_model":
            logit_scale = config.d_model**-0.5
        self.logit_scale = float(logit_scale) if logit_scale is not None else None

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = super().compute_logits(hidden)
        return logits if self.logit_scale is None else logits * self.logit_scale

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        return self.load_stacked_weights(weights)
