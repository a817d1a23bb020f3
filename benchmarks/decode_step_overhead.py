"""The fixed cost of a decode step at batch 1: where a step's time goes, apart from reading weights.

One request (random prompt of --input-len tokens) is prefilled, then --steps decode steps are
timed one by one, each split into the engine's phases:

  schedule      Scheduler.schedule (block allocation included)
  prepare       core.prepare_batch (scheduled sequences -> StepInput lists)
  inputs+meta   ModelRunner: the step's tensors and the attention metadata
  forward       the model's trunk (embedding, every layer, final norm)
  lm_head       the logits of the sampled row
  sample        the sampler (greedy here)
  output        OutputProcessor (append token, stop checks, detokenize, RequestOutput)
  rest          LLMEngine.step minus all of the above

Two ways to name the fixed cost, both printed:
  - step time - (bytes of the weights read per step / measured memory-read bandwidth);
  - the step time of the same model with its hidden sizes shrunk to a few dozen (--tiny): same
    number of layers, same ops per layer, weights ~0 bytes. Needs --config (a config.json dir).

Usage (figures in benchmarks/RESULTS.md, "Decode step fixed cost (issue 19)"):
  python benchmarks/decode_step_overhead.py MODEL.gguf --dtype bfloat16
  python benchmarks/decode_step_overhead.py --config DIR --tiny   # dummy weights, 64-wide layers
  python benchmarks/decode_step_overhead.py MODEL.gguf --profile  # torch.profiler op table too
  VLLM_CLI_DECODE_LOOP=0 python benchmarks/decode_step_overhead.py --config DIR --tiny --quantization int8
      # the C decode loop off (A/B): it runs where every linear has kernel parts (int8 here)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch

from vllm_cli.benchmarks.report import read_bandwidth_gbs
from vllm_cli.config import EngineArgs
from vllm_cli.engine import core as core_module
from vllm_cli.engine.llm_engine import LLMEngine
from vllm_cli.sampling_params import SamplingParams

PHASES = ("schedule", "prepare", "inputs+meta", "forward", "lm_head", "sample", "output")


def weight_bytes_per_step(model: torch.nn.Module) -> int:
    """Bytes a batch-1 decode step reads: every parameter and weight buffer (quantized blocks
    included), every prepacked linear (CpuLinear: its logical in x out weight; a packed buffer's own
    size says little), but of the token embedding one row only, unless the LM head shares it."""

    def tensors(module: torch.nn.Module | None) -> list[torch.Tensor]:
        return [] if module is None else [*module.parameters(), *module.buffers()]

    lm_head_ptrs = {t.data_ptr() for t in tensors(getattr(model, "lm_head", None))}
    one_row = {t.data_ptr() for t in tensors(getattr(model, "embedding", None))} - lm_head_ptrs
    skipped = {t.data_ptr() for t in tensors(getattr(model, "rotary", None))}  # tables: a row per step
    seen: set[int] = set()
    total = 0
    for t in tensors(model):
        if t.numel() == 0 or t.device.type == "meta" or t.data_ptr() in seen | skipped:
            continue
        seen.add(t.data_ptr())
        total += (t[0].numel() if t.data_ptr() in one_row else t.numel()) * t.element_size()
    for m in model.modules():
        packed = getattr(m, "packed", None)
        if isinstance(packed, torch.Tensor):
            total += m.in_features * m.out_features * packed.element_size()
    return total


class PhaseTimer:
    """Wraps methods so each call's wall time lands in one phase of the current step."""

    def __init__(self) -> None:
        self.current: dict[str, float] = defaultdict(float)

    def wrap(self, owner: Any, name: str, phase: str) -> None:
        original = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.current[phase] += time.perf_counter() - start

        setattr(owner, name, timed)

    def take(self) -> dict[str, float]:
        out, self.current = dict(self.current), defaultdict(float)
        return out


def instrument(engine: LLMEngine, timer: PhaseTimer) -> None:
    runner = engine.runner
    model = runner.model
    timer.wrap(engine.scheduler, "schedule", "schedule")
    timer.wrap(core_module, "prepare_batch", "prepare")
    timer.wrap(model, "forward", "forward")
    timer.wrap(model, "compute_logits", "lm_head")
    timer.wrap(engine.core, "sampler", "sample")
    timer.wrap(engine.output_processor, "process", "output")
    # inputs+meta: the runner's whole execute minus the forward and the LM head
    timer.wrap(runner, "execute", "execute")


def run(args: argparse.Namespace) -> dict:
    model = args.model
    skip_tokenizer = False
    if args.config:
        with open(os.path.join(args.config, "config.json")) as f:
            config = json.load(f)
        if args.tiny:
            # Same depth and ops per layer, weights ~0 bytes: what is left is the fixed cost.
            heads = 4
            config.update(
                hidden_size=64,
                intermediate_size=128,
                num_attention_heads=heads,
                num_key_value_heads=max(
                    1, heads * config.get("num_key_value_heads", heads) // config["num_attention_heads"]
                ),
                head_dim=16,
                vocab_size=512,
            )
        tmp = tempfile.mkdtemp(prefix="decode-overhead-")
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(config, f)
        model, skip_tokenizer = tmp, True
    engine_args = EngineArgs(
        model=model,
        dtype=args.dtype,
        load_format="dummy" if args.config else "auto",
        skip_tokenizer_init=skip_tokenizer,
        max_model_len=args.input_len + args.steps + 64,
        kv_cache_memory="256MiB",
        enable_prefix_caching=False,
        quantization=args.quantization,
    )
    engine = LLMEngine.from_engine_args(engine_args)
    timer = PhaseTimer()
    instrument(engine, timer)
    vocab = min(engine.vocab_size, 10_000)
    generator = torch.Generator().manual_seed(0)

    def one_request(output_len: int, on_step: Callable[[int, float, dict[str, float]], None] | None) -> None:
        prompt = torch.randint(0, vocab, (args.input_len,), generator=generator).tolist()
        params = SamplingParams(temperature=0.0, ignore_eos=True, max_tokens=output_len, output_kind="final_only")
        engine.add_request(f"r{time.monotonic_ns()}", prompt, params, prompt_token_ids=prompt)
        index = 0
        while engine.has_unfinished_requests():
            timer.take()
            cpu_start, start = time.process_time(), time.perf_counter()
            engine.step()
            elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
            if on_step is not None:
                on_step(index, elapsed, {**timer.take(), "cpu": cpu})
            index += 1

    one_request(8, None)  # warm-up: first calls, allocator
    steps: list[tuple[float, dict[str, float]]] = []

    def record(index: int, elapsed: float, phases: dict[str, float]) -> None:
        if index > 0:  # step 0 is the prefill
            steps.append((elapsed, phases))

    one_request(args.steps + 1, record)
    step_ms = statistics.median(e for e, _ in steps) * 1e3
    step_min_ms = min(e for e, _ in steps) * 1e3
    cpu_ms = statistics.median(p["cpu"] for _, p in steps) * 1e3
    breakdown = {}
    for phase in PHASES + ("execute",):
        breakdown[phase] = statistics.median(p.get(phase, 0.0) for _, p in steps) * 1e3
    breakdown["inputs+meta"] = breakdown.pop("execute") - breakdown["forward"] - breakdown["lm_head"]
    breakdown["rest"] = step_ms - sum(breakdown[p] for p in PHASES)
    weights = weight_bytes_per_step(engine.model)
    bandwidth = read_bandwidth_gbs()
    weight_ms = weights / (bandwidth * 1e9) * 1e3
    result = {
        "model": args.model if not args.config else f"{args.config} ({'tiny' if args.tiny else 'full'} widths)",
        "dtype": str(engine.dtype).removeprefix("torch."),
        "quantization": args.quantization,
        "decode_loop": getattr(engine.model, "_decode_loop", None) is not None,
        "num_layers": engine.runner.num_layers,
        "threads": torch.get_num_threads(),
        "step_ms": step_ms,
        "step_min_ms": step_min_ms,
        "step_cpu_ms": cpu_ms,
        "tok_per_s": 1e3 / step_ms,
        "breakdown_ms": breakdown,
        "weight_bytes": weights,
        "read_bandwidth_gbs": bandwidth,
        "weight_read_ms": weight_ms,
        "fixed_cost_ms": step_ms - weight_ms,
    }
    if args.profile:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            one_request(16, None)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30))
    engine.shutdown()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", help="a .gguf file or model dir (not with --config)")
    parser.add_argument("--config", help="a dir with a config.json: dummy weights of that shape")
    parser.add_argument("--tiny", action="store_true", help="with --config: 64-wide layers, same depth")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--input-len", type=int, default=64)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument(
        "--quantization", default="auto", help="e.g. int8 with --config: quantized linears (the C decode loop's kind)"
    )
    parser.add_argument("--threads", type=int, help="torch threads (1: CPU time = work, robust on a loaded machine)")
    args = parser.parse_args()
    if not args.model and not args.config:
        parser.error("give a model or --config")
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(args)
    b = result["breakdown_ms"]
    print(
        f"{result['model']} {result['dtype']} {result['quantization']}, {result['num_layers']} layers, "
        f"{result['threads']} threads, C decode loop {'on' if result['decode_loop'] else 'off'}: "
        f"step {result['step_ms']:.2f} ms median, {result['step_min_ms']:.2f} min, "
        f"{result['step_cpu_ms']:.2f} CPU ({result['tok_per_s']:.1f} tok/s); "
        f"weights {result['weight_bytes'] / 1e6:.0f} MB at "
        f"{result['read_bandwidth_gbs']:.1f} GB/s = {result['weight_read_ms']:.2f} ms; "
        f"step - weight read = {result['fixed_cost_ms']:.2f} ms"
    )
    print("  " + ", ".join(f"{k} {v:.2f}" for k, v in b.items()))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
