"""Rotary position embedding (neox style: rotate halves) and LongRoPE.

Frequencies come from transformers' own rope initialisers, so scaled variants (llama3, linear,
yarn, ...) match the reference implementation. On the CPU, when kernels/cpu.py is built,
`RotaryEmbedding.rotate` turns q and k in place with one kernel call.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from vllm_cli.kernels import cpu as cpu_kernels


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (neox style), any rope type transformers knows."""

    cos_cache: torch.Tensor
    sin_cache: torch.Tensor

    def __init__(self, config: Any, head_dim: int, max_position: int, rotary_dim: int | None = None):
        super().__init__()
        self.head_dim = head_dim
        self.rotary_dim = rotary_dim or head_dim
        inv_freq, self.attention_scaling = _rope_inv_freq(config, self.rotary_dim)
        # Explicit CPU: the model may be built under torch.device("meta"); these are values.
        t = torch.arange(max_position, dtype=torch.float32, device="cpu")
        freqs = torch.outer(t, inv_freq)
        self.register_buffer("cos_cache", freqs.cos() * self.attention_scaling, persistent=False)
        self.register_buffer("sin_cache", freqs.sin() * self.attention_scaling, persistent=False)

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Looked up once per step and shared by every layer."""
        return self.cos_cache[positions].to(dtype), self.sin_cache[positions].to(dtype)

    def rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """apply(), in place when the CPU kernel can take x (one call for q and k together, given
        as one [T, q heads + kv heads, head_dim] view of the fused qkv output), else a new tensor."""
        if (
            cpu_kernels.load() is not None
            and cpu_kernels.supports(x, cos, sin)
            and x.stride(2) == 1
            and x.stride(1) == x.shape[2]
            and cos.is_contiguous()
            and sin.is_contiguous()
        ):
            return cpu_kernels.rotary_neox_(x, cos, sin, self.rotary_dim)
        return self.apply(x, cos, sin)

    def apply(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """x [T, heads, head_dim]; cos/sin [T, rotary_dim / 2]. A new tensor."""
        return rotate_neox(x, cos, sin, self.rotary_dim)


def rotate_neox(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rotary_dim: int) -> torch.Tensor:
    """Neox-style rotary (rotate halves) of the first rotary_dim dims of each head of x [T, heads, D]."""
    x1, x2 = x[..., :rotary_dim].chunk(2, dim=-1)
    c, s = cos[:, None, :], sin[:, None, :]
    rotated = torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1)
    if rotary_dim == x.shape[-1]:
        return rotated
    return torch.cat([rotated, x[..., rotary_dim:]], dim=-1)


def _rope_inv_freq(config: Any, rotary_dim: int) -> tuple[torch.Tensor, float]:
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    rope_type = params.get("rope_type", params.get("type", "default"))
    theta = params.get("rope_theta", getattr(config, "rope_theta", 10000.0))
    if rope_type != "default":
        if rope_type not in ROPE_INIT_FUNCTIONS or rope_type == "dynamic":
            raise ValueError(f"rope type {rope_type!r} is not supported")
        # transformers makes some of its tensors on the default device: the model may be built
        # under torch.device("meta"), where they would have no values (llama3's failed to load).
        with torch.device("cpu"):
            inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope_type](config, "cpu")
        return inv_freq.float().cpu(), float(scaling)
    exponents = torch.arange(0, rotary_dim, 2, dtype=torch.int64, device="cpu").float() / rotary_dim
    inv_freq = 1.0 / (theta**exponents)
    return inv_freq, 1.0


def partial_rotary_dim(config: Any, head_dim: int) -> int:
    """Rotated dims per head: head_dim * partial_rotary_factor (GPT-NeoX's rotary_pct, Phi-4-mini)."""
    params = getattr(config, "rope_parameters", None) or {}
    factor = params.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", 1.0))
    return int(head_dim * factor)


class LongRopeRotaryEmbedding(RotaryEmbedding):
    """LongRoPE (Phi-3 128k, Phi-3.5, Phi-4-mini): one factor set for every token, as vLLM does:
    the long factors when a sequence may grow past original_max_position_embeddings (the default,
    max_model_len = max_position_embeddings), the short ones when `set_max_model_len` says none can.

    transformers uses the short factors for a sequence within the original length and the long
    ones for a longer sequence (re-computing its cache when it crosses that length), so each
    choice gives its results exactly for the sequences of its own regime.
    """

    long_cos_cache: torch.Tensor
    long_sin_cache: torch.Tensor

    def __init__(self, config: Any, head_dim: int, max_position: int, rotary_dim: int | None = None):
        super().__init__(config, head_dim, max_position, rotary_dim)  # short factors: cos_cache/sin_cache
        self.original_max_position = int(config.rope_parameters["original_max_position_embeddings"])
        long_inv_freq, _ = ROPE_INIT_FUNCTIONS["longrope"](config, "cpu", seq_len=self.original_max_position + 1)
        freqs = torch.outer(torch.arange(max_position, dtype=torch.float32, device="cpu"), long_inv_freq.float().cpu())
        self.register_buffer("long_cos_cache", freqs.cos() * self.attention_scaling, persistent=False)
        self.register_buffer("long_sin_cache", freqs.sin() * self.attention_scaling, persistent=False)
        self.set_max_model_len(max_position)

    def set_max_model_len(self, max_model_len: int) -> None:
        self.use_long = max_model_len > self.original_max_position

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.use_long:
            return super().cos_sin(positions, dtype)
        return self.long_cos_cache[positions].to(dtype), self.long_sin_cache[positions].to(dtype)


def get_rotary_embedding(
    config: Any, head_dim: int, max_position: int, rotary_dim: int | None = None
) -> RotaryEmbedding:
    """LongRoPE for a config whose rope_type says so, else the plain (or transformers-scaled) one."""
    params = getattr(config, "rope_parameters", None) or {}
    cls = LongRopeRotaryEmbedding if params.get("rope_type") == "longrope" else RotaryEmbedding
    return cls(config, head_dim, max_position, rotary_dim)
