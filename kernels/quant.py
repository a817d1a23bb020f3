"""Weights in GGUF's quantized block formats: the type table, and the C kernels of quant_ops.c (Q8_0,
Q4_0, Q4_1) and quant_kquants.c (Q4_K, Q5_K, Q6_K, Q5_0, Q5_1) bound by their names (both run many-row
matmuls through quant_gemm.c's dequantize-a-panel GEMM).

A type is supported when the CPU library has both of its entry points,
`gguf_dequantize_<name>` and `gguf_matmul_<name>`; any other type (or every type, when the library
is not built) is dequantized at load by the caller. A quantized weight is a uint8 tensor
[out_features, in_features / block_elems * block_bytes]: each row its blocks, exactly as ggml lays
them out, so rows can be sliced (tensor-parallel column split) and gathered (embedding lookups)
as bytes.

`quantize` packs a float weight into Q8_0 or Q4_1 (the --quantization int8 / int4 paths), bit for
bit as gguf.quants.quantize (and ggml's reference quantizers) do.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import torch
from vllm_cli.kernels import cpu


@dataclass(frozen=True)
class QuantType:
    name: str  # ggml's name, lower case: the suffix of the C entry points
    ggml_type: int  # GGMLQuantizationType value
    block_elems: int
    block_bytes: int

    def row_bytes(self, in_features: int) -> int:
        return in_features // self.block_elems * self.block_bytes


QUANT_TYPES: dict[str, QuantType] = {
    t.name: t
    for t in (
        QuantType("q4_0", 2, 32, 18),
        QuantType("q4_1", 3, 32, 20),
        QuantType("q5_0", 6, 32, 22),  # llama.cpp's K-quant files use these for rows not a multiple of 256
        QuantType("q5_1", 7, 32, 24),
        QuantType("q8_0", 8, 32, 34),
        QuantType("q4_k", 12, 256, 144),
        QuantType("q5_k", 13, 256, 176),
        QuantType("q6_k", 14, 256, 210),
    )
}
_BY_GGML_TYPE = {t.ggml_type: t for t in QUANT_TYPES.values()}


def quant_type(qtype: str | int) -> QuantType:
    """The table entry for a name ("q4_1") or a ggml type id (3); KeyError for any other."""
    if isinstance(qtype, int):
        return _BY_GGML_TYPE[qtype]
    return QUANT_TYPES[qtype.lower()]


_i64, _ptr = ctypes.c_int64, ctypes.c_void_p
_DEQUANTIZE_SIGNATURE = [_ptr, _ptr, _i64]
_MATMUL_SIGNATURE = [_ptr, _i64, _i64, _ptr, _i64, _ptr]


def _functions(library: ctypes.CDLL | None = None) -> dict[str, tuple[ctypes._CFuncPtr, ctypes._CFuncPtr]]:
    """{type name: (dequantize, matmul)} of the library (cpu.load()'s or a test's variant)."""
    return cpu.bound_per_library("gguf", library, _bind_gguf, {})


def _bind_gguf(library: ctypes.CDLL) -> dict[str, tuple[ctypes._CFuncPtr, ctypes._CFuncPtr]]:
    functions = {}
    for name in QUANT_TYPES:
        try:
            dequantize_fn = getattr(library, f"gguf_dequantize_{name}")
            matmul_fn = getattr(library, f"gguf_matmul_{name}")
        except AttributeError:  # not in this build (e.g. the K-quants' source is absent)
            continue
        dequantize_fn.argtypes, dequantize_fn.restype = _DEQUANTIZE_SIGNATURE, None
        matmul_fn.argtypes, matmul_fn.restype = _MATMUL_SIGNATURE, None
        functions[name] = (dequantize_fn, matmul_fn)
    return functions


def supported_types(library: ctypes.CDLL | None = None) -> list[str]:
    """The types whose weights can stay quantized: both C entry points present in the library."""
    return sorted(_functions(library))


def is_supported(qtype: str, library: ctypes.CDLL | None = None) -> bool:
    return qtype in _functions(library)


def matmul_address(qtype: str) -> int | None:
    """The address of `gguf_matmul_<qtype>` in the CPU library (for C code that calls it: the decode
    loop), or None when the library lacks it."""
    functions = _functions().get(qtype)
    return None if functions is None else cpu.function_address(functions[1])


def _check_blocks(qweight: torch.Tensor, qt: QuantType, rows: int, in_features: int) -> None:
    if in_features % qt.block_elems:
        raise ValueError(f"{qt.name}: {in_features} input features are not a whole number of {qt.block_elems}-blocks")
    want = rows * qt.row_bytes(in_features)
    if qweight.dtype != torch.uint8 or not qweight.is_contiguous() or qweight.numel() != want:
        raise ValueError(
            f"{qt.name} weight: expected {want} contiguous uint8 bytes for [{rows}, {in_features}], got "
            f"{qweight.numel()} {qweight.dtype}{'' if qweight.is_contiguous() else ' (not contiguous)'}"
        )


def quantized_matmul(
    x: torch.Tensor,
    qweight: torch.Tensor,
    qtype: str,
    out_features: int,
    in_features: int,
    *,
    out: torch.Tensor | None = None,
    library: ctypes.CDLL | None = None,
) -> torch.Tensor:
    """x [..., in_features] @ dequantize(qweight)^T -> [..., out_features] in x's dtype; computed in float32.

    `out`, if given: a contiguous float32 [rows of x, out_features] tensor the result is written to
    (and returned as is, float32 and 2-D)."""
    qt = quant_type(qtype)
    _check_blocks(qweight, qt, out_features, in_features)
    matmul = _functions(library)[qt.name][1]
    lead = x.shape[:-1]
    x2 = x.reshape(-1, in_features).to(torch.float32).contiguous()
    m = x2.shape[0]
    if out is None:
        y = torch.empty((m, out_features), dtype=torch.float32)
    else:
        assert out.dtype == torch.float32 and out.is_contiguous() and tuple(out.shape) == (m, out_features)
        y = out
    matmul(x2.data_ptr(), m, in_features, qweight.data_ptr(), out_features, y.data_ptr())
    if out is not None:
        return y
    return y.view(*lead, out_features).to(x.dtype)


def dequantize(
    qweight: torch.Tensor, qtype: str, shape: tuple[int, ...] | torch.Size, *, library: ctypes.CDLL | None = None
) -> torch.Tensor:
    """The float32 tensor of `shape` (last dimension: whole blocks) that qweight's blocks encode."""
    qt = quant_type(qtype)
    shape = tuple(shape)
    rows = 1
    for size in shape[:-1]:
        rows *= size
    _check_blocks(qweight, qt, rows, shape[-1])
    out = torch.empty(shape, dtype=torch.float32)
    _functions(library)[qt.name][0](qweight.data_ptr(), out.data_ptr(), out.numel())
    return out


# ------------------------------------------------------------------------------------- quantizing

# --quantization -> the block format float weights are packed into at load
QUANTIZE_FORMATS = {"int8": "q8_0", "int4": "q4_1"}


def _roundf(x: torch.Tensor) -> torch.Tensor:
    """C's roundf (half away from zero), which ggml's quantizers use; torch.round rounds half to even."""
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


# quantize() works through this many weights at a time: its float32 temporaries stay ~16 MB each, where a
# whole LM head at once (Llama-3.2-1B's, 1 GB in float32) took several GB more at load
_QUANTIZE_CHUNK = 1 << 22


def quantize(weight: torch.Tensor, qtype: str) -> torch.Tensor:
    """A float weight [rows, in_features] (in_features a multiple of 32) -> uint8 blocks in qtype
    ("q8_0": symmetric int8 per group of 32; "q4_1": 4-bit with a per-group scale and minimum)."""
    qt = quant_type(qtype)
    rows, in_features = weight.shape
    if in_features % qt.block_elems:
        raise ValueError(f"{in_features} input features are not a multiple of the {qt.block_elems}-weight groups")
    out = torch.empty((rows, qt.row_bytes(in_features)), dtype=torch.uint8)
    step = max(1, _QUANTIZE_CHUNK // in_features)
    for start in range(0, rows, step):
        chunk = weight[start : start + step]
        out[start : start + chunk.shape[0]] = _quantize_blocks(chunk, qt).reshape(chunk.shape[0], -1)
    return out


def _quantize_blocks(weight: torch.Tensor, qt: QuantType) -> torch.Tensor:
    blocks = weight.detach().to(torch.float32).reshape(-1, qt.block_elems)
    if qt.name == "q8_0":
        d = blocks.abs().amax(dim=1, keepdim=True) / 127
        inverse = torch.where(d == 0, torch.zeros_like(d), 1 / d)
        qs = _roundf(blocks * inverse).to(torch.int8).view(torch.uint8)
        packed = torch.cat([d.to(torch.float16).view(torch.uint8), qs], dim=1)
    elif qt.name == "q4_1":
        high, low = blocks.amax(dim=1, keepdim=True), blocks.amin(dim=1, keepdim=True)
        d = (high - low) / 15
        inverse = torch.where(d == 0, torch.zeros_like(d), 1 / d)
        q = torch.trunc((blocks - low) * inverse + 0.5).clamp(0, 15).to(torch.uint8)
        nibbles = q[:, :16] | (q[:, 16:] << 4)
        packed = torch.cat([d.to(torch.float16).view(torch.uint8), low.to(torch.float16).view(torch.uint8), nibbles], 1)
    else:
        raise ValueError(f"quantizing to {qt.name} is not implemented (only {', '.join(QUANTIZE_FORMATS.values())})")
    return packed
