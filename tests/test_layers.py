"""Layers with more than one implementation: each against plain torch."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vllm_cli.model_executor.layers.cpu_linear import CpuLinear, cpu_linear_kinds

_KINDS = [(dtype, kind) for dtype in (torch.float32, torch.bfloat16) for kind in [None, *cpu_linear_kinds(dtype)]]


@pytest.mark.parametrize("dtype,kind", _KINDS, ids=[f"{str(d).removeprefix('torch.')}-{k or 'fastest'}" for d, k in _KINDS])
@pytest.mark.parametrize("bias", [False, True])
def test_prepacked_cpu_linear_matches_f_linear_for_every_batch_size(dtype, kind, bias):
    # Every library that can be picked (the pick depends on the CPU), and the pick itself.
    # MKL's packed GEMM gives wrong rows when told a smaller batch than it gets: cover
    # batch sizes on both sides of every packing hint, and awkward shapes.
    torch.manual_seed(0)
    for in_features, out_features in [(64, 96), (256, 64), (576, 1536), (48, 1000)]:
        linear = nn.Linear(in_features, out_features, bias=bias).to(dtype)
        packed = CpuLinear(linear, kind)
        assert kind is None or packed.kind == kind
        for rows in (1, 3, 31, 64, 65, 200, 1000):
            x = torch.randn(rows, in_features, dtype=dtype)
            expected = torch.nn.functional.linear(x.float(), linear.weight.float(),
                                                  None if linear.bias is None else linear.bias.float())
            tolerance = 1e-4 if dtype == torch.float32 else 3e-2
            torch.testing.assert_close(packed(x).float(), expected, rtol=tolerance, atol=tolerance * expected.abs().max().item())


@pytest.mark.parametrize("lengths", [[137], [137, 20, 64]], ids=["one", "three-padded"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("window,alibi", [(None, False), (500, False), (40, False), (None, True)],
                         ids=["causal", "window-wider-than-prompt", "window", "alibi"])
def test_torch_backend_whole_prompts_match_reference(dtype, window, alibi, lengths):
    """Whole prompts (nothing cached before them) take SDPA's mask-free causal path, padded to
    the longest when there are several, unless a sliding window or ALiBi needs the mask; both
    agree with the float64 reference."""
    from vllm_cli.kernels.attention_reference import paged_prefill_attention_ref

    from vllm_cli.attention.backend import SeqBatchInfo
    from vllm_cli.attention.torch_backend import TorchAttentionBackend

    torch.manual_seed(0)
    block_size, num_heads, num_kv_heads, head_dim = 16, 6, 2, 64
    num_blocks = [-(-n // block_size) for n in lengths]
    perm = (torch.randperm(sum(num_blocks) + 5) + 1).tolist()
    tables = [perm[sum(num_blocks[:i]):sum(num_blocks[:i + 1])] for i in range(len(lengths))]
    slots = torch.cat([torch.tensor(t)[torch.arange(n) // block_size] * block_size + torch.arange(n) % block_size
                       for t, n in zip(tables, lengths)])
    k_cache = torch.zeros((len(perm) + 1) * block_size, num_kv_heads, head_dim, dtype=dtype)
    v_cache = torch.zeros_like(k_cache)
    total = sum(lengths)
    q = torch.randn(total, num_heads, head_dim).to(dtype)
    k, v = (torch.randn(total, num_kv_heads, head_dim).to(dtype) for _ in range(2))
    slopes = torch.rand(num_heads) if alibi else None
    backend = TorchAttentionBackend(block_size, torch.device("cpu"))
    meta = backend.build_metadata(SeqBatchInfo(lengths, lengths, tables), slots)
    out = backend.forward(q, k, v, k_cache, v_cache, meta, 0.125, alibi_slopes=slopes, sliding_window=window)
    width = max(num_blocks)
    block_tables = torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.int32)
    cu = torch.tensor([0] + lengths).cumsum(0)
    expected = paged_prefill_attention_ref(q, k_cache, v_cache, block_tables, cu, torch.tensor(lengths), block_size,
                                           0.125, slopes, window)
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out.float(), expected.float(), rtol=tolerance, atol=tolerance)
