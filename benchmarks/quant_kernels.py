"""The GGUF matmul kernels of kernels/quant_kquants.c against the machine's memory bandwidth, in one run.

m = 1 (decode) is bound by the weight bytes read: GB/s of Q4_K/Q5_K/Q6_K/Q5_0/Q5_1 blocks read per second,
next to a plain copy (torch; bytes read + written) and a plain read (torch.sum) of 8 MiB slices of
buffers far larger than the L3 cache. The weights are several copies of an n x k matrix (together
well over L3) used in turn, so each call reads from DRAM as a model's layers do; "hot" repeats one
copy (L3-resident when it fits). m = 8 and 32 (batched decode, short prefill) report GFLOP/s, next
to torch's float32 matmul on the dequantized weight, which reads 4 bytes a weight. Every figure is
the fastest call; with one thread timed in CPU time (a call that loses its core to another process
does not count the wait), with more in wall-clock time.

    python benchmarks/quant_kernels.py [--n 4096] [--k 4096] [--threads 1,2] [--seconds 1.0]
"""

from __future__ import annotations

import argparse
import ctypes
import platform
import time
from collections.abc import Callable

import numpy as np
import torch
from gguf import GGMLQuantizationType, quants
from vllm_cli.kernels import cpu

# type -> (weights per block, bytes per block, offsets of its f16 scales): ggml's layouts
TYPES = {
    "q4_k": (256, 144, (0, 2)),
    "q5_k": (256, 176, (0, 2)),
    "q6_k": (256, 210, (208,)),
    "q5_0": (32, 22, (0,)),
    "q5_1": (32, 24, (0, 2)),
}
GGUF_TYPES = {name: GGMLQuantizationType[name.upper()] for name in TYPES}
WEIGHT_BYTES = 512 << 20  # weight copies cycled through at m = 1, and the copy/read buffers
SLICE_BYTES = 8 << 20  # bytes per copy/read call: about one 4096 x 4096 weight (Q4_K 9.4 MB)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def random_weight(name: str, n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    block_elems, block_bytes, scale_offsets = TYPES[name]
    blocks = rng.integers(0, 256, size=(n * k // block_elems, block_bytes), dtype=np.uint8)
    for offset in scale_offsets:
        blocks[:, offset : offset + 2] = (
            (rng.random(len(blocks)) * 0.01).astype(np.float16).view(np.uint8).reshape(-1, 2)
        )
    return blocks.reshape(n, -1)


def per_call(fn: Callable[[int], None], seconds: float, clock: Callable[[], float]) -> float:
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


def bind(library: ctypes.CDLL, name: str) -> Callable[..., None]:
    matmul = getattr(library, f"gguf_matmul_{name}")
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


def torch_call(x: torch.Tensor, weight: torch.Tensor) -> Callable[[int], None]:
    return lambda i: torch.mm(x, weight.T)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--k", type=int, default=4096)
    parser.add_argument("--threads", default=f"1,{torch.get_num_threads()}", help="thread counts to measure")
    parser.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    args = parser.parse_args()
    n, k = args.n, args.k
    library = cpu.load()
    if library is None:
        raise SystemExit("the CPU kernels could not be built here (see the warning above)")
    print(f"CPU: {cpu_name()}; n x k = {n} x {k}; the fastest call of each")
    rng = np.random.default_rng(0)
    weights = {name: random_weight(name, n, k, rng) for name in TYPES}
    dense = {
        name: torch.from_numpy(quants.dequantize(w, GGUF_TYPES[name]).astype(np.float32)) for name, w in weights.items()
    }
    x1, y1 = torch.randn(1, k), torch.empty(1, n)
    for threads in sorted({int(t) for t in args.threads.split(",")}):
        torch.set_num_threads(threads)  # also the kernels' OpenMP threads: one libgomp
        # One thread: the process's CPU time (the calls run on this thread alone), which a call that
        # loses its core to another process does not accrue; more threads: wall-clock time.
        clock = time.process_time if threads == 1 else time.perf_counter
        copy_gbs, read_gbs = memory_bandwidth(args.seconds, clock)
        print(
            f"{threads} thread(s), {'CPU time' if threads == 1 else 'wall clock'}:"
            f" memory copy {copy_gbs:.1f} GB/s (read + write), read {read_gbs:.1f} GB/s"
        )
        for name, weight in weights.items():
            matmul = bind(library, name)
            copies = [weight] + [weight.copy() for _ in range(max(1, WEIGHT_BYTES // weight.nbytes) - 1)]
            cold = per_call(call(matmul, x1, copies, y1), args.seconds, clock)
            hot = per_call(call(matmul, x1, [weight], y1), args.seconds, clock)
            torch_s = per_call(torch_call(x1, dense[name]), args.seconds, clock)
            gbs = weight.nbytes / cold / 1e9
            print(
                f"  {name} m=1: {cold * 1e3:6.3f} ms, {gbs:5.1f} GB/s of weights ({gbs / read_gbs:4.0%} of read,"
                f" {gbs / copy_gbs:4.0%} of copy); L3-hot {weight.nbytes / hot / 1e9:5.1f} GB/s;"
                f" torch fp32 GEMV on the dequantized weight {torch_s * 1e3:6.3f} ms ({torch_s / cold:.1f}x our time)"
            )
            del copies
        for m in (8, 32):
            x, y = torch.randn(m, k), torch.empty(m, n)
            for name, weight in weights.items():
                ours = per_call(call(bind(library, name), x, [weight], y), args.seconds, clock)
                theirs = per_call(torch_call(x, dense[name]), args.seconds, clock)
                flops = 2 * m * n * k
                print(
                    f"  {name} m={m}: {flops / ours / 1e9:6.1f} GFLOP/s"
                    f" ({ours * 1e3:6.2f} ms); torch fp32 on the dequantized weight {flops / theirs / 1e9:6.1f} GFLOP/s"
                )


if __name__ == "__main__":
    main()
