"""Offline benchmarks on the in-process engine: throughput (every request submitted at once),
latency (one batch end to end), and transformers' `generate` on the same prompts as a baseline.

Greedy decoding with ignore_eos everywhere, so every request produces exactly its output
length and the token counts (and the work) are identical across engines.
"""

from __future__ import annotations

import gc
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import transformers

from vllm_cli.benchmarks.datasets import BenchRequest, random_requests
from vllm_cli.benchmarks.report import percentiles
from vllm_cli.config import EngineArgs
from vllm_cli.engine.llm_engine import LLMEngine
from vllm_cli.model_executor.model_source import resolve_model_source
from vllm_cli.outputs import RequestOutput
from vllm_cli.sampling_params import SamplingParams

Prepared = list[tuple[list[int], int]]  # (prompt token ids, output length) per request


@dataclass
class Timed:
    elapsed: float
    num_requests: int
    input_tokens: int
    output_tokens: int

    def rates(self) -> dict:
        """vLLM's throughput fields, plus output tokens/s (the figure decode speed shows in)."""
        total = self.input_tokens + self.output_tokens
        return {
            "elapsed_time": self.elapsed,
            "num_requests": self.num_requests,
            "total_num_tokens": total,
            "total_input_tokens": self.input_tokens,
            "total_output_tokens": self.output_tokens,
            "requests_per_second": self.num_requests / self.elapsed,
            "tokens_per_second": total / self.elapsed,
            "output_throughput": self.output_tokens / self.elapsed,
        }


class EngineBench:
    """An LLMEngine driven directly: add every request, then step until all have finished."""

    def __init__(self, engine_args: EngineArgs) -> None:
        self._engine: LLMEngine | None = LLMEngine.from_engine_args(engine_args)
        self._ids = itertools.count()

    @property
    def engine(self) -> LLMEngine:
        if self._engine is None:
            raise RuntimeError("the benchmark's engine was closed")
        return self._engine

    def prepare(self, requests: list[BenchRequest]) -> Prepared:
        """Tokenize and validate before the clock starts; a request that cannot fit is an error."""
        engine, out = self.engine, []
        for r in requests:
            ids = engine.process_prompt(r.prompt)[1]
            if len(ids) + r.output_len > engine.max_model_len:
                raise ValueError(
                    f"a prompt of {len(ids)} tokens plus {r.output_len} output tokens does not fit "
                    f"max_model_len ({engine.max_model_len})"
                )
            out.append((ids, r.output_len))
        return out

    def run(self, prepared: Prepared, advance: Callable[[], None] | None = None) -> Timed:
        engine = self.engine
        params = {
            n: SamplingParams(temperature=0.0, ignore_eos=True, max_tokens=n, output_kind="final_only")
            for n in {n for _, n in prepared}
        }
        request_ids: list[str] = []
        output_tokens = 0
        start = time.perf_counter()
        try:
            for ids, n in prepared:
                request_ids.append(f"bench-{next(self._ids)}")
                engine.add_request(request_ids[-1], ids, params[n], prompt_token_ids=ids)
            while engine.has_unfinished_requests():
                for out in engine.step():
                    if out.finished and isinstance(out, RequestOutput):  # the benchmark generates only
                        output_tokens += len(out.outputs[0].token_ids)
                        if advance is not None:
                            advance()
        except BaseException:
            engine.abort_request(request_ids)  # Ctrl-C: leave no request behind
            raise
        elapsed = time.perf_counter() - start
        return Timed(elapsed, len(prepared), sum(len(ids) for ids, _ in prepared), output_tokens)

    def warm_up(self, seed: int) -> None:
        """A few short requests first: one-time costs (allocator, kernels' first calls) stay out of the timing.
        Their prompts come from another seed, so they warm no prefix cache for the measured ones."""
        length = max(1, min(16, self.engine.max_model_len - 5))
        self.run(self.prepare(random_requests(2, length, 4, self.engine.vocab_size, seed=seed + 10_000)))

    def close(self) -> None:
        """Drop the engine (weights and KV cache; tensor-parallel workers, which also restores
        this process's CPU threads) before a baseline loads its own model."""
        if self._engine is not None:
            self._engine.shutdown()
        self._engine = None
        gc.collect()


def run_throughput(
    bench: EngineBench, requests: list[BenchRequest], seed: int, advance: Callable[[], None] | None = None
) -> tuple[dict, Prepared]:
    prepared = bench.prepare(requests)
    bench.warm_up(seed)
    before = bench.engine.stats()
    timed = bench.run(prepared, advance)
    after = bench.engine.stats()
    queries = after.prefix_cache_queries - before.prefix_cache_queries
    hits = after.prefix_cache_hits - before.prefix_cache_hits
    result = timed.rates()
    result.update(
        prefix_cache_hit_rate=hits / queries if queries else 0.0,
        num_preemptions=after.num_preemptions - before.num_preemptions,
    )
    return result, prepared


def run_latency(
    bench: EngineBench,
    batch_size: int,
    input_len: int,
    output_len: int,
    num_iters_warmup: int,
    num_iters: int,
    seed: int,
    advance: Callable[[], None] | None = None,
) -> dict:
    """vLLM's latency fields: avg_latency, latencies, percentiles. Each iteration gets fresh prompts:
    repeating the same ones would let the prefix cache skip the prefill from the second on."""
    vocab = bench.engine.vocab_size
    latencies = []
    for i in range(num_iters_warmup + num_iters):
        prepared = bench.prepare(random_requests(batch_size, input_len, output_len, vocab, seed=seed + i))
        timed = bench.run(prepared)
        if i >= num_iters_warmup:
            latencies.append(timed.elapsed)
        if advance is not None:
            advance()
    return {
        "avg_latency": sum(latencies) / len(latencies),
        "latencies": latencies,
        "percentiles": percentiles(latencies),
    }


def run_transformers(
    engine_args: EngineArgs,
    hf_config: transformers.PretrainedConfig,
    dtype: torch.dtype,
    device: torch.device,
    prepared: Prepared,
    batch_size: int,
    advance: Callable[[int], None] | None = None,
) -> dict:
    """transformers' generate on the same prompts in static batches (left-padded when lengths differ),
    each batch running to its longest output; counts the requested output tokens, the same work."""
    transformers.logging.set_verbosity_error()  # generation-config chatter is not a result
    transformers.logging.disable_progress_bar()
    if engine_args.load_format == "dummy":
        model = transformers.AutoModelForCausalLM.from_config(hf_config, dtype=dtype)
    else:
        source = resolve_model_source(engine_args.model, engine_args.revision)
        kwargs = {"gguf_file": source.gguf_file} if source.gguf_file else {}
        model = transformers.AutoModelForCausalLM.from_pretrained(
            source.path,
            dtype=dtype,
            revision=engine_args.revision,
            trust_remote_code=engine_args.trust_remote_code,
            **kwargs,
        )
    model = model.to(device).eval()
    pad = 0

    def generate(batch: Prepared) -> None:
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids, _ in batch], device=device)
        mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids, _ in batch], device=device)
        n = max(n for _, n in batch)
        model.generate(
            input_ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=pad
        )

    with torch.inference_mode():
        generate([(prepared[0][0][:8], 2)])  # warm-up
        start = time.perf_counter()
        for i in range(0, len(prepared), batch_size):
            generate(prepared[i : i + batch_size])
            if advance is not None:
                advance(len(prepared[i : i + batch_size]))
        elapsed = time.perf_counter() - start
    timed = Timed(elapsed, len(prepared), sum(len(ids) for ids, _ in prepared), sum(n for _, n in prepared))
    return {"name": "transformers", "batch_size": batch_size, **timed.rates()}
