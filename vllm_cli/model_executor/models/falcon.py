"""TII Falcon (falcon-7b/40b/180b and their -instruct, falcon-11B) for a flat batch and a paged KV cache.

Three layouts of one fused query_key_value, all grouped per KV head as [kv, (q heads, k, v),
head_dim] and reordered at load into [q; k; v]: multi-query (7b: one KV head), the new decoder
architecture (40b/180b: `num_kv_heads` groups, GQA) and plain multi-head. Parallel attention
(x + attn(ln(x)) + mlp(ln(x)), with one shared LayerNorm or separate ln_attn/ln_mlp) or
sequential. Rotary positions only: the ALiBi variant (falcon-rw) is refused.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from vllm_cli.attention.backend import ForwardContext
from vllm_cli.attention.layer import Attention
from vllm_cli.model_executor.layers.activation import get_act_fn
from vllm_cli.model_executor.layers.linear import (
    ColumnParallelLinear,
    QKVParallelLinear,
    RowParallelLinear,
    VocabParallelEmbedding,
    ungroup_qkv,
)
from vllm_cli.model_executor.layers.rotary import get_rotary_embedding
from vllm_cli.model_executor.models.base import DecoderForCausalLM


def _num_kv_heads(config: Any) -> int:
    """Multi-query (falcon-7b: one KV head), grouped (the new decoder architecture) or multi-head."""
    if config.new_decoder_architecture:
        return config.num_kv_heads
    return 1 if config.multi_query else config.num_attention_heads


class FalconAttention(Attention):
    def __init__(self, config: Any, layer_idx: int):
        hidden_size = config.hidden_size
        num_heads = config.num_attention_heads
        head_dim = hidden_size // num_heads
        query_key_value = QKVParallelLinear(hidden_size, head_dim, num_heads, _num_kv_heads(config), bias=config.bias)
        super().__init__(layer_idx, query_key_value.num_heads, query_key_value.num_kv_heads, head_dim, head_dim**-0.5)
        self.query_key_value = query_key_value
        self.dense = RowParallelLinear(hidden_size, hidden_size, bias=config.bias)

    def forward(self, hidden: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        return self.dense(self.attend(self.query_key_value(hidden), ctx))


class FalconMLP(nn.Module):
    """The checkpoint's mlp.dense_h_to_4h / mlp.dense_4h_to_h, run inline by FalconDecoderLayer (no
    module call per layer)."""

    def __init__(self, hidden: int, ffn_hidden: int, bias: bool):
        super().__init__()
        self.dense_h_to_4h = ColumnParallelLinear(hidden, ffn_hidden, bias=bias)
        self.dense_4h_to_h = RowParallelLinear(ffn_hidden, hidden, bias=bias)


class FalconDecoderLayer(nn.Module):
    def __init__(self, config: Any, layer_idx: int):
        super().__init__()
        hidden, eps = config.hidden_size, config.layer_norm_epsilon
        self.parallel = bool(config.new_decoder_architecture or config.parallel_attn)
        # Separate ln_attn/ln_mlp: the new architecture's default (falcon-11B sets one).
        num_ln = getattr(config, "num_ln_in_parallel_attn", None) or 2
        self.two_norms = bool(config.new_decoder_architecture and num_ln == 2)
        if self.two_norms:
            self.ln_attn = nn.LayerNorm(hidden, eps=eps)
            self.ln_mlp = nn.LayerNorm(hidden, eps=eps)
        else:
            self.input_layernorm = nn.LayerNorm(hidden, eps=eps)
            if not self.parallel:
                self.post_attention_layernorm = nn.LayerNorm(hidden, eps=eps)
        self.self_attention = FalconAttention(config, layer_idx)
        self.mlp = FalconMLP(hidden, config.ffn_hidden_size, config.bias)
        self.act = get_act_fn(config.activation)

    def forward(self, hidden: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        if self.two_norms:
            attn_in, mlp_in = self.ln_attn(hidden), self.ln_mlp(hidden)
        else:
            attn_in = mlp_in = self.input_layernorm(hidden)
        attn = self.self_attention(attn_in, ctx)
        if not self.parallel:
            hidden = attn + hidden
            mlp_in = self.post_attention_layernorm(hidden)
        mlp = self.mlp.dense_4h_to_h(self.act(self.mlp.dense_h_to_4h(mlp_in)))
        return (mlp + attn if self.parallel else mlp) + hidden


class FalconForCausalLM(DecoderForCausalLM):
    accepts_quantized_weights = False  # load_weights transposes / regroups tensors

    def __init__(self, config: Any):
        if getattr(config, "alibi", False):
            raise ValueError("Falcon with ALiBi (falcon-rw-1b/7b) is not supported; only rotary Falcon models are")
        head_dim = config.hidden_size // config.num_attention_heads
        super().__init__(
            config,
            "transformer",
            {
                "word_embeddings": VocabParallelEmbedding(config.vocab_size, config.hidden_size),
                "h": [FalconDecoderLayer(config, i) for i in range(config.num_hidden_layers)],
                "ln_f": nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon),
            },
            tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", True)),
            rotary=get_rotary_embedding(config, head_dim, int(config.max_position_embeddings)),
        )

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        num_kv_heads = _num_kv_heads(self.config)
        head_dim = self.config.hidden_size // self.config.num_attention_heads

        def renamed() -> Iterator[tuple[str, torch.Tensor]]:
            for name, tensor in weights:
                if ".query_key_value." in name:
                    tensor = ungroup_qkv(tensor, num_kv_heads, head_dim)
                yield name, tensor

        return self.load_stacked_weights(renamed(), skip=("rotary_emb.inv_freq",))
