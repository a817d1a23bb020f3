"""Turns a scheduled step into tensors, runs the model and returns the logits to sample.

Per step: flat input_ids / positions over every scheduled token, the slot of each new
token in the paged cache, and one AttentionMetadata shared by all layers. Logits are
computed only where they are used: the last token of each sequence that completes its
pending tokens this step (plus prompt positions for requests asking for prompt_logprobs).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vllm_cli.attention.backend import ForwardContext, SeqBatchInfo
from vllm_cli.attention.selector import get_attention_backend
from vllm_cli.engine.sequence import Sequence


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


def create_model_runner(args, device: torch.device, source=None, hf_config=None) -> "ModelRunner":
    """Load the model (this rank's shard under tensor parallelism) and its runner: the driver
    and every worker build theirs the same way from the same EngineArgs."""
    from vllm_cli.model_executor.loader import load_model, resolve_dtype
    from vllm_cli.model_executor.model_source import load_hf_config, resolve_model_source

    source = source or resolve_model_source(args.model, args.revision)
    hf_config = hf_config or load_hf_config(source, trust_remote_code=args.trust_remote_code)
    dtype = resolve_dtype(args.dtype, hf_config, device)
    model = load_model(source, hf_config, dtype=dtype, device=device, load_format=args.load_format,
                       seed=args.seed or 0, model_impl=args.model_impl)
    return ModelRunner(model, device, dtype, args.block_size, args.attention_backend)


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
        self.tp_group = None  # tensor parallelism: the workers each StepInput is sent to

    def set_max_model_len(self, max_model_len: int) -> None:
        set_max_model_len = getattr(self.model, "set_max_model_len", None)
        if set_max_model_len is not None:  # e.g. Phi-3 LongRoPE picks its factors from it
            set_max_model_len(max_model_len)

    def kv_cache_bytes_per_block(self) -> int:
        """Bytes of one block on this rank (under tensor parallelism, of this rank's KV heads)."""
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
        """The driver's step: describe the batch, run it (on every rank, under tensor
        parallelism: the description goes to the workers first), split the logits."""
        step, sample_seqs, prompt_rows = self.prepare(scheduled)
        if self.tp_group is None:
            logits = self.run(step)
        else:
            self.tp_group.broadcast(step)
            try:
                logits = self.run(step)
            except Exception as e:  # a collective with a dead peer, or a failure on this rank
                raise self.tp_group.step_failed(e) from e
        num_sampled = len(sample_seqs)
        sample_logits = logits[:num_sampled] if num_sampled else None
        chunks, row = [], num_sampled
        for seq, count, first_pos in prompt_rows:
            chunks.append(PromptLogprobChunk(seq, first_pos, logits[row:row + count]))
            row += count
        return StepLogits(sample_seqs, sample_logits, chunks)

    def prepare(self, scheduled: list[tuple[Sequence, int]]):
        """(StepInput, the sequences sampled this step, (seq, rows, first position) of each
        prompt-logprobs chunk); the StepInput's logit rows are the sampled rows, then the chunks'."""
        bs = self.block_size
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        query_lens, context_lens, block_tables = [], [], []
        sample_rows: list[int] = []
        sample_seqs: list[Sequence] = []
        prompt_rows: list[int] = []
        prompt_chunks: list[tuple[Sequence, int, int]] = []  # seq, count, first position
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
                    prompt_rows.extend(range(row + first - start, row + first - start + count))
                    prompt_chunks.append((seq, count, first))
        step = StepInput(input_ids, positions, slots, query_lens, context_lens, block_tables,
                         sample_rows + prompt_rows)
        return step, sample_seqs, prompt_chunks

    @torch.inference_mode()
    def run(self, step: StepInput) -> torch.Tensor | None:
        """Forward one step; float32 logits of step.logit_rows (None when there are none)."""
        dev = self.device
        ids_t = torch.tensor(step.input_ids, dtype=torch.long, device=dev)
        pos_t = torch.tensor(step.positions, dtype=torch.long, device=dev)
        slot_t = torch.tensor(step.slots, dtype=torch.long, device=dev)
        info = SeqBatchInfo(step.query_lens, step.context_lens, step.block_tables)
        meta = self.backend.build_metadata(info, slot_t)
        ctx = ForwardContext(backend=self.backend, attn_metadata=meta, kv_caches=self.kv_caches)
        hidden = self.model(ids_t, pos_t, ctx)
        if not step.logit_rows:
            return None
        return self.model.compute_logits(hidden[step.logit_rows]).float()
