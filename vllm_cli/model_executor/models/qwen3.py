"""Alibaba Qwen3 dense models (Qwen3-0.6B ... 32B) for a flat batch and a paged KV cache.

The Llama block with a per-head RMSNorm on q and k (q_norm, k_norm) before rotary, head_dim
taken from the config (not hidden_size / heads: Qwen3-0.6B has 16 heads of 128 over 1024),
and a sliding window only on the layers `layer_types` marks "sliding_attention".
"""

from __future__ import annotations

import torch

from vllm_cli.model_executor.layers.common import RMSNorm
from vllm_cli.model_executor.models.base import ForwardContext
from vllm_cli.model_executor.models.llama import LlamaAttention, LlamaForCausalLM


class Qwen3Attention(LlamaAttention):
    def __init__(self, config, layer_idx: int):
        super().__init__(config, layer_idx, qkv_bias=getattr(config, "attention_bias", False))
        self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        layer_types = getattr(config, "layer_types", None)
        sliding = layer_types is not None and layer_types[layer_idx] == "sliding_attention"
        self.sliding_window = config.sliding_window if sliding else None

    def forward(self, hidden: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        q, k, v = self.qkv_proj(hidden).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = ctx.rotary.rotate(self.q_norm(q.view(-1, self.num_heads, self.head_dim)), ctx.cos, ctx.sin)
        k = ctx.rotary.rotate(self.k_norm(k.view(-1, self.num_kv_heads, self.head_dim)), ctx.cos, ctx.sin)
        v = v.reshape(-1, self.num_kv_heads, self.head_dim)
        k_cache, v_cache = ctx.kv_caches[self.layer_idx]
        out = ctx.backend.forward(q, k, v, k_cache, v_cache, ctx.attn_metadata, self.scale,
                                  sliding_window=self.sliding_window)
        return self.o_proj(out.view(-1, self.q_size))


class Qwen3ForCausalLM(LlamaForCausalLM):
    def __init__(self, config):
        super().__init__(config)
        for i, layer in enumerate(self.model.layers):
            layer.self_attn = Qwen3Attention(config, i)
