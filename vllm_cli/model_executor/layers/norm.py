"""RMSNorm: one C kernel call on the CPU (kernels/cpu.py) when it is built, else torch ops."""

from __future__ import annotations

import torch
from torch import nn

from vllm_cli.kernels import cpu as cpu_kernels


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Computed in float32 as transformers does, whatever the model dtype, then rounded to it."""
    x32 = x.float()
    return weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # One kernel call on the CPU instead of eight ops (kernels/cpu.py), same rounding steps.
        if cpu_kernels.load() is not None and cpu_kernels.supports(x, self.weight) and x.stride(-1) == 1:
            return cpu_kernels.rms_norm(x, self.weight, self.eps)
        return rms_norm(x, self.weight, self.eps)

    def add_forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """residual += x in place (the residual stream; rounded as `residual + x`), then the norm of
        it: one kernel call on the CPU where `residual = residual + x; norm(residual)` is three ops."""
        if (
            cpu_kernels.load() is not None
            and x.dim() == 2
            and cpu_kernels.supports(x, residual, self.weight)
            and x.stride(-1) == 1
            and residual.stride(-1) == 1
        ):
            return cpu_kernels.add_rms_norm_(x, residual, self.weight, self.eps)
        return self.forward(residual.add_(x))
