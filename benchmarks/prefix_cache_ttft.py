"""Time to first token with the prefix cache on vs off (issue 8's workloads), in one run.

1. Shared system prompt: a --prefix-len token prefix, then 8 requests one after another,
   each with its own 32-token question. Warm requests reuse the cached prefix blocks.
2. Multi-turn chat: one conversation growing over 8 turns; each turn resends the history
   (previous prompt + the 64-token reply + a 32-token user message).
3. PERFORMANCE.md's cold vs warm: one 1,871-token prompt, then the same prefix with a new
   32-token suffix: the warm request should cost little more than its new tokens.

    python benchmarks/prefix_cache_ttft.py [--model M] [--dtype float32] [--prefix-len 1000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from vllm_cli.config import EngineArgs
from vllm_cli.engine.llm_engine import LLMEngine
from vllm_cli.sampling_params import SamplingParams


def ttft(engine: LLMEngine, request_id: str, prompt_ids: list[int], max_tokens: int = 1) -> tuple[float, list[int]]:
    """Seconds from submission to the first token, and the generated tokens (run to the end)."""
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    start = time.perf_counter()
    engine.add_request(request_id, None, params, prompt_token_ids=prompt_ids)
    first, tokens = None, []
    while engine.has_unfinished_requests():
        for out in engine.step():
            if first is None and out.outputs[0].token_ids:
                first = time.perf_counter() - start
            if out.finished:
                tokens = out.outputs[0].token_ids
    return first, tokens


def run(engine: LLMEngine, args, rng: torch.Generator) -> dict:
    vocab = engine.vocab_size
    rand = lambda n: torch.randint(100, vocab, (n,), generator=rng).tolist()  # noqa: E731
    result = {}
    system = rand(args.prefix_len)
    times = [ttft(engine, f"sys{i}", system + rand(32))[0] for i in range(8)]
    result["shared_prefix_ttft_s"] = times
    history, turn_times = rand(64), []
    for turn in range(8):
        prompt = history + rand(32)
        seconds, reply = ttft(engine, f"turn{turn}", prompt, max_tokens=64)
        turn_times.append(seconds)
        history = prompt + reply
    result["multi_turn_ttft_s"] = turn_times
    long_prefix = rand(1871)
    cold, _ = ttft(engine, "cold", long_prefix)
    warm, _ = ttft(engine, "warm", long_prefix + rand(32))
    result["cold_1871_ttft_s"], result["warm_1871_ttft_s"] = cold, warm
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--prefix-len", type=int, default=1000)
    parser.add_argument("--output-json", default=None)
    args = parser.parse_args()
    results = {}
    for caching in (True, False):
        engine = LLMEngine(EngineArgs(model=args.model, dtype=args.dtype, enable_prefix_caching=caching,
                                      kv_cache_memory="1GiB", max_model_len=4096, skip_tokenizer_init=True))
        ttft(engine, "warmup", list(range(100, 164)))
        results["on" if caching else "off"] = run(engine, args, torch.Generator().manual_seed(0))
        del engine
    on = results["on"]
    summary = {
        "shared_prefix_warm_mean_ttft_s": {k: statistics.mean(r["shared_prefix_ttft_s"][1:]) for k, r in results.items()},
        "multi_turn_mean_ttft_s (turns 2-8)": {k: statistics.mean(r["multi_turn_ttft_s"][1:]) for k, r in results.items()},
        "1871_cold_vs_warm": {"cold_s": on["cold_1871_ttft_s"], "warm_s": on["warm_1871_ttft_s"],
                              "speedup": on["cold_1871_ttft_s"] / on["warm_1871_ttft_s"]},
    }
    summary["shared_prefix_speedup"] = (summary["shared_prefix_warm_mean_ttft_s"]["off"]
                                        / summary["shared_prefix_warm_mean_ttft_s"]["on"])
    summary["multi_turn_speedup"] = (summary["multi_turn_mean_ttft_s (turns 2-8)"]["off"]
                                     / summary["multi_turn_mean_ttft_s (turns 2-8)"]["on"])
    print(json.dumps(summary, indent=2))
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump({"summary": summary, "raw": results, "args": vars(args)}, f, indent=2)


if __name__ == "__main__":
    main()
