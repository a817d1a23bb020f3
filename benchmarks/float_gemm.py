"""Our float GEMM (kernels/float_gemm.c, CpuLinear kind "fgemm") against oneDNN prepacked (kind "mkldnn")
and plain F.linear, per weight shape and row count, in float32 and bfloat16, at 1 and 2 threads.

At m <= 8 (decode) a linear reads its weight once and does little else: the figure is GB/s of weight
read, with the weights DRAM-cold (each kind cycles through enough copies of the weight to exceed the
L3, as a model's layers do). At larger m it is GFLOP/s (weights cache-warm, as in a GEMM benchmark).

    python benchmarks/float_gemm.py                          # SmolLM2-135M's shapes + a 1B's, both dtypes
    python benchmarks/float_gemm.py --rows 1 8 32 --threads 2 --dtypes bfloat16 --shapes smollm2
    python benchmarks/float_gemm.py --decode MODEL.gguf --dtypes float32   # end to end, see below

--decode: a model's single-stream decode steps, with our kernels offered to CpuLinear's pick (as shipped)
and without them (the library chosen as before: oneDNN, MKL or torch, timed at 32 rows), two engines in
one process at one thread, requests alternating between them; CPU time per step (median), which a
process descheduled on a shared machine does not accrue.

Best of several timings per kind and cell; at 1 thread in CPU time (time.process_time: a process
descheduled on this shared machine does not accrue it), at 2 threads in wall time. The load average is
printed before and after the table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from vllm_cli.model_executor.layers import cpu_linear
from vllm_cli.model_executor.layers.cpu_linear import _pack, _run_packed, cpu_linear_kinds

SHAPES = {  # (in_features k, out_features n)
    "smollm2": [(576, 960), (576, 576), (576, 3072), (1536, 576), (576, 49152)],
    "1b": [(2048, 2048), (2048, 16384), (8192, 2048)],
}
COLD_BYTES = 96 << 20  # > this CPU's 32 MB L3, with room to spare


def _time(run: Callable[[], object], min_seconds: float, clock: Callable[[], float], max_repeats: int = 50) -> float:
    run()
    best, spent, repeats = float("inf"), 0.0, 0
    while repeats < 3 or (spent < min_seconds and repeats < max_repeats):
        start = clock()
        run()
        elapsed = clock() - start
        best, spent, repeats = min(best, elapsed), spent + elapsed, repeats + 1
    return best


def _runners(dtype: torch.dtype, k: int, n: int, rows: int, cold: bool) -> tuple[dict[str, Callable[[], object]], int]:
    """Each kind's call over all copies of the weight, and how many copies."""
    weight = torch.randn(n, k).to(dtype) / k**0.5
    copies = max(1, -(-COLD_BYTES // weight.nbytes)) if cold else 1
    x = torch.randn(rows, k).to(dtype)
    shape_only = torch.empty_strided((n, k), (0, 0), dtype=dtype)
    runners: dict[str, Callable[[], object]] = {}
    kinds = {"fgemm": "ours", "mkldnn": "oneDNN"}
    for kind, label in kinds.items():
        if kind not in cpu_linear_kinds(dtype):
            continue
        packs = [_pack(kind, weight) for _ in range(copies)]

        def run(packs: list[torch.Tensor] = packs, kind: str = kind) -> None:
            for packed in packs:
                _run_packed(kind, x, packed, None, shape_only)

        runners[label] = run
    plain = [weight.clone() for _ in range(copies)]

    def run_plain() -> None:
        for w in plain:
            F.linear(x, w)

    runners["F.linear"] = run_plain
    return runners, copies


def _engine(model: str, dtype: str, with_fgemm: bool) -> object:
    from vllm_cli.config import EngineArgs
    from vllm_cli.engine.llm_engine import LLMEngine

    offered = cpu_linear.cpu_linear_kinds
    probe_rows = cpu_linear._PROBE_ROWS
    cpu_linear._FASTEST_KIND.clear()
    if not with_fgemm:
        cpu_linear.cpu_linear_kinds = lambda d: [k for k in offered(d) if k != "fgemm"]  # type: ignore[assignment]
        cpu_linear._PROBE_ROWS = (32,)  # the pick before fgemm: 32 rows only
    try:
        args = EngineArgs(
            model=model,
            dtype=dtype,
            quantization="none",
            max_model_len=512,
            kv_cache_memory="256MiB",
            enable_prefix_caching=False,
        )
        return LLMEngine.from_engine_args(args)
    finally:
        cpu_linear.cpu_linear_kinds = offered  # type: ignore[assignment]
        cpu_linear._PROBE_ROWS = probe_rows


def _decode_cpu_ms(engine: object, input_len: int, steps: int, seed: int) -> list[float]:
    from vllm_cli.sampling_params import SamplingParams

    prompt = torch.randint(0, 10_000, (input_len,), generator=torch.Generator().manual_seed(seed)).tolist()
    params = SamplingParams(temperature=0.0, ignore_eos=True, max_tokens=steps + 1, output_kind="final_only")
    engine.add_request(f"r{seed}-{time.monotonic_ns()}", prompt, params, prompt_token_ids=prompt)  # type: ignore[attr-defined]
    times = []
    while engine.has_unfinished_requests():  # type: ignore[attr-defined]
        start = time.process_time()
        engine.step()  # type: ignore[attr-defined]
        times.append(1e3 * (time.process_time() - start))
    return times[1:]  # the first step is the prefill


def decode(model: str, dtypes: list[str], input_len: int, steps: int, rounds: int) -> None:
    torch.set_num_threads(1)
    print(f"{model}: decode steps at 1 thread, CPU ms per step (median); load average {os.getloadavg()}")
    for dtype in dtypes:
        engines = {"without fgemm": _engine(model, dtype, False), "with fgemm": _engine(model, dtype, True)}
        times: dict[str, list[float]] = {label: [] for label in engines}
        for engine in engines.values():
            _decode_cpu_ms(engine, input_len, 4, seed=0)  # warm-up
        for r in range(rounds):
            for label, engine in engines.items():
                times[label] += _decode_cpu_ms(engine, input_len, steps, seed=r)
        medians = {label: statistics.median(t) for label, t in times.items()}
        print(
            f"| {dtype} | "
            + " | ".join(f"{label}: {ms:.2f} ms ({1e3 / ms:.1f} tok/s)" for label, ms in medians.items())
            + f" | {medians['without fgemm'] / medians['with fgemm']:.2f}x |",
            flush=True,
        )
        del engines
    print(f"load average after: {os.getloadavg()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--rows", nargs="+", type=int, default=[1, 8, 32, 512, 2048])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    parser.add_argument("--min-seconds", type=float, default=0.2, help="time each cell at least this long")
    parser.add_argument(
        "--max-gflop", type=float, default=60.0, help="skip cells whose one call exceeds this many GFLOP"
    )
    parser.add_argument("--decode", metavar="MODEL", help="end to end: a model's decode steps with and without fgemm")
    parser.add_argument("--input-len", type=int, default=64)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if args.decode:
        decode(args.decode, args.dtypes, args.input_len, args.steps, args.rounds)
        return
    print(f"CPU: {os.cpu_count()} logical CPUs; torch {torch.__version__}; load average {os.getloadavg()}")
    print("| dtype | k x n | m | threads | unit | ours | oneDNN | F.linear | ours / oneDNN |")
    print("|---|---|---|---|---|---|---|---|---|")
    for dtype_name in args.dtypes:
        dtype = getattr(torch, dtype_name)
        for shape_set in args.shapes:
            for k, n in SHAPES[shape_set]:
                for rows in args.rows:
                    if 2 * rows * k * n / 1e9 > args.max_gflop:
                        continue
                    cold = rows <= 8
                    runners, copies = _runners(dtype, k, n, rows, cold)
                    for threads in args.threads:
                        torch.set_num_threads(threads)
                        # one thread: CPU time, which a descheduled process does not accrue (the machine is
                        # shared); two: wall time (CPU time would count the threads' spin-waits)
                        clock = time.process_time if threads == 1 else time.perf_counter
                        seconds = {
                            label: _time(run, args.min_seconds, clock) / copies for label, run in runners.items()
                        }
                        if cold:
                            unit, scale = "GB/s", n * k * torch.finfo(dtype).bits / 8 / 1e9
                        else:
                            unit, scale = "GFLOP/s", 2 * rows * k * n / 1e9
                        figures = {label: scale / s for label, s in seconds.items()}
                        ratio = seconds["oneDNN"] / seconds["ours"] if "oneDNN" in seconds and "ours" in seconds else 0
                        print(
                            f"| {dtype_name} | {k}x{n} | {rows} | {threads} | {unit} | "
                            f"{figures.get('ours', 0):.1f} | {figures.get('oneDNN', 0):.1f} | "
                            f"{figures['F.linear']:.1f} | {ratio:.2f}x |",
                            flush=True,
                        )
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
