"""Paged KV-cache block pool: free list, reference counts and hash-based prefix caching.

Blocks hold `block_size` tokens. A full block is identified by a hash chained over every
token up to its end, so equal prefixes map to equal hashes. Blocks whose reference count
drops to zero go back to the free queue but keep their contents and hash: a later request
with the same prefix revives them; allocation takes the least recently freed first (LRU).

Block 0 is the null block: never handed out, kept zero, and where attention points every
padded key position, so the rest of the cache can start uninitialized.
"""

from __future__ import annotations

from collections import OrderedDict

from vllm_cli.engine.sequence import Sequence


class BlockManager:
    NULL_BLOCK = 0

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        if num_blocks < 2:
            raise ValueError("the KV cache needs at least two blocks (one is the null block)")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.ref_counts = [0] * num_blocks
        self.block_hash: list[int | None] = [None] * num_blocks
        self.hash_to_block: dict[int, int] = {}
        # Insertion order is eviction order: the front is reused first.
        self.free_queue: OrderedDict[int, None] = OrderedDict((b, None) for b in range(1, num_blocks))
        self.prefix_hits = 0  # prompt tokens served from the cache
        self.prefix_queries = 0  # prompt tokens looked up

    # ----- accounting -----
    @property
    def num_free_blocks(self) -> int:
        return len(self.free_queue)

    @property
    def num_usable_blocks(self) -> int:
        return self.num_blocks - 1

    @property
    def usage(self) -> float:
        return 1.0 - self.num_free_blocks / self.num_usable_blocks

    def blocks_needed(self, seq: Sequence, num_tokens: int) -> int:
        return max(0, -(-num_tokens // self.block_size) - len(seq.block_table))

    # ----- prefix cache -----
    def _full_block_hashes(self, seq: Sequence, upto_tokens: int) -> list[int]:
        """Extend seq.block_hashes to every full block within the first upto_tokens tokens."""
        bs = self.block_size
        hashes = seq.block_hashes
        while (len(hashes) + 1) * bs <= upto_tokens:
            i = len(hashes)
            parent = hashes[-1] if hashes else None
            hashes.append(hash((parent, tuple(seq.token_ids[i * bs:(i + 1) * bs]))))
        return hashes

    def find_cached_prefix(self, seq: Sequence) -> list[int]:
        """Blocks already holding this sequence's leading full blocks (nothing is reserved).

        The last token is always recomputed (its logits are needed), so a fully cached
        sequence gives up its last block.
        """
        if not self.enable_prefix_caching or seq.request.params.prompt_logprobs is not None:
            return []
        hashes = self._full_block_hashes(seq, seq.num_tokens - 1)
        blocks = []
        for h in hashes:
            block = self.hash_to_block.get(h)
            if block is None:
                break
            blocks.append(block)
        return blocks

    # ----- allocation -----
    def allocate(self, seq: Sequence, num_new_tokens: int, cached_blocks: list[int] = ()) -> bool:
        """Make room for num_new_tokens more tokens after seq.num_computed_tokens.

        cached_blocks (only for a sequence with no blocks yet) are prefix-cache hits to
        adopt. Returns False, changing nothing, when the pool cannot supply the blocks.
        """
        reviving = sum(1 for b in cached_blocks if self.ref_counts[b] == 0)
        total_tokens = len(cached_blocks) * self.block_size if cached_blocks else seq.num_computed_tokens
        total_tokens += num_new_tokens
        fresh = max(0, -(-total_tokens // self.block_size) - len(seq.block_table) - len(cached_blocks))
        if fresh + reviving > self.num_free_blocks:
            return False
        if cached_blocks:
            for block in cached_blocks:
                if self.ref_counts[block] == 0:
                    del self.free_queue[block]
                self.ref_counts[block] += 1
            seq.block_table.extend(cached_blocks)
            seq.num_computed_tokens = len(cached_blocks) * self.block_size
        for _ in range(fresh):
            seq.block_table.append(self._take_free_block())
        self._register_full_blocks(seq, seq.num_computed_tokens + num_new_tokens)
        return True

    def _take_free_block(self) -> int:
        block, _ = self.free_queue.popitem(last=False)
        old = self.block_hash[block]
        if old is not None:
            if self.hash_to_block.get(old) == block:
                del self.hash_to_block[old]
            self.block_hash[block] = None
        self.ref_counts[block] = 1
        return block

    def _register_full_blocks(self, seq: Sequence, upto_tokens: int) -> None:
        """Publish the hashes of blocks that will be full once this step has run.

        Safe before the forward pass: attention writes a step's K/V before any read,
        so a sequence admitted later in the same step may already share these blocks.
        """
        if not self.enable_prefix_caching:
            return
        hashes = self._full_block_hashes(seq, upto_tokens)
        for i in range(upto_tokens // self.block_size):
            block, h = seq.block_table[i], hashes[i]
            if self.block_hash[block] is None:
                self.block_hash[block] = h
                self.hash_to_block.setdefault(h, block)

    def free(self, seq: Sequence) -> None:
        """Release a sequence's blocks; tail blocks go first in line for reuse."""
        for block in reversed(seq.block_table):
            self.ref_counts[block] -= 1
            assert self.ref_counts[block] >= 0, f"block {block} freed twice"
            if self.ref_counts[block] == 0:
                if self.block_hash[block] is None:
                    self.free_queue[block] = None
                    self.free_queue.move_to_end(block, last=False)  # uncached: reuse first
                else:
                    self.free_queue[block] = None
        seq.block_table = []
        seq.num_computed_tokens = 0

    def reset_prefix_cache(self) -> None:
        for block, h in enumerate(self.block_hash):
            if h is not None and self.ref_counts[block] == 0:
                self.block_hash[block] = None
        self.hash_to_block = {h: b for b, h in enumerate(self.block_hash) if h is not None}
