"""CPU kernels (cpu_ops.c and every other kernels/*.c), built with the system C compiler at first use.

Every layer runs chains of small elementwise torch ops: RMSNorm is eight of them, the rotary
embedding of q and k about twenty; each pays its dispatch and a pass over memory, which at
decode sizes (a few KB per tensor) costs more than the arithmetic. These kernels do each chain
in one call and one pass: RMSNorm, and the neox rotary embedding in place on q and k together,
with the rounding steps of the torch functions they stand in for (`rms_norm` and
`rotate_neox` in model_executor/layers/norm.py and rotary.py), which tests/test_cpu_kernels.py checks
them against.

The KV-cache write copies the step's K and V rows to their slots in one call (two index_copy_
cost more in dispatch than the copy at decode sizes).

Decode attention reads each sequence's K/V in place through its block table, where the torch
path gathers them into a padded copy and builds a mask; it runs its work items on torch's own
OpenMP threads (the library links libgomp.so.1, which the loader resolves to torch's copy) and
prefetches the scattered blocks, which the hardware prefetchers do not follow. Its reference is
kernels/attention_reference.py, shared with the Triton kernels. (Tried and dropped: the same
kernel single-threaded was slower than gather + torch's SDPA, and without prefetching no faster.)

Prefill attention (kernels/prefill_attention.c) does the same for a step's prompts and chunks: one
call per layer over the whole group, no gather, no padding, no mask; for 32 prompts of 64 tokens
the gather, padding and SDPA cost several times the attention's arithmetic.

For the fixed cost of a decode step (issue 19: per layer, the dispatch of each small op costs
more than its arithmetic at batch 1): the residual add fused into the next RMSNorm
(add_rms_norm_), SiLU-and-mul in one call and one pass, and a decode step's whole attention for
one layer (rotary, KV write, attention) in one call from the fused qkv output (decode_qkv_attention).
The elementwise kernels split their rows over torch's threads for large inputs (a batch's prefill
or decode step), so they beat torch's ops there too; greedy sampling's argmax (argmax_rows) is one
vector pass where torch's max(dim) reduction is an order of magnitude slower here.

The library is compiled once per source/flags/compiler/CPU into
${XDG_CACHE_HOME:-~/.cache}/vllm-cli/kernels (0.6 s here) and loaded with ctypes. With no C
compiler, a failed build, or VLLM_CLI_CPU_KERNELS=0, `load()` returns None and every caller
keeps its torch path.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import torch

from vllm_cli.config import cache_home
from vllm_cli.logger import init_logger

logger = init_logger(__name__)

CPU_KERNELS_ENV = "VLLM_CLI_CPU_KERNELS"
_KERNEL_DIR = os.path.dirname(os.path.abspath(__file__))
# Every C file here goes into the one library (cpu_ops.c, and the quantized matmuls beside it):
# one build, one cache entry, one ctypes handle that each module binds its own entry points from.
_SOURCES = sorted(os.path.join(_KERNEL_DIR, name) for name in os.listdir(_KERNEL_DIR) if name.endswith(".c"))
# the headers they include (bf16.h) are part of the build's key too
_HEADERS = sorted(os.path.join(_KERNEL_DIR, name) for name in os.listdir(_KERNEL_DIR) if name.endswith(".h"))
# Only the parts of -ffast-math the kernels need: reassociation, so the float sums (RMSNorm's sum of
# squares, attention's dot products and softmax sums) vectorize (GCC applies it only without signed
# zeros and traps), no errno (expf inlines or vectorizes), and fused multiply-adds (as before). Not
# -ffast-math itself: its -ffinite-math-only makes the softmax's -INFINITY start undefined, and GCC
# before 13 links crtfastmath.o into the library, which turns on flush-to-zero for the whole process
# (torch's ops too) when it loads. cpu_ops.c declares glibc's vector expf itself (math.h does only
# under -ffast-math), so attention and rotary give the same bits as the -ffast-math build did;
# RMSNorm's 1/sqrt is now exact where -ffast-math approximated it (rsqrt + a Newton step).
_CFLAGS = [
    "-O3",
    "-mprefer-vector-width=512",
    "-fno-math-errno",
    "-fassociative-math",
    "-fno-signed-zeros",
    "-fno-trapping-math",
    "-ffp-contract=fast",
    "-fPIC",
    "-shared",
    "-std=c11",
]
# Decode attention's threads: libgomp.so.1, which resolves to torch's own loaded copy (cpu_ops.c).
# A compiler without OpenMP builds the library without it (single-threaded attention).
_OPENMP_FLAGS = ["-fopenmp"]
_SUFFIX = {torch.float32: "f32", torch.bfloat16: "bf16"}
DTYPES = tuple(_SUFFIX)

_lock = threading.Lock()
_library: ctypes.CDLL | None = None
_kernels: dict[tuple[str, torch.dtype], ctypes._CFuncPtr] = {}  # (name, dtype) -> typed entry point
_tried = False

_i64, _ptr, _f32 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_float
_SIGNATURES = {
    "rms_norm": [_i64, _i64, _ptr, _i64, _ptr, _f32, _ptr, _i64],
    "rotary_neox": [_i64, _i64, _i64, _i64, _ptr, _i64, _ptr, _ptr],
    "paged_decode_attention": [
        _i64,
        _i64,
        _i64,
        _i64,
        _ptr,
        _i64,
        _ptr,
        _ptr,
        _ptr,
        _i64,
        _ptr,
        _i64,
        _i64,
        _f32,
        _ptr,
        _i64,
        _ptr,
        _i64,
    ],
    "add_rms_norm": [_i64, _i64, _ptr, _i64, _ptr, _i64, _ptr, _f32, _ptr, _i64],
    "silu_and_mul": [_i64, _i64, _ptr, _i64, _ptr, _i64],
    "decode_qkv_attention": [
        *(_i64, _i64, _i64, _i64, _i64),  # S, H, KVH, D, rotary dims
        *(_ptr, _i64, _ptr, _ptr, _ptr),  # qkv, its row stride, cos, sin, slots
        *(_ptr, _ptr, _ptr, _i64, _ptr),  # k_cache, v_cache, block tables, their row stride, context lens
        *(_i64, _i64, _f32, _ptr, _i64),  # block size, chunk, scale, ALiBi slopes, window
        *(_ptr, _i64),  # out, its row stride
    ],
    "prefill_attention": [
        *(_i64, _i64, _i64, _i64),  # S, H, KVH, D
        *(_ptr, _i64, _ptr),  # q, its row stride, cu_seqlens_q
        *(_ptr, _ptr, _ptr, _i64, _ptr),  # k_cache, v_cache, block tables, their row stride, context lens
        *(_i64, _f32, _ptr, _i64),  # block size, scale, ALiBi slopes, window
        *(_ptr, _i64),  # out, its row stride
    ],
}
_WRITE_KV_SIGNATURE = [_i64, _i64, _ptr, _ptr, _i64, _ptr, _i64, _ptr, _ptr]
_ARGMAX_SIGNATURE = [_i64, _i64, _ptr, _i64, _ptr]


def cache_dir() -> str:
    return os.path.join(cache_home(), "kernels")


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


def _cpu_id() -> str:
    """-march=native code is only valid on the CPU it was built for: key the build on its flags."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _build(cc: str, march: str = "native") -> str:
    source = b""
    for path in _SOURCES + _HEADERS:
        with open(path, "rb") as f:
            source += os.path.basename(path).encode() + b"\0" + f.read()
    version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout
    cflags = [f"-march={march}", *_CFLAGS]
    flags = " ".join(cflags + _OPENMP_FLAGS).encode()
    key = hashlib.sha256(source + flags + version.encode() + _cpu_id().encode()).hexdigest()[:16]
    target = os.path.join(cache_dir(), f"cpu_ops-{march}-{key}.so")
    if os.path.exists(target):
        return target
    os.makedirs(cache_dir(), exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=cache_dir())
    os.close(fd)
    try:
        start = time.perf_counter()
        result = subprocess.run(
            [cc, *cflags, *_OPENMP_FLAGS, *_SOURCES, "-o", tmp, "-lm"], capture_output=True, text=True
        )
        if result.returncode != 0:
            logger.info(
                "Building the CPU kernels without OpenMP (attention single-threaded): %s",
                result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "compiler failed",
            )
            result = subprocess.run([cc, *cflags, *_SOURCES, "-o", tmp, "-lm"], capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "compiler failed")
        os.replace(tmp, target)  # atomic: a concurrent process sees no half-written library
        logger.info("Built the CPU kernels with %s in %.1f s: %s", cc, time.perf_counter() - start, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def load() -> ctypes.CDLL | None:
    """The compiled library, or None (no compiler, a failed build, or VLLM_CLI_CPU_KERNELS=0)."""
    global _library, _tried
    if _tried:
        return _library
    with _lock:
        if _tried:
            return _library
        if os.environ.get(CPU_KERNELS_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
            logger.info("CPU kernels off (%s=0): using the torch ops", CPU_KERNELS_ENV)
        elif (cc := _compiler()) is None:
            logger.warning("No C compiler found (cc/gcc/clang): decode runs on plain torch ops, slower")
        else:
            try:
                library = ctypes.CDLL(_build(cc))
                fn = library.write_kv_cache  # dtype-free: rows are copied as bytes
                fn.argtypes, fn.restype = _WRITE_KV_SIGNATURE, None
                _kernels[("write_kv_cache", None)] = fn
                fn = library.sampler_argmax_f32
                fn.argtypes, fn.restype = _ARGMAX_SIGNATURE, None
                _kernels[("argmax", torch.float32)] = fn
                for name, argtypes in _SIGNATURES.items():
                    for dtype, suffix in _SUFFIX.items():
                        fn = getattr(library, f"{name}_{suffix}")
                        fn.argtypes, fn.restype = argtypes, None
                        _kernels[(name, dtype)] = fn
                _library = library
            except (OSError, RuntimeError, subprocess.SubprocessError) as e:
                logger.warning("Could not build the CPU kernels (%s): decode runs on plain torch ops", e)
        _tried = True
        return _library


_T = TypeVar("_T")
# (what, id(library)) -> (library, its bound functions): functions bound by bound_per_library
_bound: dict[tuple[str, int], tuple[ctypes.CDLL, Any]] = {}


def bound_per_library(what: str, library: ctypes.CDLL | None, bind: Callable[[ctypes.CDLL], _T], empty: _T) -> _T:
    """bind(library) once per library and `what` (the functions' argtypes set, a table of them built):
    library is cpu.load()'s when None, or a test's load_variant build; `empty` without a library."""
    library = library if library is not None else load()
    if library is None:
        return empty
    entry = _bound.get((what, id(library)))
    if entry is None or entry[0] is not library:  # an id reused by a new library after the old one's end
        entry = _bound[(what, id(library))] = (library, bind(library))
    return entry[1]


def load_variant(march: str) -> ctypes.CDLL | None:
    """The same sources built for another -march (e.g. "x86-64-v3", AVX2 without AVX-512), unbound:
    lets tests check each kernel's narrower vector path on a machine that would build the wider one."""
    cc = _compiler()
    if cc is None:
        return None
    return ctypes.CDLL(_build(cc, march))


def function_address(function: ctypes._CFuncPtr) -> int:
    """The address of a ctypes-bound C function of the library, to hand to other C code (the decode
    loop calls the linears' kernels through such pointers: model_executor/layers/kernel_parts.py)."""
    address = ctypes.cast(function, ctypes.c_void_p).value
    assert address is not None
    return int(address)


def supports(*tensors: torch.Tensor) -> bool:
    """Whether the kernels can take these tensors: CPU, one supported dtype."""
    dtype = tensors[0].dtype
    if dtype not in _SUFFIX:
        return False
    for t in tensors:  # is_cpu: no device object per call (this runs several times per layer)
        if t.dtype != dtype or not t.is_cpu:
            return False
    return True


# ---------------------------------------------------------------------------------------------
# RMSNorm


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, out: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., N] (rows may be strided, last dim contiguous) -> weight * (x * rsqrt(mean(x^2) + eps))."""
    n = x.shape[-1]
    rows = x.reshape(-1, n) if x.dim() != 2 else x
    assert rows.stride(1) == 1 and weight.is_contiguous() and weight.dtype == x.dtype
    if out is None:
        out = torch.empty(x.shape, dtype=x.dtype)
    out_rows = out.view(-1, n)
    _kernels[("rms_norm", x.dtype)](
        rows.shape[0],
        n,
        rows.data_ptr(),
        rows.stride(0),
        weight.data_ptr(),
        eps,
        out_rows.data_ptr(),
        out_rows.stride(0),
    )
    return out


def add_rms_norm_(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float, out: torch.Tensor | None = None
) -> torch.Tensor:
    """residual += x (in place, rounded as torch's add), then RMSNorm(residual) into out (a new
    tensor unless given; may be x). x and residual [rows, N], each row contiguous."""
    rows, n = x.shape
    assert residual.shape == x.shape and x.stride(1) == 1 and residual.stride(1) == 1 and weight.is_contiguous()
    assert residual.dtype == x.dtype == weight.dtype
    if out is None:
        out = torch.empty(x.shape, dtype=x.dtype)
    _kernels[("add_rms_norm", x.dtype)](
        rows,
        n,
        x.data_ptr(),
        x.stride(0),
        residual.data_ptr(),
        residual.stride(0),
        weight.data_ptr(),
        eps,
        out.data_ptr(),
        out.stride(0),
    )
    return out


# ---------------------------------------------------------------------------------------------
# SiLU-and-mul (the Llama MLP's activation)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """x [rows, 2N] = [gate | up] (each row contiguous) -> silu(gate) * up, [rows, N]."""
    rows, width = x.shape
    assert x.stride(1) == 1 and width % 2 == 0
    out = torch.empty((rows, width // 2), dtype=x.dtype)
    _kernels[("silu_and_mul", x.dtype)](rows, width // 2, x.data_ptr(), x.stride(0), out.data_ptr(), out.stride(0))
    return out


# ---------------------------------------------------------------------------------------------
# Rotary embedding (neox style), in place


def rotary_neox_(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rotary_dim: int | None = None) -> torch.Tensor:
    """x [T, heads, D] (heads contiguous within a row; rows may be strided, e.g. q and k of a fused
    qkv output together); cos/sin [T, rotary_dim / 2] in x's dtype. Rotates x in place."""
    tokens, heads, head_dim = x.shape
    assert x.stride(2) == 1 and x.stride(1) == head_dim and cos.is_contiguous() and sin.is_contiguous()
    assert cos.dtype == sin.dtype == x.dtype
    _kernels[("rotary_neox", x.dtype)](
        tokens, heads, head_dim, rotary_dim or head_dim, x.data_ptr(), x.stride(0), cos.data_ptr(), sin.data_ptr()
    )
    return x


# ---------------------------------------------------------------------------------------------
# Greedy sampling's argmax


def argmax_rows(x: torch.Tensor) -> torch.Tensor:
    """x.max(dim=-1).indices of float32 x [rows, V] (rows may be strided, each contiguous): the
    first index of each row's largest value (of its first NaN, if any), int64 [rows]."""
    rows, n = x.shape
    assert x.dtype == torch.float32 and x.stride(1) == 1 and n > 0
    out = torch.empty(rows, dtype=torch.int64)
    _kernels[("argmax", torch.float32)](rows, n, x.data_ptr(), x.stride(0), out.data_ptr())
    return out


# ---------------------------------------------------------------------------------------------
# KV-cache write


def write_kv_cache(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slots: torch.Tensor
) -> None:
    """k_cache[slots] = k and v_cache[slots] = v: k/v [T, KVH, D] (rows may be strided, each row
    contiguous), caches [num_slots, KVH, D] contiguous, slots int64 [T] (in range: the caller's
    slot mapping)."""
    tokens, num_kv_heads, head_dim = k.shape
    assert v.shape == k.shape and k_cache.shape[1:] == k.shape[1:] and v_cache.shape == k_cache.shape
    assert k.dtype == v.dtype == k_cache.dtype == v_cache.dtype
    assert k_cache.is_contiguous() and v_cache.is_contiguous() and slots.dtype == torch.int64 and slots.is_contiguous()
    for t in (k, v):
        assert t.stride(2) == 1 and t.stride(1) == head_dim
    element = k.element_size()
    _kernels[("write_kv_cache", None)](
        tokens,
        num_kv_heads * head_dim * element,
        slots.data_ptr(),
        k.data_ptr(),
        k.stride(0) * element,
        v.data_ptr(),
        v.stride(0) * element,
        k_cache.data_ptr(),
        v_cache.data_ptr(),
    )


# ---------------------------------------------------------------------------------------------
# Paged decode attention

# Keys per work item: a sequence's context is split into chunks of this many tokens (combined as
# flash-decoding does), so a few long sequences still keep every thread busy.
DECODE_CHUNK = 256


def _float32_slopes(alibi_slopes: torch.Tensor | None, num_heads: int) -> torch.Tensor | None:
    """ALiBi slopes as the attention kernels read them: float32, contiguous, one per query head."""
    if alibi_slopes is None:
        return None
    slopes = alibi_slopes.to(torch.float32).contiguous()
    assert slopes.numel() == num_heads
    return slopes


def paged_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    block_size: int,
    scale: float,
    alibi_slopes: torch.Tensor | None = None,
    sliding_window: int | None = None,
    chunk: int = DECODE_CHUNK,
) -> torch.Tensor:
    """One query token per sequence: q [S, H, D] (heads contiguous, rows may be strided), caches
    [slots, KVH, D] contiguous, block_tables int32 [S, blocks] (contiguous), context_lens int32 [S]
    (keys per sequence). Returns a new [S, H, D] tensor in q's dtype."""
    num_seqs, num_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[1]
    assert q.stride(2) == 1 and q.stride(1) == head_dim and k_cache.is_contiguous() and v_cache.is_contiguous()
    assert k_cache.dtype == v_cache.dtype == q.dtype and num_heads % num_kv_heads == 0
    assert block_tables.dtype == context_lens.dtype == torch.int32 and block_tables.is_contiguous()
    assert context_lens.is_contiguous()
    slopes = _float32_slopes(alibi_slopes, num_heads)
    out = torch.empty((num_seqs, num_heads, head_dim), dtype=q.dtype)
    _kernels[("paged_decode_attention", q.dtype)](
        num_seqs,
        num_heads,
        num_kv_heads,
        head_dim,
        q.data_ptr(),
        q.stride(0),
        k_cache.data_ptr(),
        v_cache.data_ptr(),
        block_tables.data_ptr(),
        block_tables.stride(0),
        context_lens.data_ptr(),
        block_size,
        chunk,
        scale,
        None if slopes is None else slopes.data_ptr(),
        sliding_window or 0,
        out.data_ptr(),
        out.stride(0),
    )
    return out


def decode_qkv_attention(
    qkv: torch.Tensor,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    rotary_dim: int,
    cos: torch.Tensor | None,
    sin: torch.Tensor | None,
    slots: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    block_size: int,
    scale: float,
    alibi_slopes: torch.Tensor | None = None,
    sliding_window: int | None = None,
    chunk: int = DECODE_CHUNK,
) -> torch.Tensor:
    """A decode step's attention for one layer in one call: rotary_neox_ on q and k (when cos/sin
    are given), write_kv_cache, paged_decode_attention; every row of qkv [S, (H + 2 KVH) D] (rows
    may be strided, each contiguous) is one sequence's new token. Returns a new [S, H * D] tensor.
    The per-step arguments (slots int64, block tables and context lengths int32, cos/sin in qkv's
    dtype, all contiguous; caches contiguous) are the caller's to check once per step: this runs
    once per layer, so it only checks the rows."""
    num_seqs = qkv.shape[0]
    assert qkv.stride(1) == 1 and qkv.shape[1] == (num_heads + 2 * num_kv_heads) * head_dim
    out = torch.empty((num_seqs, num_heads * head_dim), dtype=qkv.dtype)
    _kernels[("decode_qkv_attention", qkv.dtype)](
        num_seqs,
        num_heads,
        num_kv_heads,
        head_dim,
        rotary_dim,
        qkv.data_ptr(),
        qkv.stride(0),
        None if cos is None else cos.data_ptr(),
        None if sin is None else sin.data_ptr(),
        slots.data_ptr(),
        k_cache.data_ptr(),
        v_cache.data_ptr(),
        block_tables.data_ptr(),
        block_tables.stride(0),
        context_lens.data_ptr(),
        block_size,
        chunk,
        scale,
        None if alibi_slopes is None else alibi_slopes.data_ptr(),
        sliding_window or 0,
        out.data_ptr(),
        out.stride(0),
    )
    return out


# ---------------------------------------------------------------------------------------------
# Paged prefill attention (kernels/prefill_attention.c)


def prefill_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    context_lens: torch.Tensor,
    block_size: int,
    scale: float,
    alibi_slopes: torch.Tensor | None = None,
    sliding_window: int | None = None,
) -> torch.Tensor:
    """Causal attention of prompts or prompt chunks over the paged cache, their own K/V already
    written there: q [T, H, D] (heads contiguous, rows may be strided), sequence s's queries are rows
    cu_seqlens_q[s] .. cu_seqlens_q[s + 1] - 1 at the last positions of its context_lens[s] keys (a
    cached prefix before them); block_tables int32 [S, blocks] contiguous, cu_seqlens_q int32 [S + 1]
    and context_lens int32 [S] contiguous; caches [slots, KVH, D] contiguous. Returns a new [T, H, D]
    tensor in q's dtype (attention_reference.paged_prefill_attention_ref is its reference)."""
    num_tokens, num_heads, head_dim = q.shape
    num_seqs, num_kv_heads = context_lens.shape[0], k_cache.shape[1]
    assert q.stride(2) == 1 and q.stride(1) == head_dim and k_cache.is_contiguous() and v_cache.is_contiguous()
    assert k_cache.dtype == v_cache.dtype == q.dtype and num_heads % num_kv_heads == 0
    assert block_tables.dtype == cu_seqlens_q.dtype == context_lens.dtype == torch.int32
    assert block_tables.is_contiguous() and cu_seqlens_q.is_contiguous() and context_lens.is_contiguous()
    assert cu_seqlens_q.shape[0] == num_seqs + 1 and block_tables.shape[0] == num_seqs
    slopes = _float32_slopes(alibi_slopes, num_heads)
    out = torch.empty((num_tokens, num_heads, head_dim), dtype=q.dtype)
    _kernels[("prefill_attention", q.dtype)](
        num_seqs,
        num_heads,
        num_kv_heads,
        head_dim,
        q.data_ptr(),
        q.stride(0),
        cu_seqlens_q.data_ptr(),
        k_cache.data_ptr(),
        v_cache.data_ptr(),
        block_tables.data_ptr(),
        block_tables.stride(0),
        context_lens.data_ptr(),
        block_size,
        scale,
        None if slopes is None else slopes.data_ptr(),
        sliding_window or 0,
        out.data_ptr(),
        out.stride(0),
    )
    return out
