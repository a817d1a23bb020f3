"""Paged KV-cache block pool: free list, reference counts and hash-based prefix caching.

Blocks hold `block_size` tokens. A full block is identified by a hash chained over every
token up to its end, so equal prefixes map to equal hashes. Blocks whose reference count
drops to zero go back to the free queue but keep their contents and hash: a later request
with the same prefix revives them; allocation takes the least recently freed first (LRU).

A sequence's last, partly filled block is cached too, by its parent hash and its tokens,
once the sequence lets it go: a later request whose next tokens start the same way takes the
free block over (no copy) and computes only from where the match ends. That is where a warm
request's cost goes down to its new tokens: without it the tokens of the last partial block
of a shared prefix (up to block_size - 1 of them) are recomputed every time.

Block 0 is the null block: never handed out, kept zero, and where attention points every
padded key position, so the rest of the cache can start uninitialized.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from vllm_cli.engine.sequence import Sequence


@dataclass
class CachedPrefix:
    """A prefix-cache hit: full blocks to share, then maybe a free partial block to take over
    whose first partial_len tokens are this sequence's next ones."""

    blocks: list[int] = field(default_factory=list)
    partial_block: int | None = None
    partial_len: int = 0

    def num_tokens(self, block_size: int) -> int:
        return len(self.blocks) * block_size + self.partial_len

    def __bool__(self) -> bool:
        return bool(self.blocks) or self.partial_block is not None


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
        # free partial blocks: block -> (hash of the full blocks before it, the tokens it holds)
        self.partial_blocks: dict[int, tuple[int | None, tuple[int, ...]]] = {}
        self.partials_by_parent: dict[int | None, set[int]] = {}
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

    # ----- prefix cache -----
    def _full_block_hashes(self, seq: Sequence, upto_tokens: int) -> list[int]:
        """Extend seq.block_hashes to every full block within the first upto_tokens tokens."""
        bs = self.block_size
        hashes = seq.block_hashes
        while (len(hashes) + 1) * bs <= upto_tokens:
            i = len(hashes)
            parent = hashes[-1] if hashes else None
            hashes.append(hash((parent, tuple(seq.token_ids[i * bs : (i + 1) * bs]))))
        return hashes

    def find_cached_prefix(self, seq: Sequence) -> CachedPrefix:
        """Blocks already holding this sequence's leading tokens (nothing is reserved): full
        blocks, then the free partial block with the longest match of the tokens after them.

        The last token is always recomputed (its logits are needed), so a fully cached
        sequence gives up its last block.
        """
        hit = CachedPrefix()
        if not self.enable_prefix_caching or seq.request.params.prompt_logprobs is not None:
            return hit
        limit = seq.num_tokens - 1
        hashes = self._full_block_hashes(seq, limit)
        for h in hashes:
            block = self.hash_to_block.get(h)
            if block is None:
                break
            hit.blocks.append(block)
        start = len(hit.blocks) * self.block_size
        wanted = seq.token_ids[start : min(start + self.block_size, limit)]
        parent = hashes[len(hit.blocks) - 1] if hit.blocks else None
        for block in self.partials_by_parent.get(parent, ()):
            cached = self.partial_blocks[block][1]
            match = 0
            for a, b in zip(cached, wanted):
                if a != b:
                    break
                match += 1
            if match > hit.partial_len:
                hit.partial_block, hit.partial_len = block, match
        return hit

    # ----- allocation -----
    def allocate(self, seq: Sequence, num_new_tokens: int, cached: CachedPrefix | None = None) -> bool:
        """Make room for num_new_tokens more tokens after seq.num_computed_tokens.

        cached (only for a sequence with no blocks yet) is the prefix-cache hit to adopt,
        num_new_tokens counted after it. Returns False, changing nothing, when the pool
        cannot supply the blocks.
        """
        cached = cached or CachedPrefix()
        adopted = cached.blocks + ([cached.partial_block] if cached.partial_block is not None else [])
        reviving = sum(1 for b in adopted if self.ref_counts[b] == 0)
        total_tokens = cached.num_tokens(self.block_size) if cached else seq.num_computed_tokens
        total_tokens += num_new_tokens
        fresh = max(0, -(-total_tokens // self.block_size) - len(seq.block_table) - len(adopted))
        if fresh + reviving > self.num_free_blocks:
            return False
        if cached:
            for block in cached.blocks:
                if self.ref_counts[block] == 0:
                    del self.free_queue[block]
                self.ref_counts[block] += 1
            if cached.partial_block is not None:  # taken over: this sequence writes the rest of it
                self._forget_partial(cached.partial_block)
                del self.free_queue[cached.partial_block]
                self.ref_counts[cached.partial_block] = 1
            seq.block_table.extend(adopted)
            seq.num_computed_tokens = cached.num_tokens(self.block_size)
        for _ in range(fresh):
            seq.block_table.append(self._take_free_block())
        self._register_full_blocks(seq, seq.num_computed_tokens + num_new_tokens)
        return True

    def _take_free_block(self) -> int:
        block, _ = self.free_queue.popitem(last=False)
        self._forget_partial(block)
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
        """Release a sequence's blocks; blocks that cache nothing go first in line for reuse."""
        bs = self.block_size
        last_full, filled = divmod(seq.num_computed_tokens, bs)
        for index in range(len(seq.block_table) - 1, -1, -1):
            block = seq.block_table[index]
            self.ref_counts[block] -= 1
            assert self.ref_counts[block] >= 0, f"block {block} freed twice"
            if self.ref_counts[block] == 0:
                if self.enable_prefix_caching and self.block_hash[block] is None and index == last_full and filled:
                    hashes = self._full_block_hashes(seq, index * bs)
                    self._remember_partial(
                        block,
                        hashes[index - 1] if index else None,
                        tuple(seq.token_ids[index * bs : index * bs + filled]),
                    )
                self.free_queue[block] = None
                if self.block_hash[block] is None and block not in self.partial_blocks:
                    self.free_queue.move_to_end(block, last=False)  # caches nothing: reuse first
        seq.block_table = []
        seq.num_computed_tokens = 0

    def _remember_partial(self, block: int, parent: int | None, tokens: tuple[int, ...]) -> None:
        self.partial_blocks[block] = (parent, tokens)
        self.partials_by_parent.setdefault(parent, set()).add(block)

    def _forget_partial(self, block: int) -> None:
        entry = self.partial_blocks.pop(block, None)
        if entry is not None:
            siblings = self.partials_by_parent[entry[0]]
            siblings.discard(block)
            if not siblings:
                del self.partials_by_parent[entry[0]]
