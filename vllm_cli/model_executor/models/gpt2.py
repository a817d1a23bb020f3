"""OpenAI GPT-2 (gpt2, gpt2-medium/large/xl, distilgpt2, many fine-tunes) for a flat batch and a
paged KV cache.

Learned absolute position embeddings (wpe) added to the token embeddings, pre-LayerNorm
blocks, a GELU (tanh) MLP, LM head tied to wte. Checkpoints store every projection as a
Conv1D, weight [in, out]: transposed once at load into nn.Linear's [out, in]. Hub checkpoints
name tensors without the `transformer.` prefix and carry the causal-mask buffers `attn.bias`;
both are handled.
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
)
from vllm_cli.model_executor.models.base import DecoderForCausalLM

_CONV1D = (".c_attn.weight", ".c_proj.weight", ".c_fc.weight")


class GPT2Attention(Attention):
    def __init__(self, config: Any, layer_idx: int):
        hidden_size = config.hidden_size
        head_dim = hidden_size // config.num_attention_heads
        scale = head_dim**-0.5 if getattr(config, "scale_attn_weights", True) else 1.0
        if getattr(config, "scale_attn_by_inverse_layer_idx", False):
            scale /= float(layer_idx + 1)
        c_attn = QKVParallelLinear(hidden_size, head_dim, config.num_attention_heads, config.num_attention_heads)
        super().__init__(layer_idx, c_attn.num_heads, c_attn.num_kv_heads, head_dim, scale)
        self.c_attn = c_attn
        self.c_proj = RowParallelLinear(hidden_size, hidden_size)

    def forward(self, hidden: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        return self.c_proj(self.attend(self.c_attn(hidden), ctx))


class GPT2MLP(nn.Module):
    """The checkpoint's mlp.c_fc / mlp.c_proj, run inline by GPT2Block (no module call per layer)."""

    def __init__(self, hidden: int, inner: int):
        super().__init__()
        self.c_fc = ColumnParallelLinear(hidden, inner)
        self.c_proj = RowParallelLinear(inner, hidden)


class GPT2Block(nn.Module):
    def __init__(self, config: Any, layer_idx: int):
        super().__init__()
        hidden, eps = config.hidden_size, config.layer_norm_epsilon
        inner = getattr(config, "n_inner", None) or 4 * hidden
        self.ln_1 = nn.LayerNorm(hidden, eps=eps)
        self.attn = GPT2Attention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(hidden, eps=eps)
        self.mlp = GPT2MLP(hidden, inner)
        self.act = get_act_fn(config.activation_function)

    def forward(self, hidden: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        hidden = hidden + self.attn(self.ln_1(hidden), ctx)
        return hidden + self.mlp.c_proj(self.act(self.mlp.c_fc(self.ln_2(hidden))))


class GPT2LMHeadModel(DecoderForCausalLM):
    accepts_quantized_weights = False  # load_weights transposes / regroups tensors

    def __init__(self, config: Any):
        if getattr(config, "add_cross_attention", False):
            raise ValueError("GPT-2 with cross-attention (an encoder-decoder) is not supported")
        super().__init__(
            config,
            "transformer",
            {
                "wte": VocabParallelEmbedding(config.vocab_size, config.hidden_size),
                "wpe": nn.Embedding(config.max_position_embeddings, config.hidden_size),
                "h": [GPT2Block(config, i) for i in range(config.num_hidden_layers)],
                "ln_f": nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon),
            },
            tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", True)),
        )

    def embed(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.embedding(input_ids) + self.get_submodule("transformer.wpe")(positions)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        def renamed() -> Iterator[tuple[str, torch.Tensor]]:
            for name, tensor in weights:
                if name.endswith((".attn.bias", ".attn.masked_bias")):
                    continue  # causal-mask buffers of old checkpoints
                if not name.startswith(("transformer.", "lm_head.")):
                    name = "transformer." + name
                yield name, (tensor.t() if name.endswith(_CONV1D) else tensor)

        return self.load_stacked_weights(renamed())
