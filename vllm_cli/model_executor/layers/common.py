"""Small layers shared by the model implementations: norms, rotary embedding, activations."""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from vllm_cli.distributed.parallel_state import all_reduce, get_tp_size
from vllm_cli.kernels import cpu as cpu_kernels
from vllm_cli.logger import init_logger

logger = init_logger(__name__)


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


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (neox style: rotate halves), any rope type transformers knows.

    Frequencies come from transformers' own rope initialisers, so scaled variants (llama3,
    linear, yarn, ...) match the reference implementation.
    """

    def __init__(self, config, head_dim: int, max_position: int, rotary_dim: int | None = None):
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
        if (cpu_kernels.load() is not None and cpu_kernels.supports(x, cos, sin) and x.stride(2) == 1
                and x.stride(1) == x.shape[2] and cos.is_contiguous() and sin.is_contiguous()):
            return cpu_kernels.rotary_neox_(x, cos, sin, self.rotary_dim)
        return self.apply(x, cos, sin)

    def apply(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
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


def _rope_inv_freq(config, rotary_dim: int) -> tuple[torch.Tensor, float]:
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    rope_type = params.get("rope_type", params.get("type", "default"))
    theta = params.get("rope_theta", getattr(config, "rope_theta", 10000.0))
    if rope_type != "default":
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

        if rope_type not in ROPE_INIT_FUNCTIONS or rope_type == "dynamic":
            raise ValueError(f"rope type {rope_type!r} is not supported")
        inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope_type](config, "cpu")
        return inv_freq.float().cpu(), float(scaling)
    exponents = torch.arange(0, rotary_dim, 2, dtype=torch.int64, device="cpu").float() / rotary_dim
    inv_freq = 1.0 / (theta**exponents)
    return inv_freq, 1.0


def alibi_slopes(num_heads: int, alibi_bias_max: float = 8.0) -> torch.Tensor:
    """ALiBi slopes for any head count (non-powers of two interleave, as in MPT / BLOOM)."""
    n = 2 ** math.ceil(math.log2(num_heads))
    m = torch.arange(1, n + 1, dtype=torch.float32, device="cpu") * (alibi_bias_max / n)
    slopes = 1.0 / torch.pow(2, m)
    if n != num_heads:
        slopes = torch.cat([slopes[1::2], slopes[::2]])[:num_heads]
    return slopes


class CpuLinear(nn.Module):
    """A linear layer whose weight is prepacked for the CPU GEMM libraries.

    Which library is fastest depends on the CPU, by a wide margin: at decode batch sizes MKL's
    packed sgemm beat F.linear by 1.2-1.6x in float32 on an Intel Xeon (AVX-512/AMX), while on
    an AMD EPYC (Zen 5) MKL runs 2.5-3x slower than oneDNN. So each weight shape is packed for
    every library that computes it correctly and the fastest, timed once on this machine at a
    decode-sized batch, is kept (`_pack_for_cpu`). Where no library is there, the weight is at
    least stored [in, out], which the GEMM prefers. Built from a loaded nn.Linear by
    `optimize_linears_for_cpu`; the original weight is freed. A row-parallel linear keeps its
    all-reduce: the partial product is summed over the ranks before the bias is added.
    """

    def __init__(self, linear: nn.Linear, kind: str | None = None):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.reduce_output = bool(getattr(linear, "reduce_output", False)) and get_tp_size() > 1
        weight = linear.weight.detach()
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)
        self.kind, self.packed = _pack_for_cpu(weight, kind)
        if self.kind == "mkl":
            # MKL only reads the original weight's shape: a zero-stride stand-in costs no memory.
            self.shape_only = torch.empty_strided(tuple(weight.shape), (0, 0), dtype=weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reduce_output:
            out = all_reduce(self._matmul(x, None))
            return out if self.bias is None else out + self.bias
        return self._matmul(x, self.bias)

    def _matmul(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return _run_packed(self.kind, x, self.packed, bias, getattr(self, "shape_only", None))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, kernel={self.kind}")


def _run_packed(kind: str, x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None,
                shape_only: torch.Tensor | None) -> torch.Tensor:
    if kind == "mkl":
        return torch.ops.mkl._mkl_linear(x, packed, shape_only, bias, x.shape[0])
    if kind == "mkldnn":
        return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
    if bias is None:
        return x @ packed
    return torch.addmm(bias, x, packed)


def cpu_linear_kinds(dtype: torch.dtype) -> list[str]:
    """The prepacked GEMM libraries this torch build offers for dtype, then the plain fallback."""
    kinds = []
    if dtype == torch.float32 and torch.backends.mkl.is_available():
        kinds.append("mkl")
    if dtype in (torch.float32, torch.bfloat16) and torch.backends.mkldnn.is_available():
        kinds.append("mkldnn")
    return kinds + ["matmul"]


def _pack(kind: str, weight: torch.Tensor) -> torch.Tensor:
    if kind == "mkl":
        return torch.ops.mkl._mkl_reorder_linear_weight(weight, 64)
    if kind == "mkldnn":
        return torch.ops.mkldnn._reorder_linear_weight(weight, 64)
    return weight.t().contiguous()


# (dtype, in_features, out_features) -> the fastest correct kind, timed once per process
_FASTEST_KIND: dict[tuple, str] = {}
_DECODE_PROBE_ROWS = 32


def _pack_for_cpu(weight: torch.Tensor, kind: str | None = None) -> tuple[str, torch.Tensor]:
    """(kernel, packed weight): the given kind, else the fastest one for this shape that matches
    F.linear (each packing is checked against it: a library missing from this build, or one that
    mis-computes a shape, is skipped)."""
    if kind is not None:
        return kind, _pack(kind, weight)
    key = (weight.dtype, weight.shape[1], weight.shape[0])
    if key in _FASTEST_KIND:
        return _FASTEST_KIND[key], _pack(_FASTEST_KIND[key], weight)
    probe = torch.randn(_DECODE_PROBE_ROWS, weight.shape[1], dtype=weight.dtype)
    expected = F.linear(probe.float(), weight.float())
    tolerance = 1e-3 if weight.dtype == torch.float32 else 5e-2
    best = None  # (seconds, kind, packed)
    for candidate in cpu_linear_kinds(weight.dtype):
        try:
            packed = _pack(candidate, weight)
            shape_only = torch.empty_strided(tuple(weight.shape), (0, 0), dtype=weight.dtype)
            run = lambda: _run_packed(candidate, probe, packed, None, shape_only)  # noqa: E731
            if not torch.allclose(run().float(), expected, rtol=tolerance, atol=tolerance * expected.abs().max().item()):
                continue
        except (RuntimeError, AttributeError):  # op missing from this torch build
            continue
        seconds = _best_time(run)
        # a clear margin to switch, so that near-ties do not flip between runs
        if best is None or seconds < 0.9 * best[0]:
            best = (seconds, candidate, packed)
        del packed
    _FASTEST_KIND[key] = best[1]
    return best[1], best[2]


def _best_time(run, repeats: int = 3) -> float:
    run()  # warm: first calls allocate scratch space
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def optimize_linears_for_cpu(model: nn.Module) -> None:
    """Swap every nn.Linear for a CpuLinear (after the weights are loaded), one at a time, so
    each original weight is freed as soon as its packed copy exists (peak: one layer extra)."""
    replace_linears(model, lambda linear: CpuLinear(linear))
    log_cpu_linear_kinds(model)


_KIND_NAMES = {"mkl": "MKL packed sgemm", "mkldnn": "oneDNN", "matmul": "torch matmul"}


def log_cpu_linear_kinds(model: nn.Module) -> None:
    """One line: which GEMM library the linears run on (the fastest measured for each shape)."""
    counts: dict[str, int] = {}
    for module in model.modules():
        if isinstance(module, CpuLinear):
            counts[module.kind] = counts.get(module.kind, 0) + 1
    if counts:
        logger.info("CPU linears: %s (the fastest correct library, timed once per weight shape)",
                    ", ".join(f"{n} on {_KIND_NAMES[k]}" for k, n in sorted(counts.items(), key=lambda kv: -kv[1])))


def replace_linears(model: nn.Module, make) -> None:
    """Swap every plain nn.Linear and every tensor-parallel linear (not other subclasses of
    nn.Linear, whose forward may differ) for make(linear)."""
    from vllm_cli.model_executor.layers.linear import ParallelLinearBase

    # (parent, name) pairs only: holding the Linear modules themselves would keep every
    # original weight alive until the end, doubling peak memory (13 GB more for a 7B model).
    targets = [(module, name) for module in model.modules() for name, child in module.named_children()
               if type(child) is nn.Linear or isinstance(child, ParallelLinearBase)]
    for module, name in targets:
        setattr(module, name, make(getattr(module, name)))


_ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
}


def get_act_fn(name: str):
    """An activation by its transformers name (`hidden_act`, `activation_function`)."""
    if name in _ACTIVATIONS:
        return _ACTIVATIONS[name]
    from transformers.activations import ACT2FN

    if name not in ACT2FN:
        raise ValueError(f"activation {name!r} is not supported")
    return ACT2FN[name]


def ungroup_qkv(fused: torch.Tensor, num_kv_heads: int, head_dim: int) -> torch.Tensor:
    """Reorder a fused QKV weight/bias stored per KV group, [kv, (q heads of the group, k, v), head_dim]
    (GPT-NeoX: one head per group; Falcon: any grouping), into [all q; all k; all v]."""
    rest = fused.shape[1:]
    grouped = fused.reshape(num_kv_heads, -1, head_dim, *rest)
    q, k, v = grouped[:, :-2], grouped[:, -2], grouped[:, -1]
    return torch.cat([q.reshape(-1, *rest), k.reshape(-1, *rest), v.reshape(-1, *rest)])


def partial_rotary_dim(config, head_dim: int) -> int:
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

    def __init__(self, config, head_dim: int, max_position: int, rotary_dim: int | None = None):
        super().__init__(config, head_dim, max_position, rotary_dim)  # short factors: cos_cache/sin_cache
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

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


def get_rotary_embedding(config, head_dim: int, max_position: int, rotary_dim: int | None = None) -> RotaryEmbedding:
    params = getattr(config, "rope_parameters", None) or {}
    cls = LongRopeRotaryEmbedding if params.get("rope_type") == "longrope" else RotaryEmbedding
    return cls(config, head_dim, max_position, rotary_dim)
