"""One step's batch -> tensors -> the model -> the logits to sample.

The batch comes as plain lists (StepInput, built by the engine from its scheduled sequences):
flat input_ids / positions over every scheduled token, the slot of each new token in the paged
cache, each sequence's query and context length and block table, and the rows whose logits are
wanted. One AttentionMetadata per step serves every layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from vllm_cli.attention.backend import ForwardContext, SeqBatchInfo
from vllm_cli.attention.selector import get_attention_backend
from vllm_cli.model_executor.models.base import CausalLM


@dataclass
class StepInput:
    """One step's batch as plain lists: what the driver sends every tensor-parallel worker."""

    input_ids: list[int]
    positions: list[int]
    slots: list[int]  # the paged-cache slot of each new token
    query_lens: list[int]
    context_lens: list[int]
    block_tables: list[list[int]]
    logit_rows: list[int]  # rows of the flat batch whose logits are computed
    hidden_rows: list[int] = field(default_factory=list)  # rows whose final hidden states are returned (pooling)


@dataclass
class ModelOutput:
    logits: torch.Tensor | None  # float32 logits of StepInput.logit_rows; None when there are none
    hidden: torch.Tensor | None  # float32 final hidden states (before the LM head) of StepInput.hidden_rows


def allocate_kv_pool(
    num_layers: int, num_slots: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype, device: torch.device
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, K and V caches [num_slots, num_kv_heads, head_dim], zero-filled. Zeroing writes every
    page, so the whole pool is committed (resident) now: a budget the machine cannot hold fails at
    start-up, not mid-traffic, and the process's RSS does not climb as traffic first touches each
    block. The null block 0 (read for padded key positions) is zero with the rest."""
    shape = (num_slots, num_kv_heads, head_dim)
    caches = []
    for _ in range(num_layers):
        k, v = torch.empty(shape, dtype=dtype, device=device), torch.empty(shape, dtype=dtype, device=device)
        k.zero_()
        v.zero_()
        caches.append((k, v))
    return caches


class ModelRunner:
    def __init__(
        self,
        model: CausalLM,
        device: torch.device,
        dtype: torch.dtype,
        block_size: int,
        attention_backend: str = "auto",
    ):
        self.model = model
        self.device = device
        self.dtype = dtype
        self.block_size = block_size
        self.backend = get_attention_backend(attention_backend, block_size, device, dtype)
        self.num_layers, self.num_kv_heads, self.head_dim = model.kv_cache_shape()
        self.kv_caches: list[tuple[torch.Tensor, torch.Tensor]] = []

    def set_max_model_len(self, max_model_len: int) -> None:
        set_max_model_len = getattr(self.model, "set_max_model_len", None)
        if set_max_model_len is not None:  # e.g. Phi-3 LongRoPE picks its factors from it
            set_max_model_len(max_model_len)

    def kv_cache_bytes_per_block(self) -> int:
        """Bytes of one block on this rank (under tensor parallelism, of this rank's KV heads)."""
        element = torch.empty((), dtype=self.dtype).element_size()
        return 2 * self.num_layers * self.block_size * self.num_kv_heads * self.head_dim * element

    def allocate_kv_cache(self, num_blocks: int) -> None:
        self.kv_caches = allocate_kv_pool(
            self.num_layers, num_blocks * self.block_size, self.num_kv_heads, self.head_dim, self.dtype, self.device
        )

    @torch.inference_mode()
    def execute(self, step: StepInput) -> ModelOutput:
        """Forward one step; float32 logits of step.logit_rows and hidden states of step.hidden_rows."""
        # One host tensor (and one copy to the device) for the ids, positions and slots.
        ids_t, pos_t, slot_t = torch.tensor([step.input_ids, step.positions, step.slots], dtype=torch.long).to(
            self.device, non_blocking=True
        )
        info = SeqBatchInfo(step.query_lens, step.context_lens, step.block_tables)
        meta = self.backend.build_metadata(info, slot_t)
        ctx = ForwardContext(backend=self.backend, attn_metadata=meta, kv_caches=self.kv_caches)
        hidden = self.model(ids_t, pos_t, ctx)
        rows = step.logit_rows
        logits = None
        if rows:
            sampled = hidden
            if len(rows) != len(step.input_ids) or rows != list(range(len(rows))):  # a decode step samples every row
                sampled = hidden[rows]
            logits = self.model.compute_logits(sampled).float()
        return ModelOutput(logits, hidden[step.hidden_rows].float() if step.hidden_rows else None)
