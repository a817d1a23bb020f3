"""Continuous batching: which sequences run this step, and how many tokens each.

Every sequence carries num_computed_tokens (K/V already cached) and num_tokens; a step gives
each scheduled sequence some of the difference, all under one token budget. Decodes (one
token) and prefills, whole or in chunks, share a step. Running sequences are served first,
in admission order; when the pool runs dry the most recently admitted one is preempted
(blocks freed, recomputed later from the front of the queue, so nothing starves).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from vllm_cli.engine.block_manager import BlockManager
from vllm_cli.engine.sequence import Sequence, SequenceStatus


@dataclass
class SchedulerOutput:
    scheduled: list[tuple[Sequence, int]] = field(default_factory=list)  # (sequence, tokens this step)
    preempted: list[Sequence] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.scheduled)


class Scheduler:
    def __init__(
        self,
        block_manager: BlockManager,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        enable_chunked_prefill: bool = True,
    ):
        self.block_manager = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.enable_chunked_prefill = enable_chunked_prefill
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.max_num_batched_tokens
        scheduled_running: list[Sequence] = []
        queue = list(self.running)
        while queue and budget > 0:
            seq = queue.pop(0)
            num_new = min(seq.num_tokens - seq.num_computed_tokens, budget)
            if num_new < seq.num_tokens - seq.num_computed_tokens and not self.enable_chunked_prefill:
                queue.insert(0, seq)  # a prefill that does not fit waits for the next step
                break
            preempted_itself = False
            while not self.block_manager.allocate(seq, num_new):
                if not queue:  # nothing left to preempt but this sequence itself
                    self._preempt(seq, out)
                    preempted_itself = True
                    break
                self._preempt(queue.pop(), out)
            if preempted_itself:
                break
            out.scheduled.append((seq, num_new))
            scheduled_running.append(seq)
            budget -= num_new
        # Sequences not reached this step keep their place.
        self.running = scheduled_running + queue

        # Admit waiting sequences only when nothing was preempted (the pool is not short).
        while self.waiting and not out.preempted and budget > 0 and len(self.running) < self.max_num_seqs:
            ready = self._first_ready_waiting()
            if ready is None:
                break
            seq = ready
            cached = self.block_manager.find_cached_prefix(seq) if not seq.block_table else None
            start = cached.num_tokens(self.block_manager.block_size) if cached else seq.num_computed_tokens
            remaining = seq.num_tokens - start
            num_new = min(remaining, budget)
            if num_new < remaining and not self.enable_chunked_prefill:
                break
            if not self.block_manager.allocate(seq, num_new, cached):
                break
            if seq is self.waiting[0]:
                self.waiting.popleft()
            else:
                self.waiting.remove(seq)
            if seq.num_preemptions == 0 and seq.num_output_tokens == 0:
                seq.num_cached_tokens = seq.num_computed_tokens
                self.block_manager.prefix_queries += seq.num_prompt_tokens
                self.block_manager.prefix_hits += seq.num_computed_tokens
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            out.scheduled.append((seq, num_new))
            budget -= num_new
        return out

    def _first_ready_waiting(self) -> Sequence | None:
        """The first waiting sequence that may run: one whose grammar is still compiling is
        skipped (it keeps its place; structured outputs)."""
        for seq in self.waiting:
            if seq.structured_output is None or seq.structured_output.is_ready():
                return seq
        return None

    def _preempt(self, seq: Sequence, out: SchedulerOutput) -> None:
        """Recompute preemption: drop the KV, keep the tokens, requeue at the front."""
        self.block_manager.free(seq)
        seq.status = SequenceStatus.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)
        out.preempted.append(seq)

    def finish(self, seq: Sequence) -> None:
        """Remove a finished or aborted sequence and release its blocks."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        if seq.block_table:
            self.block_manager.free(seq)
        seq.status = SequenceStatus.FINISHED
