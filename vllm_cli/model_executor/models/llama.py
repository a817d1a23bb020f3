"""The Llama family (Llama 1-3, Mistral, Qwen2, SmolLM2) for a flat batch and a paged KV cache.

Every linear runs once over the whole flat batch of tokens: q/k/v are one fused matmul and so
are gate/up. Checkpoint names (q_proj, k_proj, ...) are mapped onto the fused weights at load.
Under tensor parallelism each rank holds its heads and its share of the MLP (layers/linear.py).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from vllm_cli.model_executor.layers.common import RMSNorm, RotaryEmbedding, silu_and_mul
from vllm_cli.model_executor.layers.linear import (
    MergedColumnParallelLinear,
    ParallelLMHead,
    QKVParallelLinear,
    RowParallelLinear,
    VocabParallelEmbedding,
)
from vllm_cli.model_executor.models.base import CausalLM, ForwardContext


class LlamaAttention(nn.Module):
    def __init__(self, config, layer_idx: int, qkv_bias: bool):
        super().__init__()
        self.layer_idx = layer_idx
        num_heads = config.num_attention_heads
        num_kv_heads = getattr(config, "num_key_value_heads", None) or num_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv_proj = QKVParallelLinear(config.hidden_size, self.head_dim, num_heads, num_kv_heads, bias=qkv_bias)
        # this rank's heads (all of them without tensor parallelism)
        self.num_heads, self.num_kv_heads = self.qkv_proj.num_heads, self.qkv_proj.num_kv_heads
        self.q_size, self.kv_size = self.qkv_proj.q_size, self.qkv_proj.kv_size
        self.o_proj = RowParallelLinear(num_heads * self.head_dim, config.hidden_size,
                                        bias=getattr(config, "attention_bias", False))
        window = getattr(config, "sliding_window", None)
        self.sliding_window = window if window and getattr(config, "use_sliding_window", True) else None

    def forward(self, hidden: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        qkv = self.qkv_proj(hidden)
        qk, v = qkv.split([self.q_size + self.kv_size, self.kv_size], dim=-1)
        # q and k rotated together: one call, in place on the CPU
        qk = ctx.rotary.rotate(qk.view(-1, self.num_heads + self.num_kv_heads, self.head_dim), ctx.cos, ctx.sin)
        q, k = qk[:, : self.num_heads], qk[:, self.num_heads:]
        v = v.reshape(-1, self.num_kv_heads, self.head_dim)
        k_cache, v_cache = ctx.kv_caches[self.layer_idx]
        out = ctx.backend.forward(q, k, v, k_cache, v_cache, ctx.attn_metadata, self.scale,
                                  sliding_window=self.sliding_window)
        return self.o_proj(out.view(-1, self.q_size))


class LlamaMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        if getattr(config, "hidden_act", "silu") != "silu":
            raise ValueError(f"hidden_act {config.hidden_act!r} is not supported for this architecture")
        bias = getattr(config, "mlp_bias", False)
        self.gate_up_proj = MergedColumnParallelLinear(config.hidden_size, [config.intermediate_size] * 2, bias=bias)
        self.down_proj = RowParallelLinear(config.intermediate_size, config.hidden_size, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(silu_and_mul(self.gate_up_proj(x)))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config, layer_idx: int, qkv_bias: bool):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = LlamaAttention(config, layer_idx, qkv_bias)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = LlamaMLP(config)

    def forward(self, hidden: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        hidden = hidden + self.self_attn(self.input_layernorm(hidden), ctx)
        return hidden + self.mlp(self.post_attention_layernorm(hidden))


class LlamaModel(nn.Module):
    def __init__(self, config, qkv_bias: bool):
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(LlamaDecoderLayer(config, i, qkv_bias) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class LlamaForCausalLM(CausalLM):
    # checkpoint name fragment -> (fused parameter fragment, shard id)
    stacked_params = {
        ".q_proj.": (".qkv_proj.", "q"),
        ".k_proj.": (".qkv_proj.", "k"),
        ".v_proj.": (".qkv_proj.", "v"),
        ".gate_proj.": (".gate_up_proj.", 0),
        ".up_proj.": (".gate_up_proj.", 1),
    }
    qkv_bias = False

    def __init__(self, config):
        super().__init__(config)
        self.model = LlamaModel(config, self.qkv_bias)
        attn = self.model.layers[0].self_attn
        self.rotary = RotaryEmbedding(config, attn.head_dim, self.max_position(config))
        self.tie_word_embeddings = bool(getattr(config, "tie_word_embeddings", False))
        self.lm_head = ParallelLMHead(config.hidden_size, config.vocab_size)
        if self.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @staticmethod
    def max_position(config) -> int:
        return int(getattr(config, "max_position_embeddings", 2048))

    def kv_cache_shape(self) -> tuple[int, int, int]:
        attn = self.model.layers[0].self_attn
        return len(self.model.layers), attn.num_kv_heads, attn.head_dim

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        return self.run_decoder(self.model.embed_tokens, self.model.layers, self.model.norm, input_ids, positions, ctx)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        return self.load_stacked_weights(weights, skip=("rotary_emb.inv_freq",))


class MistralForCausalLM(LlamaForCausalLM):
    pass


class Qwen2ForCausalLM(LlamaForCausalLM):
    qkv_bias = True
