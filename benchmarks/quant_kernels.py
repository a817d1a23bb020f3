"""The K-quant matmul kernels (kernels/quant_kquants.c) against the machine's memory bandwidth, in one run.

m = 1 (decode) is bound by the weight bytes read: GB/s of Q4_K/Q5_K/Q6_K blocks read per second,
next to a plain copy (torch, all threads; bytes read + written) and a plain read (torch.sum) of a
buffer far larger than the L3 cache. The weights are several copies of an n x k matrix (together
well over L3) used in turn, so each call reads from DRAM as a model's layers do; "hot" repeats one
copy (L3-resident when it fits). m = 8 and 32 (batched decode, short prefill) report GFLOP/s, next
to torch's float32 matmul (MKL) on the dequantized weight, which reads 4 bytes a weight.

    python benchmarks/quant_kernels.py [--n 4096] [--k 4096] [--seconds 1.0]
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

# The quantized types' block bytes and the offsets of their f16 super-scales (ggml's layouts).
TYPES = {"q4_k": (144, (0, 2)), "q5_k": (176, (0, 2)), "q6_k": (210, (208,))}
GGUF_TYPES = {"q4_k": GGMLQuantizationType.Q4_K, "q5_k": GGMLQuantizationType.Q5_K, "q6_k": GGMLQuantizationType.Q6_K}
DRAM_BYTES = 512 << 20  # weight copies cycled through at m = 1: far beyond any L3


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
    block_bytes, scale_offsets = TYPES[name]
    blocks = rng.integers(0, 256, size=(n * k // 256, block_bytes), dtype=np.uint8)
    for offset in scale_offsets:
        blocks[:, offset : offset + 2] = (
            (rng.random(len(blocks)) * 0.01).astype(np.float16).view(np.uint8).reshape(-1, 2)
        )
    return blocks.reshape(n, -1)


def per_call(fn: Callable[[int], None], seconds: float) -> float:
    """Median seconds per call over rounds of at least `seconds` / 5 each (fn(i): the i-th call)."""
    fn(0)
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds / 5:
        fn(calls)
        calls += 1
    rounds = []
    for _ in range(5):
        start = time.perf_counter()
        for i in range(calls):
            fn(i)
        rounds.append((time.perf_counter() - start) / calls)
    return float(np.median(rounds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--k", type=int, default=4096)
    parser.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    args = parser.parse_args()
    n, k = args.n, args.k
    library = cpu.load()
    if library is None:
        raise SystemExit("the CPU kernels could not be built here (see the warning above)")
    print(f"CPU: {cpu_name()}, {torch.get_num_threads()} threads; n x k = {n} x {k}")

    src = torch.ones(DRAM_BYTES // 4)
    dst = torch.empty_like(src)
    copy_s = per_call(lambda i: dst.copy_(src), args.seconds)
    read_s = per_call(lambda i: src.sum(), args.seconds)
    copy_gbs, read_gbs = 2 * DRAM_BYTES / copy_s / 1e9, DRAM_BYTES / read_s / 1e9
    print(f"memory: copy {copy_gbs:.1f} GB/s (read + write), read {read_gbs:.1f} GB/s ({DRAM_BYTES >> 20} MiB)")
    del src, dst

    rng = np.random.default_rng(0)
    x1 = torch.randn(1, k)
    y1 = torch.empty(1, n)
    for name in TYPES:
        matmul = getattr(library, f"gguf_matmul_{name}")
        matmul.argtypes = [
            ctypes.c_void_p,
            ctypes.c_int64,
            ctypes.c_int64,
            ctypes.c_void_p,
            ctypes.c_int64,
            ctypes.c_void_p,
        ]
        matmul.restype = None
        weight = random_weight(name, n, k, rng)
        copies = [weight] + [weight.copy() for _ in range(max(1, DRAM_BYTES // weight.nbytes) - 1)]

        def gemv(i: int, copies: list[np.ndarray] = copies) -> None:
            matmul(x1.data_ptr(), 1, k, copies[i % len(copies)].ctypes.data, n, y1.data_ptr())

        cold = per_call(gemv, args.seconds)
        hot = per_call(lambda i: matmul(x1.data_ptr(), 1, k, weight.ctypes.data, n, y1.data_ptr()), args.seconds)
        gbs = weight.nbytes / cold / 1e9
        line = (
            f"{name} m=1: {cold * 1e3:6.3f} ms, {gbs:5.1f} GB/s of weights ({gbs / read_gbs:4.0%} of read,"
            f" {gbs / copy_gbs:4.0%} of copy); hot {weight.nbytes / hot / 1e9:5.1f} GB/s"
        )
        dense = torch.from_numpy(quants.dequantize(weight, GGUF_TYPES[name]).astype(np.float32))
        torch_s = per_call(lambda i: torch.mm(x1, dense.T), args.seconds)
        line += f"; torch fp32 GEMV {torch_s * 1e3:6.3f} ms ({torch_s / cold:.1f}x slower)"
        print(line)
        for m in (8, 32):
            x = torch.randn(m, k)
            y = torch.empty(m, n)
            ours = per_call(lambda i: matmul(x.data_ptr(), m, k, weight.ctypes.data, n, y.data_ptr()), args.seconds)
            theirs = per_call(lambda i: torch.mm(x, dense.T), args.seconds)
            flops = 2 * m * n * k
            print(
                f"{name} m={m}: {flops / ours / 1e9:6.1f} GFLOP/s ({ours * 1e3:6.2f} ms);"
                f" torch fp32 on the dequantized weight {flops / theirs / 1e9:6.1f} GFLOP/s"
            )
        del copies, dense


if __name__ == "__main__":
    main()
