"""Activations by their transformers names, and the fused gate/up SiLU of the Llama MLP."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from transformers.activations import ACT2FN

from vllm_cli.kernels import cpu as cpu_kernels


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """[T, 2N] = [gate | up] -> silu(gate) * up: on the CPU one C call and one pass (its rows over
    torch's threads for large inputs) where torch's chunk + silu + mul is three dispatches and two
    passes."""
    if (
        gate_up.dim() == 2
        and cpu_kernels.load() is not None
        and cpu_kernels.supports(gate_up)
        and gate_up.stride(1) == 1
    ):
        return cpu_kernels.silu_and_mul(gate_up)
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


# torch's functions for the common names; anything else comes from transformers' ACT2FN
_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,
    "gelu_new": _gelu_tanh,
    "gelu_pytorch_tanh": _gelu_tanh,
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
}


def get_act_fn(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """An activation by its transformers name (`hidden_act`, `activation_function`)."""
    if name in _ACTIVATIONS:
        return _ACTIVATIONS[name]
    if name not in ACT2FN:
        raise ValueError(f"activation {name!r} is not supported")
    return ACT2FN[name]
