"""Paged KV-cache block pool: free lists, reference counts and hash-based prefix caching.

Blocks hold `block_size` tokens. A full block is identified by a cryptographic hash chained over
every token up to its end (`hash_block_tokens`), so equal prefixes map to equal hashes and a
crafted prompt cannot collide with another request's block (Python's hash() of a tuple could be
made to: vLLM's CVE-2025-25183). Blocks whose reference count drops to zero go back to the free
lists but keep their contents and hash: a later request with the same prefix revives them.

Which free block is taken (`_take_free_block`): first a block that caches nothing, the most
recently freed one (LIFO: its memory is warm, and a long-running server keeps reusing the same
few blocks instead of walking the whole pool); only when there is none, a block that still
caches a prefix, the least recently freed first (LRU, as vLLM's evictor), so cached prefixes
are evicted last and oldest first.

A sequence's last, partly filled block is cached too, by its parent hash and its tokens,
once the sequence lets it go: a later request whose next tokens start the same way takes the
free block over (no copy) and computes only from where the match ends. That is where a warm
request's cost goes down to its new tokens: without it the tokens of the last partial block
of a shared prefix (up to block_size - 1 of them) are recomputed every time.

Block 0 is the null block: never handed out, kept zero, and where attention points every
padded key position.
"""

from __future__ import annotations

import hashlib
import struct
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import cbor2

from vllm_cli.config import PREFIX_CACHING_HASH_ALGOS
from vllm_cli.engine.sequence import Sequence

BlockHash = bytes  # a 32-byte SHA-256 digest
ExtraKey = int | str | bytes
# The parent of a sequence's first block.
ROOT_PARENT_HASH: BlockHash = bytes(32)


def _encode_block(parent: BlockHash, token_ids: list[int], extra_keys: tuple[ExtraKey, ...]) -> bytes:
    """The "sha256" algorithm's input, a compact byte string (all integers little-endian):

        parent digest (32 bytes)
        uint32 number of tokens, then each token id as a uint32
        for each extra key: a tag byte (b"i" int64, b"s" UTF-8 str, b"b" bytes), then for s/b a
        uint32 byte length, then the value

    The extra keys are whatever else changes a block's K/V for the same tokens (a LoRA adapter's
    id, multimodal inputs' hashes): none yet. Lengths make the encoding unambiguous."""
    parts = [parent, struct.pack(f"<{len(token_ids) + 1}I", len(token_ids), *token_ids)]
    for key in extra_keys:
        if isinstance(key, int):
            parts.append(b"i" + struct.pack("<q", key))
        else:
            data = key.encode() if isinstance(key, str) else key
            parts.append((b"s" if isinstance(key, str) else b"b") + struct.pack("<I", len(data)) + data)
    return b"".join(parts)


def _sha256(parent: BlockHash, token_ids: list[int], extra_keys: tuple[ExtraKey, ...]) -> BlockHash:
    return hashlib.sha256(_encode_block(parent, token_ids, extra_keys)).digest()


def _sha256_cbor(parent: BlockHash, token_ids: list[int], extra_keys: tuple[ExtraKey, ...]) -> BlockHash:
    """vLLM's sha256_cbor: SHA-256 of the canonical CBOR of (parent, token ids, extra keys or None),
    a standard, language-independent encoding (RFC 8949) another implementation can reproduce."""
    return hashlib.sha256(cbor2.dumps((parent, tuple(token_ids), tuple(extra_keys) or None), canonical=True)).digest()


_HASH_FUNCTIONS: dict[str, Callable[[BlockHash, list[int], tuple[ExtraKey, ...]], BlockHash]] = {
    "sha256": _sha256,
    "sha256_cbor": _sha256_cbor,
}
assert set(_HASH_FUNCTIONS) == set(PREFIX_CACHING_HASH_ALGOS)


def hash_block_tokens(
    parent: BlockHash | None, token_ids: list[int], extra_keys: tuple[ExtraKey, ...] = (), algo: str = "sha256"
) -> BlockHash:
    """The hash of a full block: chained over its parent's hash (None: the sequence's first block),
    its token ids and its extra keys, by `algo` (--prefix-caching-hash-algo)."""
    return _HASH_FUNCTIONS[algo](ROOT_PARENT_HASH if parent is None else parent, token_ids, extra_keys)


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

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True, hash_algo: str = "sha256"):
        if num_blocks < 2:
            raise ValueError("the KV cache needs at least two blocks (one is the null block)")
        if hash_algo not in _HASH_FUNCTIONS:
            raise ValueError(f"prefix_caching_hash_algo must be one of {', '.join(_HASH_FUNCTIONS)}, got {hash_algo!r}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.hash_algo = hash_algo
        self.ref_counts = [0] * num_blocks
        self.block_hash: list[BlockHash | None] = [None] * num_blocks
        self.hash_to_block: dict[BlockHash, int] = {}
        # free partial blocks: block -> (hash of the full blocks before it, the tokens it holds)
        self.partial_blocks: dict[int, tuple[BlockHash | None, tuple[int, ...]]] = {}
        self.partials_by_parent: dict[BlockHash | None, set[int]] = {}
        # Free blocks that cache nothing: a stack, the top (the end) reused first; block 1 on top at start.
        self.free_uncached: list[int] = list(range(num_blocks - 1, 0, -1))
        # Free blocks that still cache a prefix (a full block's hash or a partial block): evicted only when
        # free_uncached is empty, the front (least recently freed) first.
        self.free_cached: OrderedDict[int, None] = OrderedDict()
        self.prefix_hits = 0  # prompt tokens served from the cache
        self.prefix_queries = 0  # prompt tokens looked up

    # ----- accounting -----
    @property
    def num_free_blocks(self) -> int:
        return len(self.free_uncached) + len(self.free_cached)

    def free_blocks(self) -> list[int]:
        """Every free block, in the order they would be taken."""
        return self.free_uncached[::-1] + list(self.free_cached)

    @property
    def num_usable_blocks(self) -> int:
        return self.num_blocks - 1

    @property
    def usage(self) -> float:
        return 1.0 - self.num_free_blocks / self.num_usable_blocks

    # ----- prefix cache -----
    def _full_block_hashes(self, seq: Sequence, upto_tokens: int) -> list[BlockHash]:
        """Extend seq.block_hashes to every full block within the first upto_tokens tokens."""
        bs = self.block_size
        hashes = seq.block_hashes
        while (len(hashes) + 1) * bs <= upto_tokens:
            i = len(hashes)
            parent = hashes[-1] if hashes else None
            # No extra keys yet: a LoRA adapter or multimodal inputs would add theirs here (and to the
            # partial blocks' key).
            hashes.append(hash_block_tokens(parent, seq.token_ids[i * bs : (i + 1) * bs], (), self.hash_algo))
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
                    self._unfree(block)
                self.ref_counts[block] += 1
            if cached.partial_block is not None:  # taken over: this sequence writes the rest of it
                self._unfree(cached.partial_block)
                self._forget_partial(cached.partial_block)
                self.ref_counts[cached.partial_block] = 1
            seq.block_table.extend(adopted)
            seq.num_computed_tokens = cached.num_tokens(self.block_size)
        for _ in range(fresh):
            seq.block_table.append(self._take_free_block())
        self._register_full_blocks(seq, seq.num_computed_tokens + num_new_tokens)
        return True

    def _unfree(self, block: int) -> None:
        """Take a free block that is being revived (a prefix-cache hit) off its free list."""
        if block in self.free_cached:
            del self.free_cached[block]
        else:
            self.free_uncached.remove(block)

    def _take_free_block(self) -> int:
        """The most recently freed block that caches nothing, else the least recently freed cached one."""
        block = self.free_uncached.pop() if self.free_uncached else self.free_cached.popitem(last=False)[0]
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
        """Release a sequence's blocks, last block first: one that caches nothing goes on top of
        free_uncached (reused first), one that caches a prefix at the end of free_cached (evicted last;
        a sequence's later blocks before its earlier ones, which more requests share)."""
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
                h = self.block_hash[block]
                if (h is not None and self.hash_to_block.get(h) == block) or block in self.partial_blocks:
                    self.free_cached[block] = None
                else:  # caches nothing a lookup could find
                    self.free_uncached.append(block)
        seq.block_table = []
        seq.num_computed_tokens = 0

    def _remember_partial(self, block: int, parent: BlockHash | None, tokens: tuple[int, ...]) -> None:
        self.partial_blocks[block] = (parent, tokens)
        self.partials_by_parent.setdefault(parent, set()).add(block)

    def _forget_partial(self, block: int) -> None:
        entry = self.partial_blocks.pop(block, None)
        if entry is not None:
            siblings = self.partials_by_parent[entry[0]]
            siblings.discard(block)
            if not siblings:
                del self.partials_by_parent[entry[0]]
