"""ALiBi slopes (MPT, BLOOM): the attention backends add slope_h * (key_pos - query_pos)."""

from __future__ import annotations

import math

import torch


def alibi_slopes(num_heads: int, alibi_bias_max: float = 8.0) -> torch.Tensor:
    """ALiBi slopes for any head count (non-powers of two interleave, as in MPT / BLOOM)."""
    n = 2 ** math.ceil(math.log2(num_heads))
    m = torch.arange(1, n + 1, dtype=torch.float32, device="cpu") * (alibi_bias_max / n)
    slopes = 1.0 / torch.pow(2, m)
    if n != num_heads:
        slopes = torch.cat([slopes[1::2], slopes[::2]])[:num_heads]
    return slopes
