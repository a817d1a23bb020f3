"""The KV pool's accounting under thousands of random scheduler events (hypothesis stateful
testing): no block freed twice or leaked, ref counts equal to the block tables that hold
them, the free queue exactly the unreferenced blocks, prefix-cache entries consistent."""

from __future__ import annotations

import random
from collections import Counter

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from vllm_cli.engine.block_manager import BlockManager
from vllm_cli.engine.scheduler import Scheduler
from vllm_cli.engine.sequence import Request
from vllm_cli.sampling_params import SamplingParams


class SchedulerMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.rng = random.Random(0)
        self.bm = BlockManager(num_blocks=24, block_size=4, enable_prefix_caching=True)
        self.scheduler = Scheduler(self.bm, max_num_seqs=6, max_num_batched_tokens=20)
        self.live: list = []
        self.counter = 0

    @rule(length=st.integers(1, 40), shared=st.booleans(), n=st.integers(1, 3))
    def add(self, length, shared, n):
        # Shared prefixes make prefix-cache hits (and sibling sharing with n > 1) common.
        prefix = [7, 7, 8, 9, 1, 2, 3, 4][: min(length, 8)] if shared else []
        tokens = prefix + [self.rng.randrange(50) for _ in range(length - len(prefix))]
        request = Request(str(self.counter), None, tokens, SamplingParams(n=n, max_tokens=8))
        self.counter += 1
        for seq in request.seqs:
            self.scheduler.add(seq)
            self.live.append(seq)

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def abort(self, data):
        seq = data.draw(st.sampled_from(self.live))
        self.scheduler.finish(seq)
        self.live.remove(seq)

    @rule()
    def step(self):
        out = self.scheduler.schedule()
        for seq, n in out.scheduled:
            assert seq.num_computed_tokens + n <= seq.num_tokens
            assert len(seq.block_table) * self.bm.block_size >= seq.num_computed_tokens + n
            seq.num_computed_tokens += n
            if seq.num_computed_tokens == seq.num_tokens:
                seq.token_ids.append(self.rng.randrange(50))  # "sampled"
                if seq.num_output_tokens >= 8 or self.rng.random() < 0.1:
                    self.scheduler.finish(seq)
                    self.live.remove(seq)

    @invariant()
    def accounting_is_consistent(self):
        bm = self.bm
        held = Counter(b for seq in self.scheduler.running + list(self.scheduler.waiting) for b in seq.block_table)
        assert BlockManager.NULL_BLOCK not in held
        for block in range(1, bm.num_blocks):
            assert bm.ref_counts[block] == held.get(block, 0), block
            assert (block in bm.free_queue) == (bm.ref_counts[block] == 0), block
        assert BlockManager.NULL_BLOCK not in bm.free_queue
        for h, block in bm.hash_to_block.items():
            assert bm.block_hash[block] == h
        for block, (parent, tokens) in bm.partial_blocks.items():  # only free, unhashed blocks
            assert bm.ref_counts[block] == 0 and bm.block_hash[block] is None, block
            assert 0 < len(tokens) < bm.block_size and block in bm.partials_by_parent[parent]
        assert sum(map(len, bm.partials_by_parent.values())) == len(bm.partial_blocks)
        for seq in self.scheduler.waiting:
            assert not seq.block_table or seq.num_computed_tokens > 0 or seq.block_table == []

    def teardown(self):
        for seq in list(self.live):
            self.scheduler.finish(seq)
        assert self.bm.num_free_blocks == self.bm.num_usable_blocks
        assert sum(self.bm.ref_counts) == 0


SchedulerMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=60, deadline=None)
TestSchedulerAccounting = SchedulerMachine.TestCase
