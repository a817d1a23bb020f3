"""The GGUF matmul kernels of kernels/ (quant_ops.c, quant_kquants.c, quant_gemm.c) against the machine's
memory bandwidth and torch's float GEMM, in one run; optionally beside the same kernels built from another
git revision (`--baseline main`: before / after side by side, alternating in one process).

m = 1 (decode) is bound by the weight bytes read: GB/s of blocks read per second, next to a plain read
(torch.sum) and copy (torch; bytes read + written) of 8 MiB slices of buffers far larger than the L3
cache. The weights are several copies of an n x k matrix (together well over L3) used in turn, so each
call reads from DRAM as a model's layers do; "hot" repeats one copy (L3-resident when it fits).
`--small` adds SmolLM2's k/v projection (n = 192, k = 576; K-quants 512: the region-opening cost at small n).
m = 32 and 512 (batched decode, prefill) report GFLOP/s next to F.linear (oneDNN / MKL) on the dequantized
float32 weight. Every figure is the fastest call; with one thread timed in CPU time (a call that loses
its core to another process does not count the wait), with more in wall-clock time.

    python benchmarks/quant_kernels.py [--n 4096] [--k 4096] [--threads 1,2] [--seconds 1.0]
        [--types q4_1,q8_0] [--m 32,512] [--baseline main] [--small]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from gguf import GGMLQuantizationType, quants
from vllm_cli.kernels import cpu

# type -> (weights per block, bytes per block, offsets of its f16 scales): ggml's layouts
TYPES = {
    "q4_1": (32, 20, (0, 2)),
    "q8_0": (32, 34, (0,)),
    "q4_k": (256, 144, (0, 2)),
    "q6_k": (256, 210, (208,)),
    "q5_0": (32, 22, (0,)),
    "q5_k": (256, 176, (0, 2)),
    "q4_0": (32, 18, (0,)),
    "q5_1": (32, 24, (0, 2)),
}
GGUF_TYPES = {name: GGMLQuantizationType[name.upper()] for name in TYPES}
WEIGHT_BYTES = 256 << 20  # weight copies cycled through at m = 1 (8x the 32 MiB L3), and the read/copy buffers
SLICE_BYTES = 8 << 20  # bytes per copy/read call: about one 4096 x 4096 weight (Q4_K 9.4 MB)
QUANT_SOURCES = ("quant_ops.c", "quant_kquants.c", "quant_gemm.c")


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def build_revision(revision: str) -> ctypes.CDLL:
    """The quantized kernels' C sources of a git revision, built as kernels/cpu.py builds today's."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    tmp = tempfile.mkdtemp(prefix="quant-baseline-")
    sources = []
    for name in QUANT_SOURCES:
        shown = subprocess.run(["git", "-C", root, "show", f"{revision}:kernels/{name}"], capture_output=True)
        if shown.returncode == 0:  # a file the revision does not have yet is left out
            sources.append(os.path.join(tmp, name))
            with open(sources[-1], "wb") as f:
                f.write(shown.stdout)
    target = os.path.join(tmp, "quant.so")
    cc = cpu._compiler() or "cc"
    subprocess.run([cc, "-march=native", *cpu._CFLAGS, *cpu._OPENMP_FLAGS, *sources, "-o", target, "-lm"], check=True)
    return ctypes.CDLL(target)


def small_k(name: str) -> int:
    return 576 if TYPES[name][0] == 32 else 512


def random_weight(name: str, n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    block_elems, block_bytes, scale_offsets = TYPES[name]
    blocks = rng.integers(0, 256, size=(n * k // block_elems, block_bytes), dtype=np.uint8)
    for offset in scale_offsets:
        blocks[:, offset : offset + 2] = (
            (rng.random(len(blocks)) * 0.01).astype(np.float16).view(np.uint8).reshape(-1, 2)
        )
    return blocks.reshape(n, -1)


def per_call(fn: Callable[[int], object], seconds: float, clock: Callable[[], float]) -> float:
    """The fastest single call (fn(i): the i-th call) over `seconds`, at least 10 calls, by `clock`.
    The fastest, not the median: on a shared machine most calls wait for a core, and the others'
    load is not the kernel's speed."""
    fn(0)
    best, calls, start = float("inf"), 0, time.perf_counter()
    while calls < 10 or time.perf_counter() - start < seconds:
        t0 = clock()
        fn(calls)
        best = min(best, clock() - t0)
        calls += 1
    return best


def memory_bandwidth(seconds: float, clock: Callable[[], float]) -> tuple[float, float]:
    """GB/s of a torch copy (bytes read + written) and of a torch.sum (bytes read), timed as the
    kernels are: the fastest call, each on the next SLICE_BYTES of buffers far beyond L3."""
    src = torch.ones(WEIGHT_BYTES // 4).view(-1, SLICE_BYTES // 4)
    dst = torch.empty(src.shape[0] // 2, src.shape[1])  # copy: half of the slices read, half written
    copy_s = per_call(lambda i: dst[i % len(dst)].copy_(src[i % len(dst) + len(dst)]), seconds, clock)
    read_s = per_call(lambda i: src[i % len(src)].sum(), seconds, clock)
    return 2 * SLICE_BYTES / copy_s / 1e9, SLICE_BYTES / read_s / 1e9


def bind(library: ctypes.CDLL, name: str) -> Callable[..., None] | None:
    matmul = getattr(library, f"gguf_matmul_{name}", None)
    if matmul is None:
        return None
    matmul.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64]
    matmul.argtypes += [ctypes.c_void_p]
    matmul.restype = None
    return matmul


def call(
    matmul: Callable[..., None], x: torch.Tensor, weights: list[np.ndarray], y: torch.Tensor
) -> Callable[[int], None]:
    """The i-th call multiplies by weights[i % len(weights)]."""
    m, k = x.shape

    def run(i: int) -> None:
        matmul(x.data_ptr(), m, k, weights[i % len(weights)].ctypes.data, y.shape[1], y.data_ptr())

    return run


def cold_copies(weight: np.ndarray) -> list[np.ndarray]:
    return [weight] + [weight.copy() for _ in range(max(1, WEIGHT_BYTES // weight.nbytes) - 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--k", type=int, default=4096)
    parser.add_argument("--threads", default=f"1,{torch.get_num_threads()}", help="thread counts to measure")
    parser.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    parser.add_argument("--types", default=",".join(TYPES), help="comma-separated GGUF types")
    parser.add_argument("--m", default="32,512", help="row counts for the GEMM figures ('' for none)")
    parser.add_argument("--baseline", help="a git revision whose kernels to measure beside today's (e.g. main)")
    parser.add_argument("--small", action="store_true", help="also m = 1 at n = 192, k = 576 (a k/v projection)")
    args = parser.parse_args()
    n, k = args.n, args.k
    types = [t.strip().lower() for t in args.types.split(",") if t.strip()]
    library = cpu.load()
    if library is None:
        raise SystemExit("the CPU kernels could not be built here (see the warning above)")
    builds = {"now": library}
    if args.baseline:
        builds = {args.baseline: build_revision(args.baseline), "now": library}
    print(f"CPU: {cpu_name()}; n x k = {n} x {k}; the fastest call of each; load average {os.getloadavg()}")
    rng = np.random.default_rng(0)
    weights = {name: random_weight(name, n, k, rng) for name in types}
    # a k/v projection's shape: 192 x 576 (K-quants: 192 x 512, whole 256-weight blocks)
    small = {name: random_weight(name, 192, small_k(name), rng) for name in types} if args.small else {}
    x1, y1 = torch.randn(1, k), torch.empty(1, n)
    ys1 = torch.empty(1, 192)
    for threads in sorted({int(t) for t in args.threads.split(",")}):
        torch.set_num_threads(threads)  # also the kernels' OpenMP threads: one libgomp
        # One thread: the process's CPU time (the calls run on this thread alone), which a call that
        # loses its core to another process does not accrue; more threads: wall-clock time.
        clock = time.process_time if threads == 1 else time.perf_counter
        copy_gbs, read_gbs = memory_bandwidth(args.seconds, clock)
        print(
            f"{threads} thread(s), {'CPU time' if threads == 1 else 'wall clock'}:"
            f" memory read {read_gbs:.1f} GB/s, copy {copy_gbs:.1f} GB/s (read + write); load {os.getloadavg()[0]:.2f}"
        )
        for name in types:
            weight = weights[name]
            copies = cold_copies(weight)
            for build, lib in builds.items():
                matmul = bind(lib, name)
                if matmul is None:
                    print(f"  {name} m=1 [{build}]: not in this build")
                    continue
                cold = per_call(call(matmul, x1, copies, y1), args.seconds, clock)
                hot = per_call(call(matmul, x1, [weight], y1), args.seconds, clock)
                gbs = weight.nbytes / cold / 1e9
                line = (
                    f"  {name} m=1 [{build}]: {cold * 1e3:6.3f} ms, {gbs:5.1f} GB/s of weights"
                    f" ({gbs / read_gbs:4.0%} of read); L3-hot {weight.nbytes / hot / 1e9:5.1f} GB/s"
                )
                if name in small:
                    small_copies = cold_copies(small[name])
                    xs1 = torch.randn(1, small_k(name))
                    small_s = per_call(call(matmul, xs1, small_copies, ys1), args.seconds, clock)
                    small_gbs = small[name].nbytes / small_s / 1e9
                    line += f"; 192 x {small_k(name)}: {small_s * 1e6:5.1f} us, {small_gbs:5.1f} GB/s"
                print(line)
            del copies
        for m in [int(v) for v in args.m.split(",") if v.strip()]:
            x, y = torch.randn(m, k), torch.empty(m, n)
            flops = 2 * m * n * k
            for name in types:
                dense = torch.from_numpy(quants.dequantize(weights[name], GGUF_TYPES[name]).astype(np.float32))
                theirs = per_call(lambda i, x=x, dense=dense: F.linear(x, dense), args.seconds, clock)
                figures = []
                for build, lib in builds.items():
                    matmul = bind(lib, name)
                    if matmul is not None:
                        ours = per_call(call(matmul, x, [weights[name]], y), args.seconds, clock)
                        figures.append(f"[{build}] {flops / ours / 1e9:6.1f} GFLOP/s ({theirs / ours:4.2f}x F.linear)")
                print(f"  {name} m={m}: " + ", ".join(figures) + f"; F.linear fp32 {flops / theirs / 1e9:6.1f} GFLOP/s")


if __name__ == "__main__":
    main()
