"""Microsoft Phi-3 / Phi-3.5 / Phi-4-mini (Phi3ForCausalLM) for a flat batch and a paged KV cache.

The Llama block, with the checkpoint's own fused qkv_proj and gate_up_proj (the layout our
Llama already uses, so they load as they are), a sliding window on every layer when the
config sets one, partial rotary (`partial_rotary_factor`) and LongRoPE scaling: long factors
when max_model_len exceeds `original_max_position_embeddings` (vLLM's rule), short ones otherwise.
"""

from __future__ import annotations

from typing import Any

from vllm_cli.model_executor.layers.rotary import (
    LongRopeRotaryEmbedding,
    RotaryEmbedding,
    get_rotary_embedding,
    partial_rotary_dim,
)
from vllm_cli.model_executor.models.llama import LlamaForCausalLM


class Phi3ForCausalLM(LlamaForCausalLM):
    @staticmethod
    def rotary_embedding(config: Any, head_dim: int, max_position: int) -> RotaryEmbedding:
        return get_rotary_embedding(config, head_dim, max_position, partial_rotary_dim(config, head_dim))

    def set_max_model_len(self, max_model_len: int) -> None:
        """LongRoPE picks its factors by the longest sequence the engine admits (a no-op otherwise)."""
        if isinstance(self.rotary, LongRopeRotaryEmbedding):
            self.rotary.set_max_model_len(max_model_len)
