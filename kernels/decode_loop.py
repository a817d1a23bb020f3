"""The decode step of a Llama-family model in one C call (decode_loop.c; issue 19's fixed cost).

`DecodeLoop` holds what a model hands over once after load (per layer: the norms' weights, the
KV caches, the sliding window, and each linear as kernel parts, function pointers with the ABI of
`gguf_matmul_<type>`) packed into one int64 tensor in decode_loop.c's layout, and scratch
buffers; `run` is then one ctypes call per step with the step's own data only.

VLLM_CLI_DECODE_LOOP=0 turns it off (the models keep their torch path: for A/B runs), as does
VLLM_CLI_CPU_KERNELS=0 (no library at all).
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass

import torch
from vllm_cli.kernels import cpu

DECODE_LOOP_ENV = "VLLM_CLI_DECODE_LOOP"

# decode_loop.c's descriptor layout (checked against the library's own constants when bound)
MAX_PARTS = 4
_PART_WORDS = 5
_LINEAR_WORDS = 3 + _PART_WORDS * MAX_PARTS
_LAYER_HEADER = 5  # input norm, post-attention norm, K cache, V cache, sliding window
_LAYER_WORDS = _LAYER_HEADER + 4 * _LINEAR_WORDS

_i64, _ptr, _f32 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_float
_DECODE_LAYERS_SIGNATURE = [
    *(_i64, _ptr, _i64),  # layers, their descriptors, S
    *(_i64, _i64, _i64, _i64, _i64, _i64),  # hidden, heads, KV heads, head dim, rotary dims, intermediate
    *(_f32, _f32, _i64, _i64, _i64),  # eps, scale, block size, chunk, bf16 cache
    *(_ptr, _ptr, _ptr, _ptr, _ptr, _i64, _ptr, _ptr),  # hidden, cos, sin, slots, tables, stride, lens, scratch
]
_bound: dict[str, ctypes._CFuncPtr] = {}


def enabled() -> bool:
    """The loop may run: the CPU library is built and VLLM_CLI_DECODE_LOOP is not off."""
    if os.environ.get(DECODE_LOOP_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    return _functions() is not None


def _functions() -> dict[str, ctypes._CFuncPtr] | None:
    library = cpu.load()
    if library is None:
        return None
    if not _bound:
        for name, result in (("decode_layer_words", _i64), ("decode_linear_words", _i64), ("decode_max_parts", _i64)):
            fn = getattr(library, name)
            fn.argtypes, fn.restype = [], result
            _bound[name] = fn
        layout = (_bound["decode_layer_words"](), _bound["decode_linear_words"](), _bound["decode_max_parts"]())
        assert layout == (_LAYER_WORDS, _LINEAR_WORDS, MAX_PARTS), f"decode_loop.c's layout changed: {layout}"
        fn = library.decode_layers
        fn.argtypes, fn.restype = _DECODE_LAYERS_SIGNATURE, None
        _bound["decode_layers"] = fn
        fn = library.decode_scratch_floats
        fn.argtypes, fn.restype = [_i64] * 6, _i64
        _bound["decode_scratch_floats"] = fn
        for suffix in ("f32", "bf16"):
            _bound[f"decode_matmul_{suffix}"] = getattr(library, f"decode_matmul_{suffix}")
    return _bound


def float_matmul_address(dtype: torch.dtype) -> int | None:
    """The address of decode_loop.c's matmul on plain row-major weights [n, k] of dtype (float32 or
    bfloat16), in the kernel-part ABI; None without the library or for another dtype."""
    functions = _functions()
    suffix = {torch.float32: "f32", torch.bfloat16: "bf16"}.get(dtype)
    if functions is None or suffix is None:
        return None
    return cpu.function_address(functions[f"decode_matmul_{suffix}"])


@dataclass(frozen=True)
class LinearDescriptor:
    """One linear for the loop: parts as (fn, weight address, rows, in_features, first column); the
    caller keeps the weights (and the bias, float32 contiguous [out_features]) alive."""

    parts: list[tuple[int, int, int, int, int]]
    out_features: int
    bias: torch.Tensor | None = None

    def words(self) -> list[int]:
        assert 0 < len(self.parts) <= MAX_PARTS
        words = [len(self.parts), self.out_features, 0 if self.bias is None else self.bias.data_ptr()]
        for part in self.parts:
            words += part
        return words + [0] * (_LINEAR_WORDS - len(words))


@dataclass(frozen=True)
class LayerDescriptor:
    input_norm: torch.Tensor  # float32 [hidden]
    post_norm: torch.Tensor  # float32 [hidden]
    k_cache: torch.Tensor  # [slots, KV heads, head dim], contiguous, float32 or bfloat16
    v_cache: torch.Tensor
    sliding_window: int  # 0: none
    qkv: LinearDescriptor
    o: LinearDescriptor
    gate_up: LinearDescriptor
    down: LinearDescriptor


class DecodeLoop:
    """All decoder layers of a step of single-token sequences, in one C call (decode_loop.c)."""

    def __init__(
        self,
        layers: list[LayerDescriptor],
        *,
        hidden_size: int,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        rotary_dim: int,
        intermediate_size: int,
        eps: float,
        scale: float,
    ):
        functions = _functions()
        assert functions is not None
        self._decode_layers = functions["decode_layers"]
        self._scratch_floats = functions["decode_scratch_floats"]
        cache_dtype = layers[0].k_cache.dtype
        assert cache_dtype in (torch.float32, torch.bfloat16)
        words: list[int] = []
        for layer in layers:
            for t in (layer.input_norm, layer.post_norm):
                assert t.dtype == torch.float32 and t.is_contiguous() and t.numel() == hidden_size
            for t in (layer.k_cache, layer.v_cache):
                assert t.dtype == cache_dtype and t.is_contiguous() and t.shape[1:] == (num_kv_heads, head_dim)
            words += [layer.input_norm.data_ptr(), layer.post_norm.data_ptr()]
            words += [layer.k_cache.data_ptr(), layer.v_cache.data_ptr(), layer.sliding_window]
            for linear in (layer.qkv, layer.o, layer.gate_up, layer.down):
                words += linear.words()
        self.layers = layers  # keeps the norms and biases alive
        self.descriptors = torch.tensor(words, dtype=torch.int64)
        self.sizes = (hidden_size, num_heads, num_kv_heads, head_dim, rotary_dim, intermediate_size)
        self.eps, self.scale, self.cache_bf16 = eps, scale, int(cache_dtype == torch.bfloat16)
        self.scratch = torch.empty(0, dtype=torch.float32)
        self.scratch_rows = 0

    def run(
        self,
        hidden: torch.Tensor,
        cos: torch.Tensor | None,
        sin: torch.Tensor | None,
        slots: torch.Tensor,
        block_tables: torch.Tensor,
        context_lens: torch.Tensor,
        block_size: int,
    ) -> None:
        """hidden float32 [S, hidden] contiguous (the embeddings) becomes, in place, what the layers
        return: the last residual plus the last MLP output. cos/sin [S, rotary dims / 2] in the
        cache's dtype (contiguous), slots int64 [S], block tables int32 [S, blocks] and context
        lengths int32 [S] (CpuDecodeMetadata's)."""
        num_seqs = hidden.shape[0]
        hidden_size, num_heads, num_kv_heads, head_dim, rotary_dim, intermediate = self.sizes
        if num_seqs > self.scratch_rows:  # grown once to the largest batch seen
            rows = max(num_seqs, 2 * self.scratch_rows)
            floats = self._scratch_floats(rows, hidden_size, num_heads, num_kv_heads, head_dim, intermediate)
            self.scratch, self.scratch_rows = torch.empty(floats, dtype=torch.float32), rows
        self._decode_layers(
            len(self.layers),
            self.descriptors.data_ptr(),
            num_seqs,
            *self.sizes,
            self.eps,
            self.scale,
            block_size,
            cpu.DECODE_CHUNK,
            self.cache_bf16,
            hidden.data_ptr(),
            None if cos is None else cos.data_ptr(),
            None if sin is None else sin.data_ptr(),
            slots.data_ptr(),
            block_tables.data_ptr(),
            block_tables.stride(0),
            context_lens.data_ptr(),
            self.scratch.data_ptr(),
        )
