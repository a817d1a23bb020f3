"""The one place the attention backend is chosen: by device and flags, once, when the runner is built."""

from __future__ import annotations

import os

import torch

from vllm_cli.attention.backend import AttentionBackend
from vllm_cli.attention.cpu_backend import CpuAttentionBackend
from vllm_cli.attention.torch_backend import TorchAttentionBackend
from vllm_cli.attention.triton_backend import TritonAttentionBackend
from vllm_cli.config import ATTENTION_BACKENDS
from vllm_cli.kernels import cpu as cpu_kernels

ATTENTION_BACKEND_ENV = "VLLM_CLI_ATTENTION_BACKEND"


def get_attention_backend(
    name: str, block_size: int, device: torch.device, dtype: torch.dtype | None = None
) -> AttentionBackend:
    """torch | triton | auto (--attention-backend): auto means the environment variable
    VLLM_CLI_ATTENTION_BACKEND if set, else torch. torch on the CPU, when kernels/cpu.py's C kernels
    are built (not with VLLM_CLI_CPU_KERNELS=0, nor without a compiler), is CpuAttentionBackend
    (dtype, the model's: whether its decode steps can run on the fused kernels)."""
    if name == "auto":
        name = os.environ.get(ATTENTION_BACKEND_ENV, "").strip().lower() or "auto"
        if name not in ATTENTION_BACKENDS:
            raise ValueError(f"{ATTENTION_BACKEND_ENV} must be one of {', '.join(ATTENTION_BACKENDS)}, got {name!r}")
    if name == "auto":
        # torch everywhere until the Triton kernels have been verified on a real GPU (they are
        # proven under TRITON_INTERPRET=1 and compiled for sm_90, never yet run on one):
        # --attention-backend triton opts in.
        name = "torch"
    if name == "torch":
        device = torch.device(device)
        if device.type == "cpu" and cpu_kernels.load() is not None:
            return CpuAttentionBackend(block_size, device, dtype)
        return TorchAttentionBackend(block_size, device)
    if name == "triton":
        return TritonAttentionBackend(block_size, torch.device(device))
    raise ValueError(f"unknown attention backend {name!r}; available: {', '.join(ATTENTION_BACKENDS)}")
