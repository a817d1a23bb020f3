"""Alibaba Qwen3 dense models (Qwen3-0.6B ... 32B) for a flat batch and a paged KV cache.

The Llama block with a per-head RMSNorm on q and k (q_norm, k_norm) before rotary, head_dim
taken from the config (not hidden_size / heads: Qwen3-0.6B has 16 heads of 128 over 1024),
and a sliding window only on the layers `layer_types` marks "sliding_attention".
"""

from __future__ import annotations

from typing import Any

import torch

from vllm_cli.attention.backend import ForwardContext
from vllm_cli.attention.layer import Attention
from vllm_cli.model_executor.layers.norm import RMSNorm
from vllm_cli.model_executor.models.llama import LlamaAttention, LlamaForCausalLM


class Qwen3Attention(LlamaAttention):
    def __init__(self, config: Any, layer_idx: int):
        super().__init__(config, layer_idx, qkv_bias=getattr(config, "attention_bias", False))
        self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        layer_types = getattr(config, "layer_types", None)
        sliding = layer_types is not None and layer_types[layer_idx] == "sliding_attention"
        self.sliding_window = config.sliding_window if sliding else None

    def attend(self, qkv: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        rotary, cos, sin = ctx.rotary, ctx.cos, ctx.sin
        assert rotary is not None and cos is not None and sin is not None  # set by DecoderForCausalLM.forward
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = rotary.rotate(self.q_norm(q.view(-1, self.num_heads, self.head_dim)), cos, sin)
        k = rotary.rotate(self.k_norm(k.view(-1, self.num_kv_heads, self.head_dim)), cos, sin)
        return self.attend_heads(q, k, v.reshape(-1, self.num_kv_heads, self.head_dim), ctx)


class Qwen3ForCausalLM(LlamaForCausalLM):
    def attention(self, config: Any, layer_idx: int) -> Attention:
        return Qwen3Attention(config, layer_idx)
