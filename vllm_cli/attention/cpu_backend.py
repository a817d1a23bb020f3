"""The CPU attention backend: the torch backend with kernels/cpu.py's C kernels where they apply.

The step's K/V go into the cache by one C call instead of two `index_copy_`, and the decode group
skips the gather and the mask: the kernel's paged decode attention reads each sequence's keys and
values in place through int32 block tables built once per step. The prefill group stays on SDPA.
Whether the library is loaded is asked each step and each layer (`cpu_kernels.load()`, a cached
answer): where it is not, every call takes the torch backend's path.
"""

from __future__ import annotations

import torch

from vllm_cli.attention.torch_backend import TorchAttentionBackend, _Group
from vllm_cli.kernels import cpu as cpu_kernels


class CpuAttentionBackend(TorchAttentionBackend):
    """TorchAttentionBackend on the CPU, with the C kernels for the KV write and the decode group."""

    def _prepare_decode_group(self, group: _Group, tables: torch.Tensor, context_lens: torch.Tensor) -> None:
        if self.device.type == "cpu" and cpu_kernels.load() is not None:
            group.block_tables = tables.to(torch.int32)
            group.context_lens = context_lens.to(torch.int32)

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
            # The CPU kernel reads K/V in place through the block tables: no gather, no mask.
            queries = q if g.token_index.numel() == q.shape[0] else q.index_select(0, g.token_index)
            if queries.stride(2) == 1 and queries.stride(1) == q.shape[2]:
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
