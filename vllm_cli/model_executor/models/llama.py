"""The Llama family (Llama 1-3, Mistral, Qwen2, SmolLM2) for a flat batch and a paged KV cache.

Every linear runs once over the whole flat batch of tokens: q/k/v are one fused matmul and so
are gate/up. Checkpoint names (q_proj, k_proj, ...) are mapped onto the fused weights at load.
Under tensor parallelism each rank holds its heads and its share of the MLP (layers/linear.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

import torch
from torch import nn

from vllm_cli.attention.backend import ForwardContext
from vllm_cli.attention.cpu_backend import CpuDecodeMetadata
from vllm_cli.attention.layer import Attention
from vllm_cli.kernels.decode_loop import DECODE_LOOP_ENV, DecodeLoop
from vllm_cli.logger import init_logger
from vllm_cli.model_executor.layers.activation import silu_and_mul
from vllm_cli.model_executor.layers.linear import (
    MergedColumnParallelLinear,
    QKVParallelLinear,
    RowParallelLinear,
    ShardId,
    VocabParallelEmbedding,
)
from vllm_cli.model_executor.layers.norm import RMSNorm
from vllm_cli.model_executor.layers.rotary import RotaryEmbedding
from vllm_cli.model_executor.models.base import DecoderForCausalLM
from vllm_cli.model_executor.models.llama_decode_loop import build_decode_loop, run_decode_loop

logger = init_logger(__name__)


def llama_head_dim(config: Any) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


class LlamaAttention(Attention):
    def __init__(self, config: Any, layer_idx: int, qkv_bias: bool):
        num_heads = config.num_attention_heads
        num_kv_heads = getattr(config, "num_key_value_heads", None) or num_heads
        head_dim = llama_head_dim(config)
        qkv_proj = QKVParallelLinear(config.hidden_size, head_dim, num_heads, num_kv_heads, bias=qkv_bias)
        window = getattr(config, "sliding_window", None)
        super().__init__(
            layer_idx,
            qkv_proj.num_heads,
            qkv_proj.num_kv_heads,
            head_dim,
            head_dim**-0.5,
            sliding_window=window if window and getattr(config, "use_sliding_window", True) else None,
        )
        self.qkv_proj = qkv_proj
        self.o_proj = RowParallelLinear(
            num_heads * head_dim, config.hidden_size, bias=getattr(config, "attention_bias", False)
        )

    def forward(self, hidden: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        return self.o_proj(self.attend(self.qkv_proj(hidden), ctx))


class LlamaMLP(nn.Module):
    def __init__(self, config: Any):
        super().__init__()
        if getattr(config, "hidden_act", "silu") != "silu":
            raise ValueError(f"hidden_act {config.hidden_act!r} is not supported for this architecture")
        bias = getattr(config, "mlp_bias", False)
        self.gate_up_proj = MergedColumnParallelLinear(config.hidden_size, [config.intermediate_size] * 2, bias=bias)
        self.down_proj = RowParallelLinear(config.intermediate_size, config.hidden_size, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(silu_and_mul(self.gate_up_proj(x)))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config: Any, self_attn: Attention):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = self_attn
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = LlamaMLP(config)

    def forward(self, hidden: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        out, residual = self.forward_residual(hidden, None, ctx)
        return residual + out

    def forward_residual(
        self, hidden: torch.Tensor, residual: torch.Tensor | None, ctx: ForwardContext
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """vLLM's residual stream: (this layer's MLP output, the residual before adding it). Each add
        goes into the following norm (RMSNorm.add_forward: one kernel call on the CPU), so a layer
        costs no separate residual adds. residual None: hidden is the residual (the first layer)."""
        if residual is None:
            residual = hidden  # the embedding's fresh output: the norms may add into it in place
            normed = self.input_layernorm(hidden)
        else:
            normed = self.input_layernorm.add_forward(hidden, residual)
        normed = self.post_attention_layernorm.add_forward(self.self_attn(normed, ctx), residual)
        return self.mlp(normed), residual


class LlamaForCausalLM(DecoderForCausalLM):
    stacked_params: dict[str, tuple[str, ShardId]] = {
        ".q_proj.": (".qkv_proj.", "q"),
        ".k_proj.": (".qkv_proj.", "k"),
        ".v_proj.": (".qkv_proj.", "v"),
        ".gate_proj.": (".gate_up_proj.", 0),
        ".up_proj.": (".gate_up_proj.", 1),
    }
    qkv_bias = False

    def __init__(self, config: Any):
        layers = [LlamaDecoderLayer(config, self.attention(config, i)) for i in range(config.num_hidden_layers)]
        super().__init__(
            config,
            "model",
            {
                "embed_tokens": VocabParallelEmbedding(config.vocab_size, config.hidden_size),
                "layers": layers,
                "norm": RMSNorm(config.hidden_size, config.rms_norm_eps),
            },
            tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
            rotary=self.rotary_embedding(config, llama_head_dim(config), self.max_position(config)),
        )
        # the C decode loop (llama_decode_loop.py): a test or benchmark may turn it off per model
        self.use_decode_loop = True
        self._decode_loop: DecodeLoop | None = None
        self._decode_loop_key: tuple[int, int] | None = None

    def attention(self, config: Any, layer_idx: int) -> Attention:
        """Layer layer_idx's attention (Qwen3 adds q/k norms)."""
        return LlamaAttention(config, layer_idx, self.qkv_bias)

    @staticmethod
    def rotary_embedding(config: Any, head_dim: int, max_position: int) -> RotaryEmbedding:
        """The rotary embedding every layer shares (Phi-3: partial and LongRoPE)."""
        return RotaryEmbedding(config, head_dim, max_position)

    @staticmethod
    def max_position(config: Any) -> int:
        return int(getattr(config, "max_position_embeddings", 2048))

    def run_layers(self, layers: nn.ModuleList, hidden: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        meta = ctx.attn_metadata
        if type(meta) is CpuDecodeMetadata and self.use_decode_loop:
            loop = self.decode_loop(ctx.kv_caches)
            if loop is not None:  # every layer in one C call (llama_decode_loop.py)
                return run_decode_loop(loop, hidden, ctx, meta)
        residual = None
        for layer in cast("list[LlamaDecoderLayer]", layers):
            hidden, residual = layer.forward_residual(hidden, residual, ctx)
        return hidden if residual is None else residual.add_(hidden)

    def decode_loop(self, kv_caches: list[tuple[torch.Tensor, torch.Tensor]]) -> DecodeLoop | None:
        """The C decode loop for this KV pool, built at the first decode step after load (None, with
        one log line saying why, where the model keeps its torch path)."""
        key = (id(kv_caches), kv_caches[0][0].data_ptr() if kv_caches else 0)
        if self._decode_loop_key != key:
            self._decode_loop, why_not = build_decode_loop(self, kv_caches)
            self._decode_loop_key = key
            if self._decode_loop is not None:
                logger.info("Decode steps run every layer in one C call (%s=0 turns it off)", DECODE_LOOP_ENV)
            else:
                logger.info("Decode steps run layer by layer in Python: %s", why_not)
        return self._decode_loop

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        return self.load_stacked_weights(weights, skip=("rotary_emb.inv_freq",))


class MistralForCausalLM(LlamaForCausalLM):
    pass


class Qwen2ForCausalLM(LlamaForCausalLM):
    qkv_bias = True
