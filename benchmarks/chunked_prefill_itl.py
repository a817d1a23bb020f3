"""Inter-token latency of running streams while a long prompt arrives: chunked prefill on vs off.

16 requests stream (64-token prompts, 160 tokens each); once they are decoding, one
--long-len token prompt arrives. Without chunked prefill its whole prefill shares one step
with the 16 decodes, so every stream stalls for it; with chunked prefill it is split into
--max-num-batched-tokens chunks interleaved with the decodes.

    python benchmarks/chunked_prefill_itl.py [--long-len 4000] [--chunk 512]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

import torch

from vllm_cli.config import EngineArgs
from vllm_cli.engine.async_engine import AsyncEngine
from vllm_cli.sampling_params import SamplingParams


async def stream(engine: AsyncEngine, ids: list[int], max_tokens: int, stamps: list[float]) -> None:
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    async for out in engine.generate({"prompt_token_ids": ids}, params, prompt_token_ids=ids):
        stamps.extend([time.perf_counter()] * len(out.outputs[0].token_ids))


async def scenario(engine: AsyncEngine, long_len: int) -> dict:
    g = torch.Generator().manual_seed(0)
    vocab = engine.engine.vocab_size
    prompts = [torch.randint(100, vocab, (64,), generator=g).tolist() for _ in range(16)]
    stamps: list[list[float]] = [[] for _ in prompts]
    tasks = [asyncio.create_task(stream(engine, p, 160, s)) for p, s in zip(prompts, stamps)]
    while min(len(s) for s in stamps) < 20:  # every stream is decoding
        await asyncio.sleep(0.01)
    long_prompt = torch.randint(100, vocab, (long_len,), generator=g).tolist()
    arrival = time.perf_counter()
    long_stamps: list[float] = []
    await stream(engine, long_prompt, 1, long_stamps)
    await asyncio.gather(*tasks)
    gaps = [b - a for s in stamps for a, b in zip(s, s[1:]) if b > arrival - 0.5 and b - a > 0]
    return {"itl_p50_ms": statistics.median(gaps) * 1e3,
            "itl_p99_ms": statistics.quantiles(gaps, n=100)[98] * 1e3,
            "itl_max_ms": max(gaps) * 1e3,
            "long_prompt_ttft_s": long_stamps[0] - arrival}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--long-len", type=int, default=4000)
    parser.add_argument("--chunk", type=int, default=512, help="--max-num-batched-tokens with chunked prefill")
    parser.add_argument("--output-json", default=None)
    args = parser.parse_args()
    results = {}
    for chunked in (False, True):
        engine_args = EngineArgs(model=args.model, dtype=args.dtype, skip_tokenizer_init=True, max_model_len=8192,
                                 kv_cache_memory="2GiB", enable_chunked_prefill=chunked,
                                 max_num_batched_tokens=args.chunk if chunked else None,
                                 enable_prefix_caching=False)
        engine = AsyncEngine.from_engine_args(engine_args)
        results["on" if chunked else "off"] = asyncio.run(scenario(engine, args.long_len))
        engine.shutdown()
    print(json.dumps(results, indent=2))
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump({"results": results, "args": vars(args)}, f, indent=2)


if __name__ == "__main__":
    main()
