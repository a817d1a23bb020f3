"""LLMEngine: requests in, outputs out, one step at a time.

What the front ends (serve, chat, bench, LLM) use: add_request / abort_request / step /
has_unfinished_requests, process_prompt / validate_params, stats. The work is split as in
vLLM v1: input processing (processor.py), the step's schedule -> forward -> sample
(core.py, on a worker/worker.py Worker), tokens -> stop checks, text, RequestOutputs
(output_processor.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from vllm_cli.config import EngineArgs
from vllm_cli.engine import processor
from vllm_cli.engine.core import EngineCore
from vllm_cli.engine.output_processor import EngineOutput, OutputProcessor, make_output
from vllm_cli.engine.processor import PromptInput
from vllm_cli.engine.sequence import Request
from vllm_cli.logger import init_logger
from vllm_cli.model_executor.layers.pooler import PoolingConfig, load_pooling_config, sentence_transformers_pooling_dir
from vllm_cli.model_executor.loader import resolve_device
from vllm_cli.model_executor.model_source import load_hf_config, resolve_model_source
from vllm_cli.model_executor.models import is_base_model
from vllm_cli.pooling_params import PoolingParams
from vllm_cli.sampling_params import SamplingParams
from vllm_cli.structured_output import StructuredOutputManager
from vllm_cli.worker.worker import Worker, start_tensor_parallel

if TYPE_CHECKING:
    from vllm_cli.distributed.executor import TensorParallelGroup

__all__ = ["EngineStats", "LLMEngine", "PromptInput"]

logger = init_logger(__name__)


@dataclass
class EngineStats:
    num_running: int  # requests with a sequence in the running set (vLLM counts requests)
    num_waiting: int
    kv_cache_usage: float
    num_kv_blocks: int
    prompt_tokens_total: int
    generation_tokens_total: int
    num_preemptions: int
    prefix_cache_queries: int
    prefix_cache_hits: int


class LLMEngine:
    tp_group: TensorParallelGroup | None = None  # the tensor-parallel workers, when tensor_parallel_size > 1

    def __init__(self, args: EngineArgs):
        self.args = args
        if args.seed is not None:
            torch.manual_seed(args.seed)
        self.source = resolve_model_source(args.model, args.revision)
        self.hf_config = load_hf_config(self.source, trust_remote_code=args.trust_remote_code)
        self.device = resolve_device(args.device)
        base_model = is_base_model(self.hf_config)
        model_dir = self.source.path if not self.source.gguf_file else None
        self.runner_kind = resolve_runner(args.runner, model_dir, base_model)
        if base_model and self.runner_kind != "pooling":
            raise ValueError(
                f"{', '.join(self.hf_config.architectures or [])} is a base model without an LM head: it can serve "
                "embeddings (--runner pooling), not generate text"
            )
        self.pooling: PoolingConfig | None = None
        if self.runner_kind == "pooling":
            self.pooling = load_pooling_config(Path(self.source.path), self.hf_config)
            # Mean and CLS pooling need the hidden state of every (or the first) prompt token: a cached
            # prefix would skip them. Embedding requests share prefixes rarely anyway.
            args = self.args = replace(args, runner="pooling", enable_prefix_caching=False)
            logger.info(
                "Runner: pooling (%s pooling%s; %s)",
                self.pooling.pooling_type.lower(),
                ", normalized" if self.pooling.normalize else "",
                self.pooling.source,
            )
        try:
            if args.tensor_parallel_size > 1:
                self.tp_group, self.device = start_tensor_parallel(args, self.device)
            self._build(args)
        except BaseException:
            self.shutdown()  # a failed start leaves no tensor-parallel worker behind
            raise

    def _build(self, args: EngineArgs) -> None:
        """Tokenizer, worker (model and KV pool), engine core and output processor."""
        self.model_name = self.source.name
        self.served_model_names = list(args.served_model_name) or [self.model_name]
        self.tokenizer = processor.load_tokenizer(args, self.source)
        self.eos_token_ids = processor.eos_token_ids(self.tokenizer, self.hf_config)
        self.vocab_size = int(self.hf_config.vocab_size)
        self.max_model_len = processor.resolve_max_model_len(self.hf_config, args.max_model_len)

        self.worker = Worker(args, self.device, self.source, self.hf_config, self.tp_group)
        self.dtype = self.worker.dtype
        self.runner = self.worker.runner
        self.model = self.worker.model  # this rank's shard under tensor parallelism
        num_blocks = self.worker.determine_num_kv_blocks(self.max_model_len)
        self.worker.init_kv_cache(num_blocks, self.max_model_len)

        # Imports no grammar backend until a request needs one.
        self.structured_output = StructuredOutputManager(
            self.tokenizer, self.vocab_size, args.structured_outputs_backend, self.eos_token_ids
        )
        self.core = EngineCore(
            args,
            self.worker,
            num_blocks,
            self.max_model_len,
            self.vocab_size,
            self.eos_token_ids,
            self.structured_output,
            self.pooling,
        )
        self.scheduler, self.block_manager = self.core.scheduler, self.core.block_manager
        self.output_processor = OutputProcessor(
            self.tokenizer, self.eos_token_ids, self.max_model_len, self.scheduler.finish, self.structured_output
        )
        self.requests: dict[str, Request] = {}
        self.prompt_tokens_total = 0
        self.kv_cache_tokens = self.block_manager.num_usable_blocks * args.block_size
        logger.info(
            "KV cache: %d blocks of %d tokens = %d tokens (%.2f GiB%s, %s); max_model_len %d",
            self.block_manager.num_usable_blocks,
            args.block_size,
            self.kv_cache_tokens,
            num_blocks * self.runner.kv_cache_bytes_per_block() / 2**30,
            f" on each of {args.tensor_parallel_size} ranks" if self.tp_group else "",
            str(self.dtype).removeprefix("torch."),
            self.max_model_len,
        )

    @classmethod
    def from_engine_args(cls, args: EngineArgs) -> LLMEngine:
        return cls(args)

    def warm_up(self, prompt_len: int = 8, max_tokens: int = 2) -> float:
        """Run one short request through the whole step (prefill, decode, sampler) and return its
        seconds: what a process does only once (oneDNN's kernels for the step's shapes, the C
        kernels' build, the sampler's first call) then happens before the first real request
        rather than inside it. The request leaves no trace in the stats or the prefix cache."""
        start = time.perf_counter()
        prompt_len = max(1, min(prompt_len, self.max_model_len - max_tokens))
        ids = [i % self.vocab_size for i in range(1, prompt_len + 1)]
        bm, sched, outs = self.block_manager, self.scheduler, self.output_processor
        counters = (self.prompt_tokens_total, outs.generation_tokens_total, sched.num_preemptions)
        prefix_caching, bm.enable_prefix_caching = bm.enable_prefix_caching, False  # nothing cached from it
        request_id = "vllm-cli-warm-up"
        try:
            if self.runner_kind == "pooling":  # a pooling engine embeds (a prefill, then the pooler), no sampling
                self.add_request(request_id, None, prompt_token_ids=ids, pooling_params=PoolingParams())
            else:
                params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
                self.add_request(request_id, None, params, prompt_token_ids=ids)
            while request_id in self.requests:
                self.step()
        finally:
            bm.enable_prefix_caching = prefix_caching
        self.prompt_tokens_total, outs.generation_tokens_total, sched.num_preemptions = counters
        seconds = time.perf_counter() - start
        work = "embedded" if self.runner_kind == "pooling" else f"and {max_tokens} output tokens"
        logger.info("Warmed up: one %d-token prompt %s through the engine in %.1f s", prompt_len, work, seconds)
        return seconds

    def check_health(self) -> None:
        """Raises WorkerFailedError once a tensor-parallel worker has died."""
        if self.tp_group is not None:
            self.tp_group.check()

    def shutdown(self) -> None:
        """Stop the grammar compiler's threads and the tensor-parallel workers."""
        if getattr(self, "structured_output", None) is not None:  # None when the start failed before it
            self.structured_output.shutdown()
        if self.tp_group is not None:
            self.tp_group.shutdown()

    # ----- requests -----
    def process_prompt(self, prompt: PromptInput | None) -> tuple[str | None, list[int]]:
        """Validate a prompt and tokenize it: (text or None, token ids). Raises ValueError."""
        return processor.process_prompt(prompt, self.tokenizer, self.vocab_size, self.max_model_len)

    def validate_params(self, params: SamplingParams) -> None:
        """Engine-dependent limits SamplingParams cannot check alone. Raises ValueError."""
        processor.validate_params(params)

    def validate_pooling_params(self, params: PoolingParams) -> None:
        """What the model's pooling allows (matryoshka dimensions). Raises ValueError."""
        if self.pooling is None:
            raise ValueError("embeddings need an engine started with --runner pooling")
        if params.dimensions is not None:
            self.pooling.check_dimensions(params.dimensions)

    def add_request(
        self,
        request_id: str,
        prompt: PromptInput | None,
        params: SamplingParams | None = None,
        prompt_token_ids: list[int] | None = None,
        pooling_params: PoolingParams | None = None,
    ) -> Request:
        """Queue a request. Pass prompt_token_ids when the prompt was already processed. With
        pooling_params it is an embedding request (prefill only; its output a PoolingRequestOutput)."""
        if request_id in self.requests:
            raise ValueError(f"request id {request_id!r} is already in use")
        if pooling_params is not None:
            self.validate_pooling_params(pooling_params)
            params = SamplingParams(max_tokens=1, output_kind="final_only")  # nothing is sampled
        elif self.pooling is not None:
            raise ValueError("this engine was started with --runner pooling: it serves embeddings, not generation")
        params = params or SamplingParams()
        self.validate_params(params)
        if prompt_token_ids is None:
            text, prompt_token_ids = self.process_prompt(prompt)
        else:
            text = prompt if isinstance(prompt, str) else None
        request = Request(request_id, text, prompt_token_ids, params, pooling_params=pooling_params)
        self.structured_output.add_request(request)  # grammar compiling in the background; ValueError if bad
        self.prompt_tokens_total += len(prompt_token_ids)  # as vLLM counts: cache hits included
        for seq in request.seqs:
            self.output_processor.init_sequence(seq)
            self.core.add_sequence(seq)
        self.requests[request_id] = request
        return request

    def abort_request(self, request_ids: str | Iterable[str]) -> None:
        if isinstance(request_ids, str):
            request_ids = [request_ids]
        for request_id in request_ids:
            request = self.requests.pop(request_id, None)
            if request is None:
                continue
            self._finish_request(request, "abort")

    def _finish_request(self, request: Request, reason: str) -> None:
        for seq in request.seqs:
            if not seq.is_finished:
                seq.finish_reason = reason
                self.scheduler.finish(seq)

    def abort_all(self) -> list[str]:
        """Abort every request in flight; returns their ids."""
        ids = list(self.requests)
        self.abort_request(ids)
        return ids

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    def get_num_unfinished_requests(self) -> int:
        return len(self.requests)

    # ----- the step -----
    def step(self) -> list[EngineOutput]:
        """Schedule, run and sample one step; the outputs of the requests it advanced."""
        self.check_health()  # a dead worker stops the engine before a step can hang on it
        failed = []
        for request, error in self.structured_output.take_failed():  # a queued request's grammar failed
            logger.error("request %s: %s", request.request_id, error)
            self._finish_request(request, "abort")
            failed.append(request)
        step = self.core.step()
        outputs = [out for out in map(make_output, failed) if out is not None]
        if step is not None:
            outputs += self.output_processor.process(step)
        for out in outputs:
            if out.finished:
                self.requests.pop(out.request_id, None)
        return outputs

    def stats(self) -> EngineStats:
        bm = self.block_manager
        running = {seq.request.request_id for seq in self.scheduler.running}
        return EngineStats(
            num_running=len(running),
            num_waiting=len(self.requests) - len(running),
            kv_cache_usage=bm.usage,
            num_kv_blocks=bm.num_blocks,
            prompt_tokens_total=self.prompt_tokens_total,
            generation_tokens_total=self.output_processor.generation_tokens_total,
            num_preemptions=self.scheduler.num_preemptions,
            prefix_cache_queries=bm.prefix_queries,
            prefix_cache_hits=bm.prefix_hits,
        )


def resolve_runner(runner: str, model_dir: str | None, base_model: bool = False) -> str:
    """--runner auto: pooling for a sentence-transformers directory (a Pooling module) or a base-model
    checkpoint (no LM head), else generate."""
    if runner != "auto":
        return runner
    if base_model or (model_dir is not None and sentence_transformers_pooling_dir(Path(model_dir)) is not None):
        return "pooling"
    return "generate"
