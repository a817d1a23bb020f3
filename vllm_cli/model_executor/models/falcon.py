"""TII Falcon (falcon-7b/40b/180b and their -instruct, falcon-11B) for a flat batch and a paged KV cache.

Three layouts of one fused query_key_value, all grouped per KV head as [kv, (q heads, k, v),
head_dim] and reordered at load into [q; k; v]: multi-query (7b: one KV head), the new decoder
architecture (40b/180b: `num_kv_heads` groups, GQA) and plain multi-head. Parallel attention
(x + attn(ln(x)) + mlp(ln(x)), with one shared LayerNorm or separate ln_attn/ln_mlp) or
sequential. Rotary positions only: the ALiBi variant (falcon-rw) is refused.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from vllm_cli.model_executor.layers.common import get_act_fn, get_rotary_embedding, ungroup_qkv
from vllm_cli.model_executor.layers.linear import (
    ColumnParallelLinear,
    ParallelLMHead,
    QKVParallelLinear,
    RowParallelLinear,
    VocabParallelEmbedding,
)
from vllm_cli.model_executor.models.base import CausalLM, ForwardContext


class FalconAttention(nn.Module):
    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.hidden_size = config.hidden_size
        num_heads = config.num_attention_heads
        self.head_dim = self.hidden_size // num_heads
        if config.new_decoder_architecture:
            num_kv_heads = config.num_kv_heads
        else:
            num_kv_heads = 1 if config.multi_query else num_heads
        self.scale = self.head_dim**-0.5
        self.query_key_value = QKVParallelLinear(self.hidden_size, self.head_dim, num_heads, num_kv_heads,
                                                 bias=config.bias)
        qkv = self.query_key_value  # this rank's heads
        self.num_heads, self.num_kv_heads = qkv.num_heads, qkv.num_kv_heads
        self.q_size, self.kv_size = qkv.q_size, qkv.kv_size
        self.dense = RowParallelLinear(self.hidden_size, self.hidden_size, bias=config.bias)

    def forward(self, hidden: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        qk, v = self.query_key_value(hidden).split([self.q_size + self.kv_size, self.kv_size], dim=-1)
        qk = ctx.rotary.rotate(qk.view(-1, self.num_heads + self.num_kv_heads, self.head_dim), ctx.cos, ctx.sin)
        q, k = qk[:, : self.num_heads], qk[:, self.num_heads:]
        v = v.reshape(-1, self.num_kv_heads, self.head_dim)
        k_cache, v_cache = ctx.kv_caches[self.layer_idx]
        out = ctx.backend.forward(q, k, v, k_cache, v_cache, ctx.attn_metadata, self.scale)
        return self.dense(out.view(-1, self.q_size))


class FalconDecoderLayer(nn.Module):
    def __init__(self, config, layer_idx: int):
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
        self.mlp = nn.Module()
        self.mlp.dense_h_to_4h = ColumnParallelLinear(hidden, config.ffn_hidden_size, bias=config.bias)
        self.mlp.dense_4h_to_h = RowParallelLinear(config.ffn_hidden_size, hidden, bias=config.bias)
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


class FalconForCausalLM(CausalLM):
    def __init__(self, config):
        super().__init__(config)
        if getattr(config, "alibi", False):
            raise ValueError("Falcon with ALiBi (falcon-rw-1b/7b) is not supported; only rotary Falcon models are")
        self.transformer = nn.Module()
        self.transformer.word_embeddings = VocabParallelEmbedding(config.vocab_size, config.hidden_size)
        self.transformer.h = nn.ModuleList(FalconDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.transformer.ln_f = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        attn = self.transformer.h[0].self_attention
        self.rotary = get_rotary_embedding(config, attn.head_dim, int(config.max_position_embeddings))
        self.tie_word_embeddings = bool(getattr(config, "tie_word_embeddings", True))
        self.lm_head = ParallelLMHead(config.hidden_size, config.vocab_size)
        if self.tie_word_embeddings:
            self.lm_head.weight = self.transformer.word_embeddings.weight

    def kv_cache_shape(self) -> tuple[int, int, int]:
        attn = self.transformer.h[0].self_attention
        return len(self.transformer.h), attn.num_kv_heads, attn.head_dim

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        return self.run_decoder(self.transformer.word_embeddings, self.transformer.h, self.transformer.ln_f, input_ids, positions, ctx)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        attn = self.transformer.h[0].self_attention

        def renamed():
            for name, tensor in weights:
                if ".query_key_value." in name:
                    tensor = ungroup_qkv(tensor, attn.query_key_value.full_num_kv_heads, attn.head_dim)
                yield name, tensor

        return self.load_stacked_weights(renamed(), skip=("rotary_emb.inv_freq",))
