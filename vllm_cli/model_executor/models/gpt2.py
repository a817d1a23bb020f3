"""OpenAI GPT-2 (gpt2, gpt2-medium/large/xl, distilgpt2, many fine-tunes) for a flat batch and a
paged KV cache.

Learned absolute position embeddings (wpe) added to the token embeddings, pre-LayerNorm
blocks, a GELU (tanh) MLP, LM head tied to wte. Checkpoints store every projection as a
Conv1D, weight [in, out]: transposed once at load into nn.Linear's [out, in]. Hub checkpoints
name tensors without the `transformer.` prefix and carry the causal-mask buffers `attn.bias`;
both are handled.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from vllm_cli.model_executor.layers.common import get_act_fn
from vllm_cli.model_executor.layers.linear import (
    ColumnParallelLinear,
    ParallelLMHead,
    QKVParallelLinear,
    RowParallelLinear,
    VocabParallelEmbedding,
)
from vllm_cli.model_executor.models.base import CausalLM, ForwardContext

_CONV1D = (".c_attn.weight", ".c_proj.weight", ".c_fc.weight")


class GPT2Attention(nn.Module):
    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.hidden_size = config.hidden_size
        self.head_dim = self.hidden_size // config.num_attention_heads
        self.scale = self.head_dim**-0.5 if getattr(config, "scale_attn_weights", True) else 1.0
        if getattr(config, "scale_attn_by_inverse_layer_idx", False):
            self.scale /= float(layer_idx + 1)
        self.c_attn = QKVParallelLinear(self.hidden_size, self.head_dim, config.num_attention_heads,
                                        config.num_attention_heads)
        self.num_heads, self.local_size = self.c_attn.num_heads, self.c_attn.q_size  # this rank's heads
        self.c_proj = RowParallelLinear(self.hidden_size, self.hidden_size)

    def forward(self, hidden: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        shape = (-1, self.num_heads, self.head_dim)
        q, k, v = (t.reshape(shape) for t in self.c_attn(hidden).split(self.local_size, dim=-1))
        k_cache, v_cache = ctx.kv_caches[self.layer_idx]
        out = ctx.backend.forward(q, k, v, k_cache, v_cache, ctx.attn_metadata, self.scale)
        return self.c_proj(out.view(-1, self.local_size))


class GPT2Block(nn.Module):
    def __init__(self, config, layer_idx: int):
        super().__init__()
        hidden, eps = config.hidden_size, config.layer_norm_epsilon
        inner = getattr(config, "n_inner", None) or 4 * hidden
        self.ln_1 = nn.LayerNorm(hidden, eps=eps)
        self.attn = GPT2Attention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(hidden, eps=eps)
        self.mlp = nn.Module()
        self.mlp.c_fc = ColumnParallelLinear(hidden, inner)
        self.mlp.c_proj = RowParallelLinear(inner, hidden)
        self.act = get_act_fn(config.activation_function)

    def forward(self, hidden: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        hidden = hidden + self.attn(self.ln_1(hidden), ctx)
        return hidden + self.mlp.c_proj(self.act(self.mlp.c_fc(self.ln_2(hidden))))


class GPT2LMHeadModel(CausalLM):
    def __init__(self, config):
        super().__init__(config)
        if getattr(config, "add_cross_attention", False):
            raise ValueError("GPT-2 with cross-attention (an encoder-decoder) is not supported")
        self.transformer = nn.Module()
        self.transformer.wte = VocabParallelEmbedding(config.vocab_size, config.hidden_size)
        self.transformer.wpe = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.transformer.h = nn.ModuleList(GPT2Block(config, i) for i in range(config.num_hidden_layers))
        self.transformer.ln_f = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self.tie_word_embeddings = bool(getattr(config, "tie_word_embeddings", True))
        self.lm_head = ParallelLMHead(config.hidden_size, config.vocab_size)
        if self.tie_word_embeddings:
            self.lm_head.weight = self.transformer.wte.weight

    def kv_cache_shape(self) -> tuple[int, int, int]:
        attn = self.transformer.h[0].attn
        return len(self.transformer.h), attn.num_heads, attn.head_dim

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        hidden = self.transformer.wte(input_ids) + self.transformer.wpe(positions)
        for block in self.transformer.h:
            hidden = block(hidden, ctx)
        return self.transformer.ln_f(hidden)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        def renamed():
            for name, tensor in weights:
                if name.endswith((".attn.bias", ".attn.masked_bias")):
                    continue  # causal-mask buffers of old checkpoints
                if not name.startswith(("transformer.", "lm_head.")):
                    name = "transformer." + name
                yield name, (tensor.t() if name.endswith(_CONV1D) else tensor)

        return self.load_stacked_weights(renamed())
