"""Batch-decode GEMMs on our float kernels (kernels/float_gemm.c) as the model runs them, A/B against
another checkout's kernels in the same process (issue 19: bf16 batch throughput vs its GEMM ceiling).

At 32 rows a decode step reads every layer's weights from DRAM (SmolLM2-135M: 212 MB of bf16 layer
weights, 57 MB of LM head), which a linear timed alone on one repeated weight never pays. Per build,
each round prints: the 30 layers' four linears (qkv, o, gate_up, down) with one weight repeated ("hot",
it stays in the caches), the same with every layer's own weights ("own", streamed as in the engine),
and the LM head (49,152 x 576). Builds alternate within a round; the best of --repeats is kept.

  python benchmarks/fgemm_streaming.py --rows 32 --baseline-src /path/to/other/checkout

--baseline-src: a checkout whose kernels/*.c are compiled as the baseline (e.g. `git worktree add
/tmp/base <commit>`); without it only this tree's kernels run. Weights are packed once, by this tree's
CpuLinear (the layout is the same in both builds).
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import os
import subprocess
import tempfile
from collections.abc import Callable

import torch
from gemm_ceiling import best_time  # benchmarks/ is on the path when run as a script
from vllm_cli.kernels import cpu

from vllm_cli.model_executor.layers.cpu_linear import fgemm_pack

# SmolLM2-135M: (in_features, out_features) of each layer's linears
LAYER_SHAPES = {"qkv": (576, 960), "o": (576, 576), "gate_up": (576, 3072), "down": (1536, 576)}
LM_HEAD = (576, 49152)
LAYERS = 30


def build(source_dir: str, out_dir: str, name: str) -> ctypes.CDLL:
    """source_dir/kernels/*.c compiled with kernels/cpu.py's flags into one library."""
    sources = sorted(glob.glob(os.path.join(source_dir, "kernels", "*.c")))
    target = os.path.join(out_dir, f"{name}.so")
    subprocess.run(["cc", "-march=native", *cpu._CFLAGS, "-fopenmp", *sources, "-o", target, "-lm"], check=True)
    return ctypes.CDLL(target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    parser.add_argument("--baseline-src", default=None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out_dir = tempfile.mkdtemp(prefix="fgemm_streaming-")
    sources = {"this tree": here, **({"baseline": args.baseline_src} if args.baseline_src else {})}
    kernels = {}
    symbol = "fgemm_matmul_bf16" if dtype == torch.bfloat16 else "fgemm_matmul_f32"
    signature = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p]
    for i, (name, source) in enumerate(sources.items()):
        fn = getattr(build(source, out_dir, f"build{i}"), symbol)
        fn.argtypes, fn.restype = signature, None
        kernels[name] = fn

    def packed(k: int, n: int) -> tuple[torch.Tensor, int, int]:
        return fgemm_pack(torch.randn(n, k, dtype=dtype) * 0.02), k, n

    layers = [[packed(k, n) for k, n in LAYER_SHAPES.values()] for _ in range(LAYERS)]
    head_weight, head_k, head_n = packed(*LM_HEAD)
    rows = args.rows
    xs = {k: torch.randn(rows, k) for k in (576, 1536)}
    ys = {n: torch.empty(rows, n) for n in (960, 576, 3072, 49152)}

    def chain(fn: Callable[..., None], weights: list[list[tuple[torch.Tensor, int, int]]]) -> None:
        for layer in weights:
            for w, k, n in layer:
                fn(xs[k].data_ptr(), rows, k, w.data_ptr(), n, ys[n].data_ptr())

    print(f"{args.dtype}, {rows} rows, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f}")
    for r in range(args.rounds):
        cells = []
        for name, fn in kernels.items():
            hot = best_time(lambda fn=fn: chain(fn, [layers[0]] * LAYERS), args.repeats)
            own = best_time(lambda fn=fn: chain(fn, layers), args.repeats)
            head = best_time(
                lambda fn=fn: fn(
                    xs[head_k].data_ptr(), rows, head_k, head_weight.data_ptr(), head_n, ys[head_n].data_ptr()
                ),
                args.repeats,
            )
            cells.append(f"{name}: hot {hot * 1e3:.2f} ms, own weights {own * 1e3:.2f} ms, LM head {head * 1e3:.2f} ms")
        print(f"round {r}: " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
