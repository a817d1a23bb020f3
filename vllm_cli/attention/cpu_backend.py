"""The CPU attention backend: the torch backend with kernels/cpu.py's C kernels where they apply.

The step's K/V go into the cache by one C call instead of two `index_copy_`, and both groups skip
the gather and the mask: the kernels' paged decode attention and prefill attention
(kernels/prefill_attention.c: prompts and chunks after a cached prefix, one call per layer, no
padding) read each sequence's keys and values in place through int32 block tables built once per
step. SDPA stays the fallback (a dtype the kernels do not take, `prefill_kernel = False`).
Whether the library is loaded is asked each step and each layer (`cpu_kernels.load()`, a cached
answer): where it is not, every call takes the torch backend's path.

A step of decodes only (every sequence one new token; batch 1 always, once its prompt is in) in
a dtype the kernels take gets `CpuDecodeMetadata` instead: just the slots, the int32 block tables
and context lengths, packed in one tensor, none of the torch path's gather indices and masks. Its
`attend_qkv` runs a layer's whole attention (rotary, KV write, attention) from the fused qkv
output in one C call, so the fixed cost of a decode step does not pay per layer for the views and
checks in between.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from vllm_cli.attention.backend import SeqBatchInfo
from vllm_cli.attention.torch_backend import TorchAttentionBackend, _Group
from vllm_cli.kernels import cpu as cpu_kernels

if TYPE_CHECKING:
    from vllm_cli.attention.backend import ForwardContext
    from vllm_cli.attention.layer import Attention


@dataclass
class CpuDecodeMetadata:
    """A step of single-token sequences, for the C kernels: everything per layer reads from here."""

    slot_mapping: torch.Tensor  # [S] int64
    num_tokens: int
    block_tables: torch.Tensor  # [S, blocks] int32, contiguous (null block 0 past a sequence's table)
    context_lens: torch.Tensor  # [S] int32
    block_size: int

    def attend_qkv(self, layer: Attention, qkv: torch.Tensor, ctx: ForwardContext) -> torch.Tensor | None:
        """The layer's attention from its fused qkv output [S, q_size + 2 kv_size], in one kernel
        call (the kernel's rotary is neox-style, the only one the models use); None where it cannot
        take it (strided columns)."""
        if qkv.stride(1) != 1:
            return None
        rotary, slopes = ctx.rotary, ctx.alibi_slopes
        k_cache, v_cache = ctx.kv_caches[layer.layer_idx]
        return cpu_kernels.decode_qkv_attention(
            qkv,
            layer.num_heads,
            layer.num_kv_heads,
            layer.head_dim,
            0 if rotary is None else rotary.rotary_dim,
            ctx.cos if rotary is not None else None,
            ctx.sin if rotary is not None else None,
            self.slot_mapping,
            k_cache,
            v_cache,
            self.block_tables,
            self.context_lens,
            self.block_size,
            layer.scale,
            None if slopes is None else slopes.float(),
            layer.sliding_window,
        )


class CpuAttentionBackend(TorchAttentionBackend):
    """TorchAttentionBackend on the CPU, with the C kernels for the KV write and the decode group.

    dtype: the model's; a step of decodes in a dtype the kernels take gets CpuDecodeMetadata.
    prefill_kernel: whether prefill groups take kernels/prefill_attention.c (False: SDPA, the
    reference; benchmarks/prefill_attention.py compares the two)."""

    prefill_kernel = True

    def __init__(self, block_size: int, device: torch.device, dtype: torch.dtype | None = None):
        super().__init__(block_size, device)
        self.decode_kernels = dtype in cpu_kernels.DTYPES and device.type == "cpu" and cpu_kernels.load() is not None

    def build_metadata(self, info: SeqBatchInfo, slot_mapping: torch.Tensor) -> Any:
        query_lens = info.query_lens
        if not (self.decode_kernels and len(query_lens) == sum(query_lens)):
            return super().build_metadata(info, slot_mapping)
        bs = self.block_size
        context_lens = info.context_lens
        width = max(-(-n // bs) for n in context_lens)
        packed: list[int] = []  # [block tables padded with the null block 0 | context lengths]
        for table, n in zip(info.block_tables, context_lens):
            row = table[: -(-n // bs)]
            packed += row
            if len(row) < width:
                packed += [0] * (width - len(row))
        num_seqs = len(query_lens)
        tensor = torch.tensor(packed + context_lens, dtype=torch.int32)
        return CpuDecodeMetadata(
            slot_mapping=slot_mapping,
            num_tokens=num_seqs,
            block_tables=tensor[: num_seqs * width].view(num_seqs, width),
            context_lens=tensor[num_seqs * width :],
            block_size=bs,
        )

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        meta: Any,
        scale: float,
        alibi_slopes: torch.Tensor | None = None,
        sliding_window: int | None = None,
    ) -> torch.Tensor:
        if not isinstance(meta, CpuDecodeMetadata):
            return super().forward(q, k, v, k_cache, v_cache, meta, scale, alibi_slopes, sliding_window)
        # A model that transforms the heads itself (attend_heads): the kernels, one call each.
        self._write_kv_cache(k, v, k_cache, v_cache, meta.slot_mapping)
        if q.stride(2) != 1 or q.stride(1) != q.shape[2]:
            q = q.contiguous()
        return cpu_kernels.paged_decode_attention(
            q,
            k_cache,
            v_cache,
            meta.block_tables,
            meta.context_lens,
            self.block_size,
            scale,
            alibi_slopes,
            sliding_window,
        )

    def _prepare_group(
        self, group: _Group, tables: torch.Tensor, context_lens: torch.Tensor, query_lens: torch.Tensor
    ) -> None:
        if self.device.type != "cpu" or cpu_kernels.load() is None:
            return
        if group.is_decode or self.prefill_kernel:
            group.block_tables = tables.to(torch.int32)
            group.context_lens = context_lens.to(torch.int32)
        if not group.is_decode and self.prefill_kernel:
            cu_seqlens = torch.zeros(len(query_lens) + 1, dtype=torch.int32)
            torch.cumsum(query_lens, 0, out=cu_seqlens[1:])
            group.cu_seqlens_q = cu_seqlens

    def _write_kv_cache(
        self, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor
    ) -> None:
        if (
            cpu_kernels.load() is not None
            and cpu_kernels.supports(k, v, k_cache, v_cache)
            and k.stride(2) == 1
            and k.stride(1) == k.shape[2]
            and v.stride(2) == 1
            and v.stride(1) == v.shape[2]
            and k_cache.is_contiguous()
            and v_cache.is_contiguous()
        ):
            cpu_kernels.write_kv_cache(k, v, k_cache, v_cache, slot_mapping)
        else:
            TorchAttentionBackend._write_kv_cache(self, k, v, k_cache, v_cache, slot_mapping)

    def _attend_group(
        self,
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        g: _Group,
        scale: float,
        alibi_slopes: torch.Tensor | None,
        sliding_window: int | None,
    ) -> torch.Tensor:
        if g.block_tables is not None and g.context_lens is not None and cpu_kernels.supports(q, k_cache, v_cache):
            # The CPU kernels read K/V in place through the block tables: no gather, no mask, no padding.
            queries = q if g.token_index.numel() == q.shape[0] else q.index_select(0, g.token_index)
            if queries.stride(2) != 1 or queries.stride(1) != q.shape[2]:
                queries = queries.contiguous()
            if g.cu_seqlens_q is not None:
                return cpu_kernels.prefill_attention(
                    queries,
                    k_cache,
                    v_cache,
                    g.block_tables,
                    g.cu_seqlens_q,
                    g.context_lens,
                    self.block_size,
                    scale,
                    alibi_slopes,
                    sliding_window,
                )
            if g.is_decode:
                return cpu_kernels.paged_decode_attention(
                    queries,
                    k_cache,
                    v_cache,
                    g.block_tables,
                    g.context_lens,
                    self.block_size,
                    scale,
                    alibi_slopes,
                    sliding_window,
                )
        # (the base class named, not super(): no super object per layer and group)
        return TorchAttentionBackend._attend_group(self, q, k_cache, v_cache, g, scale, alibi_slopes, sliding_window)
