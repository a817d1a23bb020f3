"""The KV pool's accounting under thousands of random scheduler events (hypothesis stateful
testing): no block freed twice or leaked, ref counts equal to the block tables that hold
them, the free queue exactly the unreferenced blocks, prefix-cache entries consistent."""

from __future__ import annotations

import hashlib
import random
import struct
from collections import Counter

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from vllm_cli.engine.block_manager import BlockManager, hash_block_tokens
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
        free = bm.free_blocks()
        assert len(free) == len(set(free)) == bm.num_free_blocks
        for block in range(1, bm.num_blocks):
            assert bm.ref_counts[block] == held.get(block, 0), block
            assert (block in free) == (bm.ref_counts[block] == 0), block
        assert BlockManager.NULL_BLOCK not in free
        for block in bm.free_cached:  # cached prefixes are evicted last: only what a lookup can find
            h = bm.block_hash[block]
            assert (h is not None and bm.hash_to_block[h] == block) or block in bm.partial_blocks, block
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


# ----------------------------------------------------------------- block hashes

def test_block_hash_known_answer_sha256():
    """The documented encoding (block_manager._encode_block) through SHA-256, rebuilt here by hand."""
    first = hashlib.sha256(bytes(32) + struct.pack("<5I", 4, 1, 2, 3, 70000)).digest()
    assert hash_block_tokens(None, [1, 2, 3, 70000]) == first
    second = hashlib.sha256(first + struct.pack("<5I", 4, 9, 8, 7, 6)).digest()
    assert hash_block_tokens(first, [9, 8, 7, 6]) == second
    assert second == hashlib.sha256(first + bytes.fromhex("04000000" "09000000" "08000000" "07000000" "06000000")).digest()
    # extra keys: a tag, a length for str/bytes, the value; little-endian
    extra = b"s\x09\x00\x00\x00adapter-7" + b"i" + struct.pack("<q", -3) + b"b\x02\x00\x00\x00\xab\xcd"
    with_keys = hashlib.sha256(first + struct.pack("<5I", 4, 9, 8, 7, 6) + extra).digest()
    assert hash_block_tokens(first, [9, 8, 7, 6], ("adapter-7", -3, b"\xab\xcd")) == with_keys
    assert with_keys != second


def test_block_hash_known_answer_sha256_cbor():
    # canonical CBOR of (32 zero bytes, (1, 2, 3), None), written out by hand (RFC 8949):
    # array(3), bytes(32) + 32 zeros, array(3) 1 2 3, null
    encoded = bytes([0x83, 0x58, 0x20]) + bytes(32) + bytes([0x83, 0x01, 0x02, 0x03, 0xF6])
    assert hash_block_tokens(None, [1, 2, 3], algo="sha256_cbor") == hashlib.sha256(encoded).digest()
    assert hash_block_tokens(None, [1, 2, 3], algo="sha256_cbor") != hash_block_tokens(None, [1, 2, 3])


def _run_to_completion(bm: BlockManager, tokens: list[int], rid: str):
    """Admit a sequence (adopting any cached prefix), compute all its tokens, free it; returns
    (its block table, the prefix hit it got)."""
    seq = Request(rid, None, tokens, SamplingParams(max_tokens=1)).seqs[0]
    hit = bm.find_cached_prefix(seq)
    assert bm.allocate(seq, seq.num_tokens - hit.num_tokens(bm.block_size), hit)
    seq.num_computed_tokens = seq.num_tokens
    table = list(seq.block_table)
    bm.free(seq)
    return table, hit


@pytest.mark.parametrize("algo", ["sha256", "sha256_cbor"])
def test_one_different_token_shares_nothing_from_its_block_on(algo):
    bs = 4
    base = list(range(100, 117))  # 4 full blocks + 1 token
    for position in range(16):
        bm = BlockManager(num_blocks=32, block_size=bs, hash_algo=algo)
        table, _ = _run_to_completion(bm, base, "a")
        other = list(base)
        other[position] += 1
        other_table, hit = _run_to_completion(bm, other, "b")
        same = position // bs  # the full blocks before the changed one
        assert hit.blocks == table[:same] and hit.partial_block is None, position
        assert hit.num_tokens(bs) == same * bs
        assert not set(other_table[same:]) & set(table), position  # nothing after it is shared
        seq_a = Request("x", None, base, SamplingParams()).seqs[0]
        seq_b = Request("y", None, other, SamplingParams()).seqs[0]
        ha, hb = bm._full_block_hashes(seq_a, 16), bm._full_block_hashes(seq_b, 16)
        assert ha[:same] == hb[:same] and all(x != y for x, y in zip(ha[same:], hb[same:]))
        assert all(len(h) == 32 for h in ha)


# ----------------------------------------------------------------- which free block is reused


def test_freed_blocks_are_reused_before_fresh_ones_lifo():
    bm = BlockManager(num_blocks=16, block_size=4, enable_prefix_caching=False)
    first, _ = _run_to_completion(bm, list(range(10)), "a")  # 3 blocks
    assert first == [1, 2, 3]
    second, _ = _run_to_completion(bm, list(range(50, 57)), "b")  # 2 blocks: the ones just freed
    assert second == [1, 2]
    third, _ = _run_to_completion(bm, list(range(60, 75)), "c")  # 4: the freed three, then one fresh
    assert set(third) == {1, 2, 3, 4}
    assert bm.free_blocks()[:4] == third and bm.num_free_blocks == 15


def test_cached_prefixes_are_evicted_last_oldest_first():
    bm = BlockManager(num_blocks=9, block_size=4)  # 8 usable
    a, _ = _run_to_completion(bm, list(range(0, 9)), "a")  # 2 full blocks (cached) + a partial (cached)
    b, _ = _run_to_completion(bm, list(range(20, 29)), "b")
    assert a == [1, 2, 3] and b == [4, 5, 6]  # fresh blocks before anything that caches a prefix
    c, _ = _run_to_completion(bm, list(range(40, 48)), "c")  # 2 full blocks: the two fresh ones left
    assert c == [7, 8]
    # Now every free block caches something; evicted least recently freed first (a, then b, then c),
    # each sequence's last block before its earlier ones.
    assert bm.free_blocks() == [3, 2, 1, 6, 5, 4, 8, 7]
    _, hit = _run_to_completion(bm, list(range(20, 30)), "b again")  # b's 9 tokens still cached, then one more
    assert hit.blocks == [4, 5] and hit.partial_block == 6 and hit.partial_len == 1
    assert bm.free_blocks() == [3, 2, 1, 8, 7, 6, 5, 4]  # b's blocks used again: now the most recent
    d, _ = _run_to_completion(bm, list(range(60, 66)), "d")  # 2 blocks: a's, the oldest
    assert d == [3, 2]
    _, hit = _run_to_completion(bm, list(range(0, 9)), "a again")
    assert hit.blocks == [1] and hit.partial_block is None  # a's first block survived
