"""LLMEngine: requests in, outputs out, one step at a time.

step() = schedule -> model runner -> sampler -> append tokens, detokenize, check stops ->
RequestOutputs. Everything the front ends (serve, chat, bench, LLM) need goes through
add_request / abort_request / step / has_unfinished_requests.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from vllm_cli.config import EngineArgs
from vllm_cli.engine.block_manager import BlockManager
from vllm_cli.engine.scheduler import Scheduler
from vllm_cli.engine.sequence import Request, Sequence
from vllm_cli.logger import init_logger
from vllm_cli.outputs import CompletionOutput, Logprob, RequestOutput
from vllm_cli.sampling_params import SamplingParams

logger = init_logger(__name__)

PromptInput = str | list[int] | dict
MAX_LOGPROBS = 20  # vLLM's default cap on logprobs / prompt_logprobs per position


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
    tp_group = None  # the tensor-parallel workers, when tensor_parallel_size > 1

    def __init__(self, args: EngineArgs):
        from vllm_cli.model_executor.loader import resolve_device
        from vllm_cli.model_executor.model_source import load_hf_config, resolve_model_source

        self.args = args
        if args.seed is not None:
            torch.manual_seed(args.seed)
        self.source = resolve_model_source(args.model, args.revision)
        self.hf_config = load_hf_config(self.source, trust_remote_code=args.trust_remote_code)
        self.device = resolve_device(args.device)
        try:
            if args.tensor_parallel_size > 1:
                self._start_tensor_parallel()
            self._build(args)
        except BaseException:
            self.shutdown()  # a failed start leaves no tensor-parallel worker behind
            raise

    def _build(self, args: EngineArgs) -> None:
        """Tokenizer, model (this rank's shard), KV pool, scheduler and sampler."""
        from vllm_cli.engine.sampler import Sampler
        from vllm_cli.model_executor.loader import resolve_dtype
        from vllm_cli.worker.model_runner import create_model_runner

        self.dtype = resolve_dtype(args.dtype, self.hf_config, self.device)
        self.model_name = self.source.name
        self.served_model_names = list(args.served_model_name) or [self.model_name]

        self.tokenizer = None
        if not args.skip_tokenizer_init:
            from vllm_cli.tokenizer import get_tokenizer

            if args.tokenizer:
                self.tokenizer = get_tokenizer(args.tokenizer, trust_remote_code=args.trust_remote_code)
            else:
                self.tokenizer = get_tokenizer(self.source.path, self.source.gguf_file,
                                               trust_remote_code=args.trust_remote_code, revision=args.revision)
        self.eos_token_ids = self._eos_token_ids()

        self.vocab_size = int(self.hf_config.vocab_size)
        self.max_model_len = self._resolve_max_model_len()
        self.runner = create_model_runner(args, self.device, self.source, self.hf_config)
        self.model = self.runner.model  # this rank's shard under tensor parallelism
        self.runner.set_max_model_len(self.max_model_len)

        num_blocks = self._num_kv_blocks()
        self.runner.allocate_kv_cache(num_blocks)
        if self.tp_group is not None:
            self.tp_group.broadcast((num_blocks, self.max_model_len))  # the workers allocate the same pool
            self.runner.tp_group = self.tp_group
        self.block_manager = BlockManager(num_blocks, args.block_size, args.enable_prefix_caching)
        max_batched = args.max_num_batched_tokens or (2048 if args.enable_chunked_prefill else max(2048, self.max_model_len))
        if not args.enable_chunked_prefill and max_batched < self.max_model_len:
            raise ValueError(f"max_num_batched_tokens ({max_batched}) is smaller than max_model_len "
                             f"({self.max_model_len}) and chunked prefill is off: long prompts could never run; "
                             "raise --max-num-batched-tokens, lower --max-model-len or enable chunked prefill")
        self.scheduler = Scheduler(self.block_manager, args.max_num_seqs, max_batched, args.enable_chunked_prefill)
        self.sampler = Sampler(self.vocab_size, self.eos_token_ids)
        from vllm_cli.structured_output import StructuredOutputManager  # imports no backend yet

        self.structured_output = StructuredOutputManager(self.tokenizer, self.vocab_size,
                                                         args.structured_outputs_backend, self.eos_token_ids)
        self.requests: dict[str, Request] = {}
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self.kv_cache_tokens = self.block_manager.num_usable_blocks * args.block_size
        logger.info("KV cache: %d blocks of %d tokens = %d tokens (%.2f GiB%s, %s); max_model_len %d",
                    self.block_manager.num_usable_blocks, args.block_size, self.kv_cache_tokens,
                    num_blocks * self.runner.kv_cache_bytes_per_block() / 2**30,
                    f" on each of {args.tensor_parallel_size} ranks" if self.tp_group else "",
                    str(self.dtype).removeprefix("torch."), self.max_model_len)

    @classmethod
    def from_engine_args(cls, args: EngineArgs) -> "LLMEngine":
        return cls(args)

    def _start_tensor_parallel(self) -> None:
        """Spawn (or, under torchrun, join) the workers; this process is rank 0, the driver. A
        process that is not the driver (a workers-only node, a torchrun rank > 0) runs its
        workers here and exits when the driver is done."""
        from vllm_cli.distributed.executor import Placement, TensorParallelGroup, local_device, run_worker
        from vllm_cli.distributed.parallel_state import threads_per_rank

        placement = Placement.from_args(self.args)
        if placement.torchrun and placement.rank != 0:  # one of torchrun's processes: a worker
            run_worker(placement.rank, placement, self.args, threads_per_rank(placement.local_world_size))
            raise SystemExit(0)
        if placement.rank == 0:  # the driver's own GPU is current before NCCL starts
            self.device = local_device(self.device, 0, placement.local_rank_base)
        group = TensorParallelGroup(self.args, self.device, placement)
        if placement.rank is None:
            logger.info("Node %d of %d: running tensor-parallel ranks %s for the driver at %s:%d",
                        self.args.node_rank, self.args.nnodes, ", ".join(map(str, placement.spawn_ranks)),
                        placement.master_addr, placement.master_port)
            raise SystemExit(group.wait_for_workers())
        self.tp_group = group
        group.broadcast(self.args)

    def check_health(self) -> None:
        """Raises WorkerFailedError once a tensor-parallel worker has died."""
        if self.tp_group is not None:
            self.tp_group.check()

    def shutdown(self) -> None:
        """Stop the tensor-parallel workers (nothing to do for a single-process engine)."""
        if getattr(self, "structured_output", None) is not None:
            self.structured_output.shutdown()
        if self.tp_group is not None:
            self.tp_group.shutdown()

    # ----- set-up helpers -----
    def _eos_token_ids(self) -> set[int]:
        if self.tokenizer is not None:
            from vllm_cli.tokenizer import get_eos_token_ids

            return set(get_eos_token_ids(self.tokenizer, self.hf_config))
        eos = getattr(self.hf_config, "eos_token_id", None)
        return set(eos if isinstance(eos, list) else [eos] if eos is not None else [])

    def _resolve_max_model_len(self) -> int:
        model_len = None
        for key in ("max_position_embeddings", "n_positions", "max_seq_len", "max_sequence_length", "seq_length"):
            value = getattr(self.hf_config, key, None)
            if isinstance(value, int) and value > 0:
                model_len = value
                break
        model_len = model_len or 2048
        if self.args.max_model_len is None:
            return model_len
        if self.args.max_model_len > model_len:
            raise ValueError(f"max_model_len ({self.args.max_model_len}) is larger than the model's context "
                             f"length ({model_len})")
        return self.args.max_model_len

    def _num_kv_blocks(self) -> int:
        args = self.args
        per_block = self.runner.kv_cache_bytes_per_block()
        if args.num_kv_blocks is not None:
            num_blocks = args.num_kv_blocks
        elif self.device.type == "cuda":
            free, total = torch.cuda.mem_get_info(self.device)
            budget = free - total * (1.0 - args.gpu_memory_utilization) - 2**30  # 1 GiB for activations
            num_blocks = int(budget // per_block)
        else:
            # --kv-cache-memory is each rank's pool (as vLLM's CPU KV-cache space); the default
            # share of free RAM is split between the ranks on this machine.
            local_ranks = self.tp_group.placement.local_world_size if self.tp_group else 1
            budget = args.kv_cache_memory or _default_cpu_kv_budget() // local_ranks
            num_blocks = int(budget // per_block)
        min_blocks = -(-self.max_model_len // args.block_size) + 1  # + the null block
        if num_blocks < min_blocks:
            raise ValueError(
                f"the KV cache holds {max(num_blocks - 1, 0) * args.block_size} tokens, fewer than max_model_len "
                f"({self.max_model_len}): give it more memory (--kv-cache-memory / --gpu-memory-utilization) "
                f"or lower --max-model-len")
        return num_blocks

    # ----- requests -----
    def process_prompt(self, prompt: PromptInput) -> tuple[str | None, list[int]]:
        """Validate a prompt and tokenize it: (text or None, token ids). Raises ValueError."""
        if isinstance(prompt, dict):
            if "prompt_token_ids" in prompt:
                text, ids = prompt.get("prompt"), list(prompt["prompt_token_ids"])
            elif "prompt" in prompt:
                return self.process_prompt(prompt["prompt"])
            else:
                raise ValueError("a prompt dict needs 'prompt' or 'prompt_token_ids'")
        elif isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("text prompts need a tokenizer (the engine was started with skip_tokenizer_init)")
            text, ids = prompt, self.tokenizer.encode(prompt)
        elif isinstance(prompt, (list, tuple)):
            text, ids = None, list(prompt)
        else:
            raise ValueError(f"a prompt must be a string, a list of token ids or a dict, got {type(prompt).__name__}")
        if not ids:
            raise ValueError("the prompt is empty")
        if any(not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < self.vocab_size for t in ids):
            raise ValueError(f"prompt token ids must be integers in [0, {self.vocab_size})")
        if len(ids) >= self.max_model_len:
            raise ValueError(f"the prompt has {len(ids)} tokens, but this model's maximum context length is "
                             f"{self.max_model_len} tokens (prompt plus at least one generated token)")
        return text, ids

    def validate_params(self, params: SamplingParams) -> None:
        """Engine-dependent limits SamplingParams cannot check alone. Raises ValueError."""
        for name in ("logprobs", "prompt_logprobs"):
            if (getattr(params, name) or 0) > MAX_LOGPROBS:
                raise ValueError(f"{name} must be at most {MAX_LOGPROBS}, got {getattr(params, name)}")

    def add_request(self, request_id: str, prompt: PromptInput, params: SamplingParams | None = None,
                    prompt_token_ids: list[int] | None = None) -> Request:
        """Queue a request. Pass prompt_token_ids when the prompt was already processed."""
        if request_id in self.requests:
            raise ValueError(f"request id {request_id!r} is already in use")
        params = params or SamplingParams()
        self.validate_params(params)
        if prompt_token_ids is None:
            text, prompt_token_ids = self.process_prompt(prompt)
        else:
            text = prompt if isinstance(prompt, str) else None
        request = Request(request_id, text, prompt_token_ids, params)
        self.structured_output.add_request(request)  # grammar compiling in the background; ValueError if bad
        self.prompt_tokens_total += len(prompt_token_ids)  # as vLLM counts: cache hits included
        for seq in request.seqs:
            self._init_sequence(seq)
            self.scheduler.add(seq)
        self.requests[request_id] = request
        return request

    def _init_sequence(self, seq: Sequence) -> None:
        params = seq.request.params
        if params.seed is not None:
            from vllm_cli.engine.sampler import make_generator

            # As vLLM: choice i uses seed + i, so choice 0 matches an n=1 request.
            seq.generator = make_generator(params.seed + seq.index)
        if self.tokenizer is not None:
            from vllm_cli.engine.detokenizer import IncrementalDetokenizer

            seq.detokenizer = IncrementalDetokenizer(self.tokenizer, seq.request.prompt_token_ids, params)

    def _finish_request(self, request: Request, reason: str) -> None:
        for seq in request.seqs:
            if not seq.is_finished:
                seq.finish_reason = reason
                self.scheduler.finish(seq)

    def abort_request(self, request_ids: str | Iterable[str]) -> None:
        if isinstance(request_ids, str):
            request_ids = [request_ids]
        for request_id in request_ids:
            request = self.requests.pop(request_id, None)
            if request is None:
                continue
            request.aborted = True
            for seq in request.seqs:
                if not seq.is_finished:
                    seq.finish_reason = "abort"
                    self.scheduler.finish(seq)

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    def get_num_unfinished_requests(self) -> int:
        return len(self.requests)

    # ----- the step -----
    def step(self) -> list[RequestOutput]:
        self.check_health()  # a dead worker stops the engine before a step can hang on it
        touched: dict[str, Request] = {}
        for request, error in self.structured_output.take_failed():  # a queued request's grammar failed
            logger.error("request %s: %s", request.request_id, error)
            self._finish_request(request, "abort")
            touched[request.request_id] = request
        sched = self.scheduler.schedule()
        if not sched:
            return [out for out in map(self._make_output, touched.values()) if out is not None]
        step_logits = self.runner.execute(sched.scheduled)
        for seq, n in sched.scheduled:
            seq.num_computed_tokens += n
        for chunk in step_logits.prompt_chunks:
            self._add_prompt_logprobs(chunk)

        if step_logits.sample_seqs:
            from vllm_cli.engine.sampler import SamplingRow

            rows = [SamplingRow(seq.request.params, seq.request.prompt_token_ids, seq.output_token_ids, seq.generator)
                    for seq in step_logits.sample_seqs]
            # Structured outputs: forbidden tokens -> -inf before sampling (and logprobs).
            for i in self.structured_output.apply_bitmask(step_logits.sample_logits, step_logits.sample_seqs):
                rows[i].params = rows[i].params.clone(min_tokens=0)  # the grammar allows only its end
            results = self.sampler(step_logits.sample_logits, rows)
            now = time.monotonic()
            for seq, result in zip(step_logits.sample_seqs, results):
                self._append_token(seq, result)
                request = seq.request
                if request.first_token_time is None:
                    request.first_token_time = now
                touched[request.request_id] = request
        return [out for out in map(self._make_output, touched.values()) if out is not None]

    def _add_prompt_logprobs(self, chunk) -> None:
        from vllm_cli.engine.sampler import compute_prompt_logprobs

        seq = chunk.seq
        start = chunk.first_position + 1
        targets = seq.token_ids[start:start + chunk.logits.shape[0]]
        entries = compute_prompt_logprobs(chunk.logits, targets, seq.request.params.prompt_logprobs)
        self._decode_logprob_tokens(seq, entries)
        seq.request.prompt_logprobs.extend(entries)

    def _decode_logprob_tokens(self, seq: Sequence, entries) -> None:
        if seq.detokenizer is None:
            return
        for entry in entries:
            for token_id, logprob in entry.items():
                logprob.decoded_token = seq.detokenizer.decode_token(token_id)

    def _append_token(self, seq: Sequence, result) -> None:
        params = seq.request.params
        token = result.token_id
        seq.token_ids.append(token)
        self.generation_tokens_total += 1
        grammar_done = self.structured_output.accept_token(seq, token)  # the grammar is complete
        if seq.logprobs is not None:
            entry = result.top_logprobs or {token: Logprob(result.logprob)}
            self._decode_logprob_tokens(seq, [entry])
            seq.logprobs.append(entry)
            seq.cumulative_logprob += result.logprob
        finish, stop_reason = None, None
        num_out = seq.num_output_tokens
        may_stop = num_out >= params.min_tokens
        if may_stop and token in params.stop_token_ids:
            finish, stop_reason = "stop", token
        elif may_stop and not params.ignore_eos and token in self.eos_token_ids:
            finish = "stop"
        elif grammar_done and token in self.eos_token_ids:  # the grammar's end (ignore_eos, min_tokens)
            finish = "stop"
        detokenize = seq.detokenizer is not None and (finish is None or params.include_stop_str_in_output)
        if detokenize:
            matched = seq.detokenizer.add_token(token)
            if matched is not None and finish is None and may_stop:
                finish, stop_reason = "stop", matched
        if finish is None and grammar_done:  # complete after a text token (llguidance stops there)
            finish = "stop"
        if finish is None and ((params.max_tokens is not None and num_out >= params.max_tokens)
                               or seq.num_tokens >= self.max_model_len):
            finish = "length"
        if finish is not None:
            seq.finish_reason, seq.stop_reason = finish, stop_reason
            self.scheduler.finish(seq)

    def _make_output(self, request: Request) -> RequestOutput | None:
        kind = request.params.output_kind
        finished = request.is_finished
        if finished:
            self.requests.pop(request.request_id, None)
        if kind == "final_only" and not finished:
            return None
        outputs = []
        for seq in request.seqs:
            if kind == "delta":
                start_tok, start_lp = seq.emitted_tokens, seq.emitted_logprobs
                text = seq.detokenizer.get_delta(seq.is_finished) if seq.detokenizer else ""
            else:
                start_tok = start_lp = 0
                text = seq.detokenizer.output_text if seq.detokenizer else ""
            token_ids = seq.output_token_ids[start_tok:]
            logprobs = seq.logprobs[start_lp:] if seq.logprobs is not None else None
            seq.emitted_tokens = seq.num_output_tokens
            seq.emitted_logprobs = len(seq.logprobs) if seq.logprobs is not None else 0
            outputs.append(CompletionOutput(
                index=seq.index, text=text, token_ids=token_ids,
                cumulative_logprob=seq.cumulative_logprob if seq.logprobs is not None else None,
                logprobs=logprobs, finish_reason=seq.finish_reason, stop_reason=seq.stop_reason))
        return RequestOutput(
            request_id=request.request_id, prompt=request.prompt, prompt_token_ids=request.prompt_token_ids,
            outputs=outputs, finished=finished, prompt_logprobs=request.prompt_logprobs,
            num_cached_tokens=request.seqs[0].num_cached_tokens,
            metrics={"arrival_time": request.arrival_time, "first_token_time": request.first_token_time})

    def abort_all(self) -> list[str]:
        """Abort every request in flight; returns their ids."""
        ids = list(self.requests)
        self.abort_request(ids)
        return ids

    def stats(self) -> EngineStats:
        bm = self.block_manager
        running = {seq.request.request_id for seq in self.scheduler.running}
        return EngineStats(
            num_running=len(running), num_waiting=len(self.requests) - len(running),
            kv_cache_usage=bm.usage, num_kv_blocks=bm.num_blocks,
            prompt_tokens_total=self.prompt_tokens_total, generation_tokens_total=self.generation_tokens_total,
            num_preemptions=self.scheduler.num_preemptions,
            prefix_cache_queries=bm.prefix_queries, prefix_cache_hits=bm.prefix_hits)


def _default_cpu_kv_budget() -> int:
    """4 GiB (vLLM's CPU default), but never more than a third of the memory available now."""
    available = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if available is None:
        available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    return min(4 * 2**30, available // 3)
