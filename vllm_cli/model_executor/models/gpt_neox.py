"""EleutherAI GPT-NeoX (gpt-neox-20b, Pythia, Dolly v2, StableLM-alpha, RedPajama-INCITE) for a
flat batch and a paged KV cache.

Partial rotary: only the first rotary_pct of each head's dims rotate (neox style). Parallel
residual (x + attn(ln1(x)) + mlp(ln2(x))) or sequential, as `use_parallel_residual` says.
The checkpoint's fused query_key_value is laid out per head, [heads, (q, k, v), head_dim];
it is reordered at load into [q; k; v] so the forward splits it like every other model.
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
from vllm_cli.model_executor.layers.rotary import get_rotary_embedding, partial_rotary_dim
from vllm_cli.model_executor.models.base import DecoderForCausalLM


class GPTNeoXAttention(Attention):
    def __init__(self, config: Any, layer_idx: int):
        hidden_size = config.hidden_size
        head_dim = hidden_size // config.num_attention_heads
        bias = getattr(config, "attention_bias", True)
        query_key_value = QKVParallelLinear(
            hidden_size, head_dim, config.num_attention_heads, config.num_attention_heads, bias=bias
        )
        super().__init__(layer_idx, query_key_value.num_heads, query_key_value.num_kv_heads, head_dim, head_dim**-0.5)
        self.query_key_value = query_key_value
        self.dense = RowParallelLinear(hidden_size, hidden_size, bias=bias)

    def forward(self, hidden: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        return self.dense(self.attend(self.query_key_value(hidden), ctx))


class GPTNeoXMLP(nn.Module):
    """The checkpoint's mlp.dense_h_to_4h / mlp.dense_4h_to_h, run inline by GPTNeoXLayer."""

    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.dense_h_to_4h = ColumnParallelLinear(hidden, intermediate)
        self.dense_4h_to_h = RowParallelLinear(intermediate, hidden)


class GPTNeoXLayer(nn.Module):
    def __init__(self, config: Any, layer_idx: int):
        super().__init__()
        hidden, eps = config.hidden_size, config.layer_norm_eps
        self.use_parallel_residual = config.use_parallel_residual
        self.input_layernorm = nn.LayerNorm(hidden, eps=eps)
        self.post_attention_layernorm = nn.LayerNorm(hidden, eps=eps)
        self.attention = GPTNeoXAttention(config, layer_idx)
        self.mlp = GPTNeoXMLP(hidden, config.intermediate_size)
        self.act = get_act_fn(config.hidden_act)

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp.dense_4h_to_h(self.act(self.mlp.dense_h_to_4h(x)))

    def forward(self, hidden: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        attn = self.attention(self.input_layernorm(hidden), ctx)
        if self.use_parallel_residual:
            return self._mlp(self.post_attention_layernorm(hidden)) + attn + hidden
        hidden = attn + hidden
        return self._mlp(self.post_attention_layernorm(hidden)) + hidden


class GPTNeoXForCausalLM(DecoderForCausalLM):
    accepts_quantized_weights = False  # load_weights transposes / regroups tensors

    def __init__(self, config: Any):
        head_dim = config.hidden_size // config.num_attention_heads
        super().__init__(
            config,
            "gpt_neox",
            {
                "embed_in": VocabParallelEmbedding(config.vocab_size, config.hidden_size),
                "layers": [GPTNeoXLayer(config, i) for i in range(config.num_hidden_layers)],
                "final_layer_norm": nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps),
            },
            tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
            rotary=get_rotary_embedding(
                config, head_dim, int(config.max_position_embeddings), partial_rotary_dim(config, head_dim)
            ),
        )

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        num_heads = self.config.num_attention_heads
        head_dim = self.config.hidden_size // num_heads

        def renamed() -> Iterator[tuple[str, torch.Tensor]]:
            for name, tensor in weights:
                if name.endswith((".attention.bias", ".attention.masked_bias", ".rotary_emb.inv_freq")):
                    continue  # buffers saved by old checkpoints
                if name.startswith("embed_out."):  # the hub name of the LM head
                    name = "lm_head." + name.removeprefix("embed_out.")
                if ".query_key_value." in name:
                    tensor = ungroup_qkv(tensor, num_heads, head_dim)
                yield name, tensor

        return self.load_stacked_weights(renamed())
