"""What every attention backend implements, and what a step hands the model's layers.

The KV cache of one layer is a pair of tensors shaped [num_blocks * block_size, num_kv_heads,
head_dim] ("slots"). A token's KV lives at slot = block_table[pos // block_size] * block_size +
pos % block_size. Each step the model runner builds one metadata object for the flat batch
(`AttentionBackend.build_metadata`); every layer then (1) writes the step's new K/V into the
cache by slot_mapping and (2) attends over each sequence's whole context read back through its
block table (`AttentionBackend.forward`). Writing before reading lets a sequence read blocks
another sequence computes in the same step (prefix sharing).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch

if TYPE_CHECKING:  # annotations only: the rotary layer is the model's, not attention's
    from vllm_cli.model_executor.layers.rotary import RotaryEmbedding


@dataclass
class SeqBatchInfo:
    """What the model runner knows about each scheduled sequence in a step (plain Python)."""

    query_lens: list[int]  # tokens computed this step, per sequence (flat batch order)
    context_lens: list[int]  # tokens in the cache after this step (computed before + query)
    block_tables: list[list[int]]


class AttentionBackend(Protocol):
    """Paged attention over a flat batch: build_metadata once per step, forward once per layer."""

    name: str
    block_size: int

    def build_metadata(self, info: SeqBatchInfo, slot_mapping: torch.Tensor) -> Any:
        """The step's batch as the tensors forward needs (slot_mapping: [T] cache slot of each new token)."""
        ...

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        meta: Any,
        scale: float,
        alibi_slopes: torch.Tensor | None = None,
        sliding_window: int | None = None,
    ) -> torch.Tensor:
        """Write k/v [T, KVH, D] into the caches [num_slots, KVH, D] at meta's slots, then attend
        q [T, H, D] over each sequence's context. Returns [T, H, D]."""
        ...


@dataclass
class ForwardContext:
    """Per-step state every attention layer reads: the backend, its metadata for this step, the
    KV caches of all layers, and the position encoding the model looked up once for the step
    (rotary cos/sin, or ALiBi slopes: one tensor for every layer, so a backend can cache the
    bias mask it builds from them)."""

    backend: AttentionBackend
    attn_metadata: Any
    kv_caches: list[tuple[torch.Tensor, torch.Tensor]]
    rotary: RotaryEmbedding | None = None
    cos: torch.Tensor | None = None
    sin: torch.Tensor | None = None
    alibi_slopes: torch.Tensor | None = None
