"""MosaicML MPT (mpt-7b, -instruct, -chat, mpt-30b) for a flat batch and a paged KV cache.

MPT has no position embeddings: attention adds an ALiBi bias, slope_h * (key_pos -
query_pos), computed by the attention backend from absolute positions, so it stays exact
across blocks, chunked prefill, preemption and prefix caching. Fused Wqkv, optional
clip_qkv and q/k LayerNorm, LayerNorm and linears with or without bias (`no_bias`), GELU
MLP of `expansion_ratio`, embeddings tied to the LM head. Real checkpoints carry remote-code
`auto_map`; nothing of it is executed.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from vllm_cli.distributed.parallel_state import get_tp_size
from vllm_cli.model_executor.layers.common import alibi_slopes
from vllm_cli.model_executor.layers.linear import (
    ColumnParallelLinear,
    ParallelLMHead,
    QKVParallelLinear,
    RowParallelLinear,
    VocabParallelEmbedding,
    slice_heads,
)
from vllm_cli.model_executor.models.base import CausalLM, ForwardContext


def _attn_config(config) -> dict:
    attn = getattr(config, "attn_config", None) or {}
    return attn if isinstance(attn, dict) else attn.to_dict()


class MptAttention(nn.Module):
    def __init__(self, config, layer_idx: int, bias: bool):
        super().__init__()
        attn = _attn_config(config)
        self.layer_idx = layer_idx
        self.d_model = config.d_model
        self.head_dim = self.d_model // config.n_heads
        self.scale = attn.get("softmax_scale") or self.head_dim**-0.5
        self.clip_qkv = attn.get("clip_qkv")
        self.Wqkv = QKVParallelLinear(self.d_model, self.head_dim, config.n_heads, config.n_heads, bias=bias)
        self.num_heads, self.local_size = self.Wqkv.num_heads, self.Wqkv.q_size  # this rank's heads
        self.out_proj = RowParallelLinear(self.d_model, self.d_model, bias=bias)
        if attn.get("qk_ln"):
            if get_tp_size() > 1:  # normalized over all of d_model: the ranks would need to share statistics
                raise ValueError("MPT with qk_ln is not supported with tensor parallelism")
            self.q_ln = nn.LayerNorm(self.d_model, eps=config.layer_norm_epsilon, bias=bias)
            self.k_ln = nn.LayerNorm(self.d_model, eps=config.layer_norm_epsilon, bias=bias)
        else:
            self.q_ln = self.k_ln = None

    def forward(self, hidden: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        qkv = self.Wqkv(hidden)
        if self.clip_qkv:
            qkv = qkv.clamp(min=-self.clip_qkv, max=self.clip_qkv)
        q, k, v = qkv.split(self.local_size, dim=-1)
        if self.q_ln is not None:
            q, k = self.q_ln(q), self.k_ln(k)
        shape = (-1, self.num_heads, self.head_dim)
        k_cache, v_cache = ctx.kv_caches[self.layer_idx]
        out = ctx.backend.forward(q.reshape(shape), k.reshape(shape), v.reshape(shape), k_cache, v_cache,
                                  ctx.attn_metadata, self.scale, alibi_slopes=ctx.extras.get("alibi_slopes"))
        return self.out_proj(out.view(-1, self.local_size))


class MptBlock(nn.Module):
    def __init__(self, config, layer_idx: int, bias: bool):
        super().__init__()
        eps = config.layer_norm_epsilon
        hidden = int(config.expansion_ratio * config.d_model)
        self.norm_1 = nn.LayerNorm(config.d_model, eps=eps, bias=bias)
        self.attn = MptAttention(config, layer_idx, bias)
        self.norm_2 = nn.LayerNorm(config.d_model, eps=eps, bias=bias)
        self.ffn = nn.Module()
        self.ffn.up_proj = ColumnParallelLinear(config.d_model, hidden, bias=bias)
        self.ffn.down_proj = RowParallelLinear(hidden, config.d_model, bias=bias)

    def forward(self, hidden: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        hidden = hidden + self.attn(self.norm_1(hidden), ctx)
        return hidden + self.ffn.down_proj(F.gelu(self.ffn.up_proj(self.norm_2(hidden))))


class MptForCausalLM(CausalLM):
    def __init__(self, config):
        super().__init__(config)
        attn = _attn_config(config)
        if attn.get("prefix_lm"):
            raise ValueError("MPT with prefix_lm is not supported")
        if not attn.get("alibi", True):
            raise ValueError("MPT without ALiBi (learned positions) is not supported")
        ffn_type = (getattr(config, "ffn_config", None) or {}).get("ffn_type", "mptmlp")
        if ffn_type != "mptmlp":
            raise ValueError(f"MPT ffn_type {ffn_type!r} is not supported")
        bias = not getattr(config, "no_bias", True)
        self.transformer = nn.Module()
        self.transformer.wte = VocabParallelEmbedding(config.vocab_size, config.d_model)
        self.transformer.blocks = nn.ModuleList(MptBlock(config, i, bias) for i in range(config.n_layers))
        self.transformer.norm_f = nn.LayerNorm(config.d_model, eps=config.layer_norm_epsilon, bias=bias)
        self.tie_word_embeddings = True  # MPT always ties the LM head to the embedding
        self.lm_head = ParallelLMHead(config.d_model, config.vocab_size)
        self.lm_head.weight = self.transformer.wte.weight
        logit_scale = getattr(config, "logit_scale", None)
        if logit_scale == "inv_sqrt_d_model":
            logit_scale = config.d_model**-0.5
        self.logit_scale = float(logit_scale) if logit_scale is not None else None
        # every head's slope is fixed by its index among all heads: each rank takes its own
        slopes = slice_heads(alibi_slopes(config.n_heads, float(attn.get("alibi_bias_max", 8))), config.n_heads)
        self.register_buffer("alibi_slopes", slopes, persistent=False)

    def kv_cache_shape(self) -> tuple[int, int, int]:
        attn = self.transformer.blocks[0].attn
        return len(self.transformer.blocks), attn.num_heads, attn.head_dim

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        # One slopes tensor for every layer: the backend builds the bias mask once per step.
        ctx.extras["alibi_slopes"] = self.alibi_slopes.to(self.transformer.wte.weight.dtype)
        return self.run_decoder(self.transformer.wte, self.transformer.blocks, self.transformer.norm_f,
                                input_ids, positions, ctx)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = super().compute_logits(hidden)
        return logits if self.logit_scale is None else logits * self.logit_scale

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        return self.load_stacked_weights(weights)
