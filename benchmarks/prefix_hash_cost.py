"""What the prefix cache's block hashes cost next to the prefill they key: one --prompt-len prompt's
prefill step (prefix caching off, so every token is computed) vs hashing all its full blocks, with
each --prefix-caching-hash-algo and, for reference, the Python hash() of a tuple it replaced.

    python benchmarks/prefix_hash_cost.py [--model M] [--dtype float32] [--prompt-len 2048]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from vllm_cli.config import PREFIX_CACHING_HASH_ALGOS, EngineArgs
from vllm_cli.engine.block_manager import BlockManager
from vllm_cli.engine.llm_engine import LLMEngine
from vllm_cli.engine.sequence import Request
from vllm_cli.sampling_params import SamplingParams


def prefill_seconds(engine: LLMEngine, request_id: str, prompt_ids: list[int]) -> float:
    """Seconds of one request of max_tokens=1: the prefill step (one step: the token budget holds it)."""
    engine.add_request(request_id, None, SamplingParams(temperature=0, max_tokens=1), prompt_token_ids=prompt_ids)
    start = time.perf_counter()
    steps = 0
    while engine.has_unfinished_requests():
        engine.step()
        steps += 1
    assert steps == 1, f"the prefill took {steps} steps"
    return time.perf_counter() - start


def hash_seconds(prompt_ids: list[int], block_size: int, algo: str | None, repeats: int) -> float:
    """Median seconds to hash every full block of the prompt (algo None: hash() of (parent, tuple))."""
    times = []
    for _ in range(repeats):
        seq = Request("h", None, prompt_ids, SamplingParams()).seqs[0]
        start = time.perf_counter()
        if algo is None:
            parent = None
            for i in range(len(prompt_ids) // block_size):
                parent = hash((parent, tuple(prompt_ids[i * block_size : (i + 1) * block_size])))
        else:
            BlockManager(2, block_size, hash_algo=algo)._full_block_hashes(seq, len(prompt_ids))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--prompt-len", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    engine = LLMEngine(EngineArgs(model=args.model, dtype=args.dtype, enable_prefix_caching=False,
                                  kv_cache_memory="1GiB", max_model_len=4096, max_num_batched_tokens=args.prompt_len,
                                  skip_tokenizer_init=True))
    rng = torch.Generator().manual_seed(0)
    prompt = torch.randint(100, engine.vocab_size, (args.prompt_len,), generator=rng).tolist()
    prefill_seconds(engine, "warmup", prompt[:64])
    prefill = statistics.median(prefill_seconds(engine, f"p{i}", prompt) for i in range(args.repeats))
    block_size = engine.args.block_size
    result = {"prompt_len": args.prompt_len, "block_size": block_size, "prefill_step_s": prefill, "hash_s": {}}
    for algo in (*PREFIX_CACHING_HASH_ALGOS, None):
        seconds = hash_seconds(prompt, block_size, algo, repeats=50)
        name = algo or "python hash() (before)"
        result["hash_s"][name] = seconds
        result.setdefault("hash_share_of_prefill", {})[name] = seconds / prefill
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
