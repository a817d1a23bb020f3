"""Decode and prefill step times with the CPU kernels (kernels/cpu.py) on vs off, in one run.

32 prompts x 64 random tokens, 64 new tokens each, greedy. The kernels are switched every 4
decode steps within each batch (and every other batch for the prefill), so both settings see
the same context lengths and the same machine state; the medians are compared.

    python benchmarks/cpu_kernels_decode.py [--dtype float32|bfloat16] [--batches 6]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from vllm_cli.config import EngineArgs
from vllm_cli.engine.llm_engine import LLMEngine
from vllm_cli.kernels import cpu as cpu_kernels
from vllm_cli.sampling_params import SamplingParams


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--batches", type=int, default=6)
    args = parser.parse_args()
    library = cpu_kernels.load()
    if library is None:
        raise SystemExit("the CPU kernels could not be built here (see the warning above)")
    engine = LLMEngine(EngineArgs(model=args.model, dtype=args.dtype, skip_tokenizer_init=True,
                                  kv_cache_memory="1GiB"))
    rng = torch.Generator().manual_seed(0)
    params = SamplingParams(temperature=0, max_tokens=64, ignore_eos=True)
    times: dict[tuple[str, bool], list[float]] = {}

    def timed_step(kind: str, on: bool) -> None:
        cpu_kernels._library = library if on else None
        start = time.perf_counter()
        engine.step()
        times.setdefault((kind, on), []).append(time.perf_counter() - start)

    for batch in range(args.batches + 1):  # the first batch warms up
        for i in range(32):
            engine.add_request(f"b{batch}-{i}", None, params,
                               prompt_token_ids=torch.randint(100, engine.vocab_size, (64,), generator=rng).tolist())
        timed_step("prefill", batch % 2 == 0)
        step = 0
        while engine.has_unfinished_requests():
            timed_step("decode", (step // 4) % 2 == 0)
            step += 1
        if batch == 0:
            times.clear()
    cpu_kernels._library = library
    for kind in ("prefill", "decode"):
        on, off = (statistics.median(times[(kind, flag)]) * 1e3 for flag in (True, False))
        print(f"{kind:8s} step, median: kernels on {on:7.1f} ms, off {off:7.1f} ms: {off / on:.2f}x")


if __name__ == "__main__":
    main()
