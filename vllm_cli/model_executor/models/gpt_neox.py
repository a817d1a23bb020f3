"""EleutherAI GPT-NeoX (gpt-neox-20b, Pythia, Dolly v2, StableLM-alpha, RedPajama-INCITE) for a
flat batch and a paged KV cache.

Partial rotary: only the first rotary_pct of each head's dims rotate (neox style). Parallel
residual (x + attn(ln1(x)) + mlp(ln2(x))) or sequential, as `use_parallel_residual` says.
The checkpoint's fused query_key_value is laid out per head, [heads, (q, k, v), head_dim];
it is reordered at load into [q; k; v] so the forward splits it like every other model.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from vllm_cli.model_executor.layers.common import get_act_fn, get_rotary_embedding, partial_rotary_dim, ungroup_qkv
from vllm_cli.model_executor.layers.linear import (
    ColumnParallelLinear,
    ParallelLMHead,
    QKVParallelLinear,
    RowParallelLinear,
    VocabParallelEmbedding,
)
from vllm_cli.model_executor.models.base import CausalLM, ForwardContext


class GPTNeoXAttention(nn.Module):
    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.hidden_size = config.hidden_size
        self.head_dim = self.hidden_size // config.num_attention_heads
        self.scale = self.head_dim**-0.5
        bias = getattr(config, "attention_bias", True)
        self.query_key_value = QKVParallelLinear(self.hidden_size, self.head_dim, config.num_attention_heads,
                                                 config.num_attention_heads, bias=bias)
        self.num_heads, self.local_size = self.query_key_value.num_heads, self.query_key_value.q_size
        self.dense = RowParallelLinear(self.hidden_size, self.hidden_size, bias=bias)

    def forward(self, hidden: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        qk, v = self.query_key_value(hidden).split([2 * self.local_size, self.local_size], dim=-1)
        qk = ctx.rotary.rotate(qk.view(-1, 2 * self.num_heads, self.head_dim), ctx.cos, ctx.sin)
        q, k = qk[:, : self.num_heads], qk[:, self.num_heads:]
        v = v.reshape(-1, self.num_heads, self.head_dim)
        k_cache, v_cache = ctx.kv_caches[self.layer_idx]
        out = ctx.backend.forward(q, k, v, k_cache, v_cache, ctx.attn_metadata, self.scale)
        return self.dense(out.view(-1, self.local_size))


class GPTNeoXLayer(nn.Module):
    def __init__(self, config, layer_idx: int):
        super().__init__()
        hidden, eps = config.hidden_size, config.layer_norm_eps
        self.use_parallel_residual = config.use_parallel_residual
        self.input_layernorm = nn.LayerNorm(hidden, eps=eps)
        self.post_attention_layernorm = nn.LayerNorm(hidden, eps=eps)
        self.attention = GPTNeoXAttention(config, layer_idx)
        self.mlp = nn.Module()
        self.mlp.dense_h_to_4h = ColumnParallelLinear(hidden, config.intermediate_size)
        self.mlp.dense_4h_to_h = RowParallelLinear(config.intermediate_size, hidden)
        self.act = get_act_fn(config.hidden_act)

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp.dense_4h_to_h(self.act(self.mlp.dense_h_to_4h(x)))

    def forward(self, hidden: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        attn = self.attention(self.input_layernorm(hidden), ctx)
        if self.use_parallel_residual:
            return self._mlp(self.post_attention_layernorm(hidden)) + attn + hidden
        hidden = attn + hidden
        return self._mlp(self.post_attention_layernorm(hidden)) + hidden


class GPTNeoXForCausalLM(CausalLM):
    def __init__(self, config):
        super().__init__(config)
        self.gpt_neox = nn.Module()
        self.gpt_neox.embed_in = VocabParallelEmbedding(config.vocab_size, config.hidden_size)
        self.gpt_neox.layers = nn.ModuleList(GPTNeoXLayer(config, i) for i in range(config.num_hidden_layers))
        self.gpt_neox.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        head_dim = self.gpt_neox.layers[0].attention.head_dim
        self.rotary = get_rotary_embedding(config, head_dim, int(config.max_position_embeddings),
                                           partial_rotary_dim(config, head_dim))
        self.tie_word_embeddings = bool(getattr(config, "tie_word_embeddings", False))
        self.lm_head = ParallelLMHead(config.hidden_size, config.vocab_size)
        if self.tie_word_embeddings:
            self.lm_head.weight = self.gpt_neox.embed_in.weight

    def kv_cache_shape(self) -> tuple[int, int, int]:
        attn = self.gpt_neox.layers[0].attention
        return len(self.gpt_neox.layers), attn.num_heads, attn.head_dim

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        return self.run_decoder(self.gpt_neox.embed_in, self.gpt_neox.layers, self.gpt_neox.final_layer_norm, input_ids, positions, ctx)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        attn = self.gpt_neox.layers[0].attention

        def renamed():
            for name, tensor in weights:
                if name.endswith((".attention.bias", ".attention.masked_bias", ".rotary_emb.inv_freq")):
                    continue  # buffers saved by old checkpoints
                if name.startswith("embed_out."):  # the hub name of the LM head
                    name = "lm_head." + name.removeprefix("embed_out.")
                if ".query_key_value." in name:
                    tensor = ungroup_qkv(tensor, attn.query_key_value.full_num_heads, attn.head_dim)
                yield name, tensor

        return self.load_stacked_weights(renamed())
