"""The engine core: one step is schedule -> batch -> forward -> sample (vLLM v1's EngineCore).

The scheduler picks the sequences and token counts of the step; prepare_batch turns them into
the worker's StepInput (plain lists, nothing per layer); the worker runs the forward and returns
the logits of the rows that need them; the sampler picks one token for every sequence that
completes its pending tokens. What happens to the tokens (stop checks, text, outputs) is the
output processor's business.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from vllm_cli.config import EngineArgs
from vllm_cli.engine.block_manager import BlockManager
from vllm_cli.engine.sampler import Sampler, SampleResult, SamplingRow, compute_prompt_logprobs, make_generator
from vllm_cli.engine.scheduler import Scheduler
from vllm_cli.engine.sequence import Sequence
from vllm_cli.model_executor.layers.pooler import PoolingConfig, finish_embedding
from vllm_cli.outputs import PositionLogprobs
from vllm_cli.structured_output import StructuredOutputManager
from vllm_cli.worker.model_runner import StepInput
from vllm_cli.worker.worker import Worker


@dataclass
class Batch:
    """A scheduled step as the worker sees it, and which sequence each logits row belongs to."""

    step: StepInput  # logit rows: the sampled rows, then the prompt-logprobs rows
    sample_seqs: list[Sequence]  # the sequences that get a token this step, in row order
    prompt_chunks: list[tuple[Sequence, int, int]]  # (sequence, rows, first position) needing prompt logprobs
    # Pooling: (sequence, hidden rows, whether its prompt is now complete), in hidden-row order.
    pool_chunks: list[tuple[Sequence, int, bool]] = field(default_factory=list)


@dataclass
class StepOutput:
    sample_seqs: list[Sequence]
    results: list[SampleResult]  # one per sample_seqs entry
    prompt_logprobs: list[tuple[Sequence, list[PositionLogprobs]]]  # new prompt-logprob entries per sequence
    pooled: list[Sequence] = field(default_factory=list)  # pooling sequences whose embedding is ready


def prepare_batch(scheduled: list[tuple[Sequence, int]], block_size: int, pooling_type: str = "LAST") -> Batch:
    """Flatten the scheduled (sequence, new tokens) pairs into one StepInput. A pooling request's
    chunk asks for the hidden states its pooling needs (mean: every row; CLS: position 0; last: the
    prompt's last token) instead of a sampled row."""
    bs = block_size
    input_ids: list[int] = []
    positions: list[int] = []
    slots: list[int] = []
    query_lens: list[int] = []
    context_lens: list[int] = []
    block_tables: list[list[int]] = []
    sample_rows: list[int] = []
    sample_seqs: list[Sequence] = []
    prompt_rows: list[int] = []
    prompt_chunks: list[tuple[Sequence, int, int]] = []
    hidden_rows: list[int] = []
    pool_chunks: list[tuple[Sequence, int, bool]] = []
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
        if seq.request.pooling_params is not None:
            done = end == seq.num_tokens
            if pooling_type == "MEAN":
                rows = list(range(row, row + n))
            elif pooling_type == "CLS":
                rows = [row] if start == 0 else []
            else:
                rows = [row + n - 1] if done else []
            if start == 0:
                seq.pooled_hidden = None  # a recomputed (preempted) prompt pools from scratch
            hidden_rows.extend(rows)
            pool_chunks.append((seq, len(rows), done))
            continue
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
    step = StepInput(
        input_ids, positions, slots, query_lens, context_lens, block_tables, sample_rows + prompt_rows, hidden_rows
    )
    return Batch(step, sample_seqs, prompt_chunks, pool_chunks)


class EngineCore:
    """The KV-block pool, the scheduler, the worker and the sampler."""

    def __init__(
        self,
        args: EngineArgs,
        worker: Worker,
        num_blocks: int,
        max_model_len: int,
        vocab_size: int,
        eos_token_ids: set[int],
        structured_output: StructuredOutputManager,
        pooling: PoolingConfig | None = None,
    ):
        self.worker = worker
        self.pooling = pooling  # set under --runner pooling
        self.structured_output = structured_output
        self.block_size = args.block_size
        self.block_manager = BlockManager(
            num_blocks, args.block_size, args.enable_prefix_caching, args.prefix_caching_hash_algo
        )
        max_batched = args.max_num_batched_tokens or (2048 if args.enable_chunked_prefill else max(2048, max_model_len))
        if not args.enable_chunked_prefill and max_batched < max_model_len:
            raise ValueError(
                f"max_num_batched_tokens ({max_batched}) is smaller than max_model_len "
                f"({max_model_len}) and chunked prefill is off: long prompts could never run; "
                "raise --max-num-batched-tokens, lower --max-model-len or enable chunked prefill"
            )
        self.scheduler = Scheduler(self.block_manager, args.max_num_seqs, max_batched, args.enable_chunked_prefill)
        self.sampler = Sampler(vocab_size, eos_token_ids)

    def add_sequence(self, seq: Sequence) -> None:
        params = seq.request.params
        if params.seed is not None:
            # As vLLM: choice i uses seed + i, so choice 0 matches an n=1 request.
            seq.generator = make_generator(params.seed + seq.index)
        self.scheduler.add(seq)

    def step(self) -> StepOutput | None:
        """Run one scheduled step; None when nothing could be scheduled."""
        sched = self.scheduler.schedule()
        if not sched:
            return None
        batch = prepare_batch(sched.scheduled, self.block_size, self.pooling.pooling_type if self.pooling else "LAST")
        output = self.worker.execute_model(batch.step)
        logits = output.logits
        for seq, n in sched.scheduled:
            seq.num_computed_tokens += n
        pooled = self._pool(batch.pool_chunks, output.hidden) if batch.pool_chunks else []

        sample_seqs = batch.sample_seqs
        num_sampled = len(sample_seqs)
        prompt_logprobs = []
        row = num_sampled
        for seq, count, first in batch.prompt_chunks:
            assert logits is not None
            targets = seq.token_ids[first + 1 : first + 1 + count]
            entries = compute_prompt_logprobs(
                logits[row : row + count], targets, seq.request.params.prompt_logprobs or 0
            )
            prompt_logprobs.append((seq, entries))
            row += count
        results: list[SampleResult] = []
        if num_sampled:
            assert logits is not None
            rows = [
                SamplingRow(seq.request.params, seq.request.prompt_token_ids, seq.output_token_ids, seq.generator)
                for seq in sample_seqs
            ]
            sample_logits = logits[:num_sampled]
            # Structured outputs: each constrained row's forbidden tokens -> -inf before sampling (and logprobs).
            for i in self.structured_output.apply_bitmask(sample_logits, sample_seqs):
                rows[i].params = rows[i].params.clone(min_tokens=0)  # the grammar allows only its end
            results = self.sampler(sample_logits, rows)
        return StepOutput(sample_seqs, results, prompt_logprobs, pooled)

    def _pool(self, chunks: list[tuple[Sequence, int, bool]], hidden: torch.Tensor | None) -> list[Sequence]:
        """Fold each chunk's hidden rows into its sequence; finish the embeddings of complete prompts."""
        assert self.pooling is not None, "a pooling request on an engine not started with --runner pooling"
        finished = []
        row = 0
        for seq, count, done in chunks:
            if count:
                assert hidden is not None
                part = hidden[row : row + count].sum(0)
                seq.pooled_hidden = part if seq.pooled_hidden is None else seq.pooled_hidden + part
                row += count
            if done:
                pooled = seq.pooled_hidden
                if self.pooling.pooling_type == "MEAN":
                    pooled = pooled / seq.num_prompt_tokens
                params = seq.request.pooling_params
                assert params is not None
                normalize = self.pooling.normalize if params.normalize is None else params.normalize
                seq.embedding = finish_embedding(pooled, normalize, params.dimensions)
                seq.pooled_hidden = None
                finished.append(seq)
        return finished
