"""CpuLinear: linear layers whose weights are prepacked for the CPU GEMM library that is fastest
for their shape on this machine (timed once per process), and the loader's swap to them."""

from __future__ import annotations

import ctypes
import functools
import math
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from vllm_cli.distributed.parallel_state import all_reduce, get_tp_size
from vllm_cli.kernels import cpu
from vllm_cli.logger import init_logger
from vllm_cli.model_executor.layers.kernel_parts import KernelPart
from vllm_cli.model_executor.layers.linear import ParallelLinearBase, VocabParallelEmbedding

logger = init_logger(__name__)


class CpuLinear(nn.Module):
    """A linear layer whose weight is prepacked for the CPU GEMM libraries.

    Which library is fastest depends on the CPU, by a wide margin: at decode batch sizes MKL's
    packed sgemm beat F.linear by 1.2-1.6x in float32 on an Intel Xeon (AVX-512/AMX), while on
    an AMD EPYC (Zen 5) MKL runs 2.5-3x slower than oneDNN, and at one row (single-stream decode)
    our own kernels (kernels/float_gemm.c, kind "fgemm") read the weight faster than either. So each
    weight shape is packed for every library that computes it correctly and the fastest, timed once
    on this machine at the row counts of single-stream decode, batch decode and a prefill chunk, is
    kept (`_pack_for_cpu`). Where no library is there, the weight is at
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
        if self.kind in ("mkl", "fgemm"):
            # MKL and our kernels only read the original weight's shape: a zero-stride stand-in costs no memory.
            self.shape_only = torch.empty_strided(tuple(weight.shape), (0, 0), dtype=weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reduce_output:
            out = all_reduce(self._matmul(x, None))
            return out if self.bias is None else out + self.bias
        return self._matmul(x, self.bias)

    def _matmul(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return _run_packed(self.kind, x, self.packed, bias, getattr(self, "shape_only", None))

    @property
    def has_rows(self) -> bool:
        """Whether `lookup` can read the weight's rows from the packed layout (ours and the plain
        [in, out] one; MKL's and oneDNN's are opaque)."""
        return self.kind in ("fgemm", "matmul")

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """The weight's rows `ids` [...] -> [..., in_features] in its dtype, read from the packed layout:
        the lookup of an embedding tied to this layer (a tied LM head), which then holds no copy."""
        if self.kind == "fgemm":
            return fgemm_rows(self.packed, ids, self.out_features, self.in_features)
        if self.kind == "matmul":  # packed is W^T [in, out]: its transpose is a view of W's rows
            return F.embedding(ids, self.packed.t())
        raise ValueError(f"the {self.kind} layout keeps no readable rows")

    def kernel_parts(self) -> list[KernelPart] | None:
        """The C kernel and weight that compute this layer (kernel_parts.py's contract): only on our own
        layout (kind "fgemm"), and only without a bias or a tensor-parallel all-reduce, which the
        kernel does not do."""
        if self.kind != "fgemm" or self.bias is not None or self.reduce_output:
            return None
        fn = fgemm_functions().get(self.packed.dtype)
        if fn is None:
            return None
        return [KernelPart(cpu.function_address(fn), self.packed, self.out_features, self.in_features, 0)]

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, kernel={self.kind}"
        )


def _run_packed(
    kind: str, x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None, shape_only: torch.Tensor | None
) -> torch.Tensor:
    if kind == "mkl":
        return torch.ops.mkl._mkl_linear(x, packed, shape_only, bias, x.shape[0])
    if kind == "mkldnn":
        return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
    if kind == "fgemm":
        assert shape_only is not None
        return _fgemm_linear(x, packed, bias, shape_only.shape[0])
    if bias is None:
        return x @ packed
    return torch.addmm(bias, x, packed)


def cpu_linear_kinds(dtype: torch.dtype) -> list[str]:
    """The prepacked GEMM libraries this torch build offers for dtype, our own kernels
    (kernels/float_gemm.c, where the CPU library has them), then the plain fallback."""
    kinds = []
    if dtype == torch.float32 and torch.backends.mkl.is_available():
        kinds.append("mkl")
    if dtype in (torch.float32, torch.bfloat16) and torch.backends.mkldnn.is_available():
        kinds.append("mkldnn")
    if dtype in fgemm_functions():
        kinds.append("fgemm")
    return kinds + ["matmul"]


def _pack(kind: str, weight: torch.Tensor) -> torch.Tensor:
    if kind == "mkl":
        return torch.ops.mkl._mkl_reorder_linear_weight(weight, 64)
    if kind == "mkldnn":
        return torch.ops.mkldnn._reorder_linear_weight(weight, 64)
    if kind == "fgemm":
        return fgemm_pack(weight)
    return weight.t().contiguous()


# ---------------------------------------------------------------------------------------------
# Our own layout and kernels (kernels/float_gemm.c): panels of 32 outputs, k steps of 128 bytes

FGEMM_PANEL = 32
_FGEMM_SIGNATURE = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p]


def fgemm_functions(library: ctypes.CDLL | None = None) -> dict[torch.dtype, Callable[..., None]]:
    """{weight dtype: fgemm_matmul_<type>} of the CPU library (empty without it, or on a CPU with
    neither AVX-512 nor AVX2, where float_gemm.c defines nothing)."""
    return cpu.bound_per_library("fgemm", library, _bind_fgemm, {})


def _bind_fgemm(library: ctypes.CDLL) -> dict[torch.dtype, Callable[..., None]]:
    functions = {}
    for dtype, suffix in ((torch.float32, "f32"), (torch.bfloat16, "bf16")):
        try:
            fn = getattr(library, f"fgemm_matmul_{suffix}")
        except AttributeError:
            continue
        fn.argtypes, fn.restype = _FGEMM_SIGNATURE, None
        functions[dtype] = fn
    return functions


def fgemm_pack(weight: torch.Tensor) -> torch.Tensor:
    """weight [n, k] (float32 or bfloat16) -> float_gemm.c's layout: [panels, steps, 32] for float32,
    [panels, steps, 32, 2] for bfloat16 (a step is a pair of inputs); n padded to whole panels and
    bfloat16's k to whole pairs, with zeros."""
    n, k = weight.shape
    panels = -(-n // FGEMM_PANEL)
    if weight.dtype == torch.float32:
        padded = weight.new_zeros(panels * FGEMM_PANEL, k)
        padded[:n] = weight
        return padded.view(panels, FGEMM_PANEL, k).transpose(1, 2).contiguous()
    if weight.dtype != torch.bfloat16:
        raise ValueError(f"fgemm: weights in float32 or bfloat16, not {weight.dtype}")
    steps = -(-k // 2)
    padded = weight.new_zeros(panels * FGEMM_PANEL, 2 * steps)
    padded[:n, :k] = weight
    return padded.view(panels, FGEMM_PANEL, steps, 2).transpose(1, 2).contiguous()


def fgemm_rows(packed: torch.Tensor, ids: torch.Tensor, rows: int, k: int) -> torch.Tensor:
    """Rows `ids` [...] of the [rows, k] weight packed by fgemm_pack -> [..., k] in its dtype (an embedding
    lookup on a tied LM head's weight: kernels/embedding_gather.c). An id outside [0, rows) raises
    IndexError, as torch's embedding does."""
    flat = ids.reshape(-1)
    if flat.dtype != torch.int64 or not flat.is_contiguous():
        flat = flat.to(torch.int64).contiguous()
    out = torch.empty((flat.numel(), k), dtype=packed.dtype)
    bad = _embed_rows_function(packed.dtype)(flat.data_ptr(), flat.numel(), packed.data_ptr(), rows, k, out.data_ptr())
    if bad >= 0:
        raise IndexError(f"index {int(flat[bad])} is out of range for an embedding of {rows} rows")
    return out.view(*ids.shape, k)


# (ids, count, packed weight, rows, k, out) -> -1, or the index of the first id out of range
_EMBED_ROWS_SIGNATURE = [
    ctypes.c_void_p,
    ctypes.c_int64,
    ctypes.c_void_p,
    ctypes.c_int64,
    ctypes.c_int64,
    ctypes.c_void_p,
]
# dtype -> embed_rows_fgemm_<type>, bound at the first lookup (the fgemm kind, and so a packed weight to
# read, exists only where the library does)
_EMBED_ROWS: dict[torch.dtype, Callable[..., int]] = {}


def _embed_rows_function(dtype: torch.dtype) -> Callable[..., int]:
    fn = _EMBED_ROWS.get(dtype)
    if fn is None:
        library = cpu.load()
        assert library is not None
        fn = getattr(library, f"embed_rows_fgemm_{'f32' if dtype == torch.float32 else 'bf16'}")
        fn.argtypes, fn.restype = _EMBED_ROWS_SIGNATURE, ctypes.c_int64
        _EMBED_ROWS[dtype] = fn
    return fn


def fgemm_matmul(
    x: torch.Tensor, packed: torch.Tensor, out_features: int, library: ctypes.CDLL | None = None
) -> torch.Tensor:
    """x [rows, k] (any float dtype; read as float32) @ W^T -> float32 [rows, out_features], W packed
    by fgemm_pack. For bfloat16 weights x is rounded to bfloat16 as torch's bf16 linear does."""
    fn = fgemm_functions(library)[packed.dtype]
    x = x.to(torch.float32).contiguous()
    rows, k = x.shape
    y = torch.empty((rows, out_features), dtype=torch.float32)
    if rows:
        fn(x.data_ptr(), rows, k, packed.data_ptr(), out_features, y.data_ptr())
    return y


def _fgemm_linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None, out_features: int) -> torch.Tensor:
    """CpuLinear's call: x in the model's dtype, any leading shape; the result in x's dtype, the bias
    added in float32 before the one rounding (as torch's bf16 linear)."""
    if x.dim() == 2 and x.is_contiguous() and bias is None and x.dtype == packed.dtype:
        # the decode path: one allocation and the call, no other torch op (each costs more than the
        # kernel's own overhead at one row); bf16 in and out through fgemm_matmul_bf16_io
        y = torch.empty((x.shape[0], out_features), dtype=x.dtype)
        if x.shape[0]:
            fn = _FGEMM_F32 if x.dtype == torch.float32 else _FGEMM_BF16_IO
            fn(x.data_ptr(), x.shape[0], x.shape[1], packed.data_ptr(), out_features, y.data_ptr())
        return y
    y = fgemm_matmul(x.reshape(-1, x.shape[-1]), packed, out_features)
    if bias is not None:
        y += bias
    return y.to(x.dtype).view(*x.shape[:-1], out_features)


def _bind_fgemm_f32(*args: int) -> None:
    global _FGEMM_F32
    _FGEMM_F32 = fgemm_functions()[torch.float32]
    _FGEMM_F32(*args)


def _bind_fgemm_bf16_io(*args: int) -> None:
    global _FGEMM_BF16_IO
    library = cpu.load()
    assert library is not None
    fn = library.fgemm_matmul_bf16_io
    fn.argtypes, fn.restype = _FGEMM_SIGNATURE, None
    _FGEMM_BF16_IO = fn
    fn(*args)


# the library's entry points, bound at their first call
_FGEMM_F32: Callable[..., None] = _bind_fgemm_f32
_FGEMM_BF16_IO: Callable[..., None] = _bind_fgemm_bf16_io


# (dtype, in_features, out_features) -> the fastest correct kind, timed once per process
_FASTEST_KIND: dict[tuple[torch.dtype, int, int], str] = {}
# The row counts a linear meets: single-stream decode, batch decode, a prefill chunk. Which kind is
# fastest differs by CPU, shape and rows: at 1 row the kernel that reads the weight fastest wins (our
# fgemm beats oneDNN by 1.5-1.9x here), at 32 and more the best-blocked GEMM does. The prefill probe is
# left out where one call would take over ~2 GFLOP (an LM head): it would lengthen loading by seconds.
_PROBE_ROWS = (1, 32, 128)
_PROBE_MAX_FLOP = 2e9
# A decode step reads each weight from DRAM (a model's weights are larger than the caches): the 1-row
# probe evicts the caches first by reading this many bytes, unless the weight is larger itself.
_EVICT_BYTES = 64 << 20
_CHECK_ROWS = 32
# Our kind is kept unless another is this much faster over the probes: only its weights have kernel parts,
# and a model whose every linear has them runs its decode steps in one C call (kernels/decode_loop.c), which
# saves more per layer (~0.1 ms of dispatch) than a few percent of one small matmul costs.
_KERNEL_PARTS_PREFERENCE = 1.15
# Below this a weight's matmul takes microseconds whichever kind runs it (and timing them is noise: a
# cache-cold call of a 24 KB weight swung 2x between kinds): ours is taken untimed, for the same reason.
_SMALL_WEIGHT_BYTES = 1 << 20


def _pack_for_cpu(weight: torch.Tensor, kind: str | None = None) -> tuple[str, torch.Tensor]:
    """(kernel, packed weight): the given kind, else the fastest one for this shape that matches
    F.linear (each packing is checked against it: a library missing from this build, or one that
    mis-computes a shape, is skipped).

    Fastest over the row counts of _PROBE_ROWS: each kind's time at each count is divided by the
    best kind's at that count, and the kind with the smallest geometric mean of these ratios is kept
    (every regime weighs the same in relative terms: a kind 1.5x faster at one row and 1.1x slower at
    32 and 128 is kept; one 1.1x faster at one row and 1.5x slower elsewhere is not). A later kind in
    cpu_linear_kinds' order replaces an earlier one only with a 5% margin, so near-ties do not flip
    between runs. Timed in CPU time on one thread (`_best_time`), so that a loaded machine does not
    decide."""
    if kind is not None:
        return kind, _pack(kind, weight)
    key = (weight.dtype, weight.shape[1], weight.shape[0])
    if key not in _FASTEST_KIND:
        small = weight.nbytes < _SMALL_WEIGHT_BYTES and "fgemm" in cpu_linear_kinds(weight.dtype)
        _FASTEST_KIND[key] = "fgemm" if small and _checked("fgemm", weight) else _time_kinds(weight)
    return _FASTEST_KIND[key], _pack(_FASTEST_KIND[key], weight)


def _packed_if_correct(
    kind: str, weight: torch.Tensor, probe: torch.Tensor, expected: torch.Tensor, shape_only: torch.Tensor
) -> torch.Tensor | None:
    """weight packed for kind, or None when kind fails or mis-computes this shape (against F.linear's
    `expected` on `probe`)."""
    tolerance = 1e-3 if weight.dtype == torch.float32 else 5e-2
    try:
        packed = _pack(kind, weight)
        check = _run_packed(kind, probe, packed, None, shape_only)
    except (RuntimeError, AttributeError):  # op missing from this torch build
        return None
    if not torch.allclose(check.float(), expected, rtol=tolerance, atol=tolerance * expected.abs().max().item()):
        return None
    return packed


def _checked(kind: str, weight: torch.Tensor) -> bool:
    probe = torch.randn(_CHECK_ROWS, weight.shape[1], dtype=weight.dtype)
    shape_only = torch.empty_strided(tuple(weight.shape), (0, 0), dtype=weight.dtype)
    return _packed_if_correct(kind, weight, probe, F.linear(probe.float(), weight.float()), shape_only) is not None


def _time_kind(
    kind: str,
    weight: torch.Tensor,
    probe: torch.Tensor,
    expected: torch.Tensor,
    shape_only: torch.Tensor,
    evict: Callable[[], object] | None,
) -> list[float] | None:
    """kind's seconds at each of _probe_rows (on one thread: see _best_time; packed on all), or None
    when it fails or mis-computes this shape."""
    packed = _packed_if_correct(kind, weight, probe[:_CHECK_ROWS], expected, shape_only)
    if packed is None:
        return None
    # the packing is freed on return: one alive at a time, and the winner is packed again
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return [
            _best_time(
                functools.partial(_run_packed, kind, probe[:rows], packed, None, shape_only),
                repeats=3 if rows <= _CHECK_ROWS else 1,
                before=evict if rows == 1 else None,
            )
            for rows in _probe_rows(weight)
        ]
    finally:
        torch.set_num_threads(threads)


def _probe_rows(weight: torch.Tensor) -> list[int]:
    return [rows for rows in _PROBE_ROWS if rows <= _CHECK_ROWS or 2 * rows * weight.numel() <= _PROBE_MAX_FLOP]


def _time_kinds(weight: torch.Tensor) -> str:
    probe = torch.randn(max(_PROBE_ROWS), weight.shape[1], dtype=weight.dtype)
    expected = F.linear(probe[:_CHECK_ROWS].float(), weight.float())
    shape_only = torch.empty_strided(tuple(weight.shape), (0, 0), dtype=weight.dtype)
    timings: dict[str, list[float]] = {}  # kind -> seconds at each of _probe_rows
    evict = torch.ones(_EVICT_BYTES // 4).sum if weight.nbytes < _EVICT_BYTES else None
    for candidate in cpu_linear_kinds(weight.dtype):
        seconds = _time_kind(candidate, weight, probe, expected, shape_only, evict)
        if seconds is not None:
            timings[candidate] = seconds
    del evict
    assert timings  # "matmul" always computes
    fastest = [max(1e-9, min(seconds[i] for seconds in timings.values())) for i in range(len(_probe_rows(weight)))]
    best: tuple[float, str] | None = None  # (score, kind)
    scores = {}
    for candidate, seconds in timings.items():
        score = scores[candidate] = math.exp(
            sum(math.log(s / f) for s, f in zip(seconds, fastest, strict=True)) / len(fastest)
        )
        if best is None or score < 0.95 * best[0]:
            best = (score, candidate)
    assert best is not None
    if "fgemm" in scores and scores["fgemm"] <= _KERNEL_PARTS_PREFERENCE * best[0]:
        best = (scores["fgemm"], "fgemm")
    logger.debug(
        "CPU linear %dx%d %s: %s -> %s",
        weight.shape[1],
        weight.shape[0],
        weight.dtype,
        {k: [f"{1e6 * s:.0f}us" for s in v] for k, v in timings.items()},
        best[1],
    )
    return best[1]


def _best_time(run: Callable[[], torch.Tensor], repeats: int = 3, before: Callable[[], object] | None = None) -> float:
    """Best of a few calls (each after `before`, untimed), in CPU time: on a shared machine a descheduled
    process accrues none, where wall time would crown whichever kind ran while the machine was quiet
    (the caller runs it on one thread, where CPU time is the call's own time)."""
    if before is not None:
        before()
    run()  # warm: first calls allocate scratch space
    best = float("inf")
    for _ in range(repeats):
        if before is not None:
            before()
        start = time.process_time()
        run()
        best = min(best, time.process_time() - start)
    return best


def optimize_linears_for_cpu(model: nn.Module) -> None:
    """Swap every nn.Linear for a CpuLinear (after the weights are loaded), one at a time, so
    each original weight is freed as soon as its packed copy exists (peak: one layer extra).

    A linear tied to a vocabulary embedding (a tied LM head: the same Parameter) is packed in our
    layout where it computes correctly, and the embedding then reads its rows from the packed copy
    (`CpuLinear.lookup`), so the vocabulary matrix is held once (Llama-3.2-1B float32: 1.05 GB less).
    Where our kind is missing the timed pick stands; MKL's and oneDNN's layouts are opaque, so with
    those the embedding keeps its own weight."""
    tied = {id(m.weight): m for m in model.modules() if isinstance(m, VocabParallelEmbedding) and m.row_lookup is None}

    def make(linear: nn.Linear) -> CpuLinear:
        embedding = tied.pop(id(linear.weight), None)
        if embedding is None or tuple(embedding.weight.shape) != (linear.out_features, linear.in_features):
            return CpuLinear(linear)
        weight = linear.weight.detach()
        shareable = "fgemm" in cpu_linear_kinds(weight.dtype) and _checked("fgemm", weight)
        packed = CpuLinear(linear, "fgemm" if shareable else None)
        if packed.has_rows:
            embedding.read_rows_from(packed.lookup)
        return packed

    replace_linears(model, make)
    log_cpu_linear_kinds(model)


_KIND_NAMES = {"mkl": "MKL packed sgemm", "mkldnn": "oneDNN", "fgemm": "our float GEMM", "matmul": "torch matmul"}


def log_cpu_linear_kinds(model: nn.Module) -> None:
    """One line: which GEMM library the linears run on (the fastest measured for each shape)."""
    counts: dict[str, int] = {}
    for module in model.modules():
        if isinstance(module, CpuLinear):
            counts[module.kind] = counts.get(module.kind, 0) + 1
    if counts:
        logger.info(
            "CPU linears: %s (the fastest correct library, timed once per weight shape)",
            ", ".join(f"{n} on {_KIND_NAMES[k]}" for k, n in sorted(counts.items(), key=lambda kv: -kv[1])),
        )


def replace_linears(model: nn.Module, make: Callable[[nn.Linear], nn.Module]) -> None:
    """Swap every plain nn.Linear and every tensor-parallel linear (not other subclasses of
    nn.Linear, whose forward may differ) for make(linear)."""
    # (parent, name) pairs only: holding the Linear modules themselves would keep every
    # original weight alive until the end, doubling peak memory (13 GB more for a 7B model).
    targets = [
        (module, name)
        for module in model.modules()
        for name, child in module.named_children()
        if type(child) is nn.Linear or isinstance(child, ParallelLinearBase)
    ]
    for module, name in targets:
        setattr(module, name, make(getattr(module, name)))
