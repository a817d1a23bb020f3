"""The kernels of kernels/quant_kquants.c (Q4_K, Q5_K, Q6_K: what Q4_K_M / Q5_K_M GGUF files hold; and
Q5_0, Q5_1, llama.cpp's fallback for rows that are no whole number of 256-weight blocks) against the
gguf package's numpy dequantization: random but valid blocks (every byte random, the f16 scales
finite, subnormals and zero included), dequantized exactly as gguf does, and the matmul equal to
"gguf dequantize, then a float matmul" for decode (m <= 4, weights dequantized in registers) and
batch (m > 4, quant_gemm.c's panels) shapes. Each build is checked: the native one (AVX-512 here),
x86-64-v3 (the AVX2 path) and x86-64 (the plain C fallback)."""

from __future__ import annotations

import ctypes
import platform

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, quants
from vllm_cli.kernels import cpu

if cpu._compiler() is None:
    pytest.skip("no C compiler on this machine: the CPU kernels are not built", allow_module_level=True)

# type -> (gguf type, weights per block, bytes per block, offsets of its f16 scales)
TYPES = {
    "q4_k": (GGMLQuantizationType.Q4_K, 256, 144, (0, 2)),
    "q5_k": (GGMLQuantizationType.Q5_K, 256, 176, (0, 2)),
    "q6_k": (GGMLQuantizationType.Q6_K, 256, 210, (208,)),
    "q5_0": (GGMLQuantizationType.Q5_0, 32, 22, (0,)),
    "q5_1": (GGMLQuantizationType.Q5_1, 32, 24, (0, 2)),
}
X86 = platform.machine() in ("x86_64", "AMD64")
BUILDS = ["native", *(["x86-64-v3", "x86-64"] if X86 else [])]

_libraries: dict[str, ctypes.CDLL] = {}


def library(build: str) -> ctypes.CDLL:
    """The kernel library of one build, its gguf_* entry points typed."""
    if build not in _libraries:
        lib = cpu.load() if build == "native" else cpu.load_variant(build)
        if lib is None:
            pytest.skip(f"the {build} build of the CPU kernels is not available")
        for name in TYPES:
            dequantize = getattr(lib, f"gguf_dequantize_{name}")
            dequantize.argtypes, dequantize.restype = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64], None
            matmul = getattr(lib, f"gguf_matmul_{name}")
            matmul.argtypes = [
                ctypes.c_void_p,
                ctypes.c_int64,
                ctypes.c_int64,
                ctypes.c_void_p,
                ctypes.c_int64,
                ctypes.c_void_p,
            ]
            matmul.restype = None
        _libraries[build] = lib
    return _libraries[build]


@pytest.fixture
def rng(random_seed):
    """numpy's generator here (the blocks are numpy arrays), on conftest's recorded seed."""
    return np.random.default_rng(random_seed)


def random_blocks(name: str, count: int, rng: np.random.Generator) -> np.ndarray:
    """count valid blocks [count, block bytes]: random bytes, finite f16 super-scales."""
    _, _, block_bytes, scale_offsets = TYPES[name]
    blocks = rng.integers(0, 256, size=(count, block_bytes), dtype=np.uint8)
    for offset in scale_offsets:
        scales = (rng.standard_normal(count) * 0.02).astype(np.float16)
        specials = np.array([0.0, 6e-8, -3e-6, 6.1e-5, 65504.0], dtype=np.float16)  # zero, subnormals, largest
        scales[: min(count, len(specials))] = specials[: min(count, len(specials))]
        blocks[:, offset : offset + 2] = scales.view(np.uint8).reshape(count, 2)
    return blocks


def gguf_dequantize(name: str, blocks: np.ndarray, rows: int) -> np.ndarray:
    return quants.dequantize(blocks.reshape(rows, -1), TYPES[name][0]).astype(np.float32)


def c_dequantize(lib: ctypes.CDLL, name: str, blocks: np.ndarray) -> np.ndarray:
    blocks = np.ascontiguousarray(blocks)
    out = np.full(blocks.shape[0] * TYPES[name][1], np.nan, dtype=np.float32)
    getattr(lib, f"gguf_dequantize_{name}")(blocks.ctypes.data, out.ctypes.data, out.size)
    return out


def c_matmul(lib: ctypes.CDLL, name: str, x: np.ndarray, blocks: np.ndarray, n: int) -> np.ndarray:
    m, k = x.shape
    y = np.full((m, n), np.nan, dtype=np.float32)
    getattr(lib, f"gguf_matmul_{name}")(x.ctypes.data, m, k, np.ascontiguousarray(blocks).ctypes.data, n, y.ctypes.data)
    return y


def test_block_sizes_match_gguf():
    for gguf_type, block_elems, block_bytes, _ in TYPES.values():
        assert quants.GGML_QUANT_SIZES[gguf_type] == (block_elems, block_bytes)


@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize("name", list(TYPES))
def test_dequantize_matches_gguf(name, build, rng):
    blocks = random_blocks(name, 300, rng)
    expected = gguf_dequantize(name, blocks, 1).reshape(300, -1)
    actual = c_dequantize(library(build), name, blocks).reshape(300, -1)
    # Bit for bit, though the C code fuses multiply and add: d*sc*q (Q4_K/Q5_K: at most 11 + 6 + 5
    # significant bits) and d*q (Q5_1) are exact in float32, and Q6_K's q*ds - 32*ds (Q5_0's
    # q*d - 16*d) is ds*(q - 32) before its one rounding.
    np.testing.assert_array_equal(actual, expected)


# 576 (SmolLM2's hidden size): rows of whole 32-weight blocks that are no whole number of 256-weight
# spans
SHAPES = [(name, k) for name in TYPES for k in (256, 1024, 576) if k % TYPES[name][1] == 0]


@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize("name,k", SHAPES)
@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 9, 17, 32, 100])
def test_matmul_matches_dequantize_then_float_matmul(name, k, build, m, rng):
    block_elems = TYPES[name][1]
    n = int(rng.integers(1, 60)) * 2 + 1  # odd: the last panel (and its last tile of weight rows) is partial
    blocks = random_blocks(name, n * k // block_elems, rng)
    rng.shuffle(blocks)  # the special super-scales land on random rows
    weight = torch.from_numpy(gguf_dequantize(name, blocks, n))  # [n, k]
    x = rng.standard_normal((m, k), dtype=np.float32)
    y = torch.from_numpy(c_matmul(library(build), name, x, blocks, n))
    xt = torch.from_numpy(x)
    expected = xt.double() @ weight.double().T
    # float32 sums in another order: bounded by the sum of |terms|, scaled by a few ulp per add
    bound = 1e-5 * (xt.abs().double() @ weight.abs().double().T) + 1e-30
    assert torch.isfinite(y).all()
    assert ((y.double() - expected).abs() <= bound).all(), (y.double() - expected).abs().div(bound).max()
    torch.testing.assert_close(y, (xt @ weight.T), rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


def assert_float_tolerance(y: np.ndarray, x: np.ndarray, weight: torch.Tensor) -> None:
    """y equals x @ weight^T up to float32 summation: within a few ulp of the sum of |terms|."""
    xt = torch.from_numpy(x)
    expected = xt.double() @ weight.double().T
    bound = 1e-5 * (xt.abs().double() @ weight.abs().double().T) + 1e-30
    error = (torch.from_numpy(y).double() - expected).abs()
    assert (error <= bound).all(), error.div(bound).max()


# Q5_0 / Q5_1 at m = 1 round x per block to two int16 parts (quant_kquants.c): an odd number of
# blocks (AVX-512 takes them in pairs), rows longer than the copy's stack buffer (256 blocks), and x
# whose elements span twelve orders of magnitude within a block (a block's scale is its largest
# element: the small ones must keep their precision).
@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize("name", ["q5_0", "q5_1"])
@pytest.mark.parametrize("k", [32, 96, 288, 32 * 257])
def test_q5_gemv_odd_blocks_long_rows_and_wide_ranging_x(name, k, build, rng):
    n = int(rng.integers(1, 40)) * 2 + 1
    blocks = random_blocks(name, n * k // 32, rng)
    rng.shuffle(blocks)
    weight = torch.from_numpy(gguf_dequantize(name, blocks, n))
    x = rng.standard_normal((1, k)).astype(np.float32)
    assert_float_tolerance(c_matmul(library(build), name, x, blocks, n), x, weight)
    wide = (x * 10.0 ** rng.uniform(-6, 6, size=x.shape)).astype(np.float32)
    assert_float_tolerance(c_matmul(library(build), name, wide, blocks, n), wide, weight)


@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize("name", ["q5_0", "q5_1"])
def test_q5_gemv_non_finite_x_is_not_rounded_away(name, build, rng):
    """A NaN or inf in x makes every output non-finite (the integer path: NaN), as the float product does."""
    n, k = 5, 96
    blocks = random_blocks(name, n * k // 32, rng)
    blocks[:, :2] = np.array([0.5], dtype=np.float16).view(np.uint8)  # every d finite and non-zero
    for bad in (np.nan, np.inf):
        x = rng.standard_normal((1, k)).astype(np.float32)
        x[0, 40] = bad
        assert not np.isfinite(c_matmul(library(build), name, x, blocks, n)).any()
