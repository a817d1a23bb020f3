"""The contract between a linear layer's weights and C code that runs the layer itself (issue 19:
the decode loop in C, which calls each linear's kernel without a trip through Python).

Every C matmul of kernels/ that takes weights in a layout of its own has one ABI, the one of
`gguf_matmul_<type>` (kernels/quant.py):

    void fn(const float *x, int64_t m, int64_t k, const uint8_t *w, int64_t n, float *y);

x: float32 [m, k] contiguous; w: the weight's bytes, n output rows of k inputs in the kernel's
layout; y: float32 [m, n] contiguous, overwritten. A call may open its own OpenMP region: it is
made from one thread.

A linear layer that can be run that way answers `kernel_parts()` with the parts its output is
made of (a fused QKV of three GGUF tensors: three parts, each writing its columns), or None when
some part has no such kernel (the caller then keeps the torch path for the whole model).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class KernelPart:
    fn: int  # address of a C function with the ABI above (kernels/cpu.py's function_address)
    weight: torch.Tensor  # the weight's bytes in fn's layout (held here so the address stays valid)
    rows: int  # n: the output columns this part computes
    in_features: int  # k
    offset: int  # the first output column it writes

    @property
    def weight_address(self) -> int:
        return int(self.weight.data_ptr())
