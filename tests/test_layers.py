"""Layers with more than one implementation: each against plain torch."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vllm_cli.model_executor.layers.common import CpuLinear, cpu_linear_kinds


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
