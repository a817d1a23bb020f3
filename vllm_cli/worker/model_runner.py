"""Turns a scheduled step into tensors, runs the model and returns the logits to sample.

Per step: flat input_ids / positions over every scheduled token, the slot of each new
token in the paged cache, and one AttentionMetadata shared by all layers. Logits are
computed only where they are used: the last token of each sequence that completes its
pending tokens this step (plus prompt positions for requests asking for prompt_logprobs).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vllm_cli.engine.sequence import Sequence
from vllm_cli.model_executor.layers.attention import SeqBatchInfo, get_attention_backend
from vllm_cli.model_executor.models.base import ForwardContext


@dataclass
class PromptLogprobChunk:
    seq: Sequence
    first_position: int  # position whose logits row is logits[0]; it predicts token first_position + 1
    logits: torch.Tensor


@dataclass
class StepLogits:
    sample_seqs: list[Sequence]  # sequences that get a new token this step
    sample_logits: torch.Tensor  # [len(sample_seqs), vocab], float32
    prompt_chunks: list[PromptLogprobChunk]


class ModelRunner:
    def __init__(self, model, device: torch.device, dtype: torch.dtype, block_size: int,
                 attention_backend: str = "auto"):
        self.model = model
        self.device = device
        self.dtype = dtype
        self.block_size = block_size
        self.backend = get_attention_backend(attention_backend, block_size, device)
        self.num_layers, self.num_kv_heads, self.head_dim = model.kv_cache_shape()
        self.kv_caches: list[tuple[torch.Tensor, torch.Tensor]] = []

    def kv_cache_bytes_per_block(self) -> int:
        element = torch.empty((), dtype=self.dtype).element_size()
        return 2 * self.num_layers * self.block_size * self.num_kv_heads * self.head_dim * element

    def allocate_kv_cache(self, num_blocks: int) -> None:
        """Uninitialized (zeroing gigabytes costs seconds at start-up) except the null block 0,
        which attention reads for padding: every other slot is written before it is read."""
        shape = (num_blocks * self.block_size, self.num_kv_heads, self.head_dim)
        self.kv_caches = []
        for _ in range(self.num_layers):
            k, v = (torch.empty(shape, dtype=self.dtype, device=self.device) for _ in range(2))
            k[: self.block_size].zero_()
            v[: self.block_size].zero_()
            self.kv_caches.append((k, v))

    @torch.inference_mode()
    def execute(self, scheduled: list[tuple[Sequence, int]]) -> StepLogits:
        bs = self.block_size
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        query_lens, context_lens, block_tables = [], [], []
        sample_rows: list[int] = []
        sample_seqs: list[Sequence] = []
        prompt_rows: list[tuple[Sequence, int, int, int]] = []  # seq, first row, count, first position
        for seq, n in scheduled:
            start = seq.num_computed_tokens
            end = start + n
            row = len(input_ids)
            input_ids.extend(seq.token_ids[start:end])
            positions.extend(range(start, end))
            table = seq.block_table
            slots.extend(table[p // bs] * bs + p % bs for p in range(start, end))
            query_lens.append(n)
            context_lens.append(end)
            block_tables.append(table)
            if end == seq.num_tokens:
                sample_rows.append(row + n - 1)
                sample_seqs.append(seq)
            prompt_logprobs = seq.request.prompt_logprobs
            if prompt_logprobs is not None and seq.index == 0:
                # Positions whose logprobs are still missing (a preempted sequence recomputes
                # its prompt, but its earlier entries stand).
                first = max(start, len(prompt_logprobs) - 1)
                count = min(end, seq.num_prompt_tokens - 1) - first
                if count > 0:
                    prompt_rows.append((seq, row + first - start, count, first))
        dev = self.device
        ids_t = torch.tensor(input_ids, dtype=torch.long, device=dev)
        pos_t = torch.tensor(positions, dtype=torch.long, device=dev)
        slot_t = torch.tensor(slots, dtype=torch.long, device=dev)
        meta = self.backend.build_metadata(SeqBatchInfo(query_lens, context_lens, block_tables), slot_t)
        ctx = ForwardContext(backend=self.backend, attn_metadata=meta, kv_caches=self.kv_caches)
        hidden = self.model(ids_t, pos_t, ctx)
        sample_logits = self.model.compute_logits(hidden[sample_rows]).float() if sample_rows else None
        chunks = [
            PromptLogprobChunk(seq, first_pos, self.model.compute_logits(hidden[row:row + count]).float())
            for seq, row, count, first_pos in prompt_rows
        ]
        return StepLogits(sample_seqs, sample_logits, chunks)
