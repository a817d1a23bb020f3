"""The Triton attention backend: the AttentionBackend protocol (attention/backend.py) on the kernels
of vllm_cli.kernels (the CUDA path; on the CPU only under TRITON_INTERPRET=1, slow but exact,
which is how the tests prove it).

Per step, build_metadata turns the batch into a few small tensors: block tables padded to the
longest context, context lengths, query start locations (cu_seqlens), and the indices of the
decode sequences (one query token). Per layer, forward writes the step's K/V into the cache
(kv_cache kernel), then runs the prefill kernel over the sequences with several query tokens
and the decode kernel (split-K for long contexts) over the rest, both writing straight into
one output tensor.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from vllm_cli.attention.backend import SeqBatchInfo


@dataclass
class TritonAttentionMetadata:
    slot_mapping: torch.Tensor  # [T] cache slot of each new token
    num_tokens: int
    block_tables: torch.Tensor  # [S, max_blocks] int32 (null block 0 where a table is shorter)
    context_lens: torch.Tensor  # [S] int32, tokens in the cache after this step
    query_start_loc: torch.Tensor  # [S + 1] int32, cu_seqlens of the flat batch
    max_query_len: int
    max_context_len: int
    num_prefills: int  # sequences with more than one query token
    decode_seq_ids: torch.Tensor  # [num_decodes] int32, batch index of each single-token sequence
    decode_query_rows: torch.Tensor  # [num_decodes] int32, its row in the flat batch
    num_decodes: int


class TritonAttentionBackend:
    """Paged attention on the Triton kernels: one KV write, one prefill and one decode launch per layer."""

    name = "triton"

    def __init__(self, block_size: int, device: torch.device):
        # Imported here, not at the top: triton is an optional dependency, and its kernels read
        # TRITON_INTERPRET when they are imported, so only a backend that is built imports them.
        try:
            import triton  # noqa: F401
        except ImportError as e:
            raise ValueError("the triton attention backend needs triton (pip install 'vllm-cli[triton]')") from e
        if device.type == "cpu" and os.environ.get("TRITON_INTERPRET", "0").lower() not in ("1", "true", "on", "yes"):
            raise ValueError(
                "the triton attention backend runs on the CPU only under the Triton interpreter "
                "(TRITON_INTERPRET=1, set before start-up; slow, for tests); "
                "use --attention-backend torch"
            )
        from vllm_cli.kernels import kv_cache, paged_attention

        self._kv_cache = kv_cache
        self._attn = paged_attention
        self.block_size = block_size
        self.device = device

    def build_metadata(self, info: SeqBatchInfo, slot_mapping: torch.Tensor) -> TritonAttentionMetadata:
        bs = self.block_size
        num_seqs = len(info.query_lens)
        max_ctx = max(info.context_lens, default=0)
        max_blocks = max(1, -(-max_ctx // bs))
        flat_tables: list[int] = []  # padded with the null block 0
        for table, ctx in zip(info.block_tables, info.context_lens):
            row = table[: -(-ctx // bs)]
            flat_tables += row + [0] * (max_blocks - len(row))
        starts = [0]
        for q in info.query_lens:
            starts.append(starts[-1] + q)
        decodes = [i for i, q in enumerate(info.query_lens) if q == 1]
        # One host-to-device copy for everything; the fields are views into it.
        packed = torch.tensor(
            flat_tables + info.context_lens + starts + decodes + [starts[i] for i in decodes], dtype=torch.int32
        ).to(self.device, non_blocking=True)
        tables_dev, ctx_dev, starts_dev, decodes_dev, rows_dev = packed.split(
            [len(flat_tables), num_seqs, num_seqs + 1, len(decodes), len(decodes)]
        )
        return TritonAttentionMetadata(
            slot_mapping=slot_mapping,
            num_tokens=starts[-1],
            block_tables=tables_dev.view(num_seqs, max_blocks),
            context_lens=ctx_dev,
            query_start_loc=starts_dev,
            max_query_len=max(info.query_lens, default=0),
            max_context_len=max_ctx,
            num_prefills=num_seqs - len(decodes),
            decode_seq_ids=decodes_dev,
            decode_query_rows=rows_dev,
            num_decodes=len(decodes),
        )

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        meta: TritonAttentionMetadata,
        scale: float,
        alibi_slopes: torch.Tensor | None = None,
        sliding_window: int | None = None,
    ) -> torch.Tensor:
        """q [T, H, D], k/v [T, KVH, D]; caches [num_slots, KVH, D]. Returns [T, H, D]."""
        self._kv_cache.write_kv_cache(k, v, k_cache, v_cache, meta.slot_mapping)
        if q.stride(-1) != 1:
            q = q.contiguous()
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        if meta.num_prefills:
            self._attn.paged_prefill_attention(
                q,
                k_cache,
                v_cache,
                meta.block_tables,
                meta.query_start_loc,
                meta.context_lens,
                self.block_size,
                scale,
                alibi_slopes,
                sliding_window,
                out=out,
                max_query_len=meta.max_query_len,
                skip_decode=meta.num_decodes > 0,
            )
        if meta.num_decodes:
            self._attn.paged_decode_attention(
                q,
                k_cache,
                v_cache,
                meta.block_tables,
                meta.context_lens,
                self.block_size,
                scale,
                alibi_slopes,
                sliding_window,
                out=out,
                seq_ids=meta.decode_seq_ids,
                query_rows=meta.decode_query_rows,
                max_context_len=meta.max_context_len,
            )
        return out
