"""Output processing: sampled tokens -> RequestOutputs (vLLM v1's output processor).

Each new token is appended to its sequence, then checked against the stop conditions (stop
token ids, EOS, the detokenizer's stop strings, max_tokens, max_model_len); text comes from the
sequence's incremental detokenizer, logprob entries get their tokens decoded; a step's touched
requests become RequestOutputs in their output kind (cumulative, delta or final_only).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, cast

from vllm_cli.engine.core import StepOutput
from vllm_cli.engine.detokenizer import IncrementalDetokenizer
from vllm_cli.engine.sampler import SampleResult
from vllm_cli.engine.sequence import Request, Sequence
from vllm_cli.outputs import (
    CompletionOutput,
    Logprob,
    PoolingOutput,
    PoolingRequestOutput,
    PositionLogprobs,
    RequestOutput,
)
from vllm_cli.structured_output import StructuredOutputManager

EngineOutput = RequestOutput | PoolingRequestOutput


class OutputProcessor:
    def __init__(
        self,
        tokenizer: Any,
        eos_token_ids: set[int],
        max_model_len: int,
        finish_sequence: Callable[[Sequence], None],
        structured_output: StructuredOutputManager,
    ):
        self.tokenizer = tokenizer
        self.eos_token_ids = eos_token_ids
        self.max_model_len = max_model_len
        self.finish_sequence = finish_sequence  # the scheduler's: frees the blocks of a stopped sequence
        self.structured_output = structured_output
        self.generation_tokens_total = 0

    def init_sequence(self, seq: Sequence) -> None:
        if self.tokenizer is not None and seq.request.pooling_params is None:
            seq.detokenizer = IncrementalDetokenizer(self.tokenizer, seq.request.prompt_token_ids, seq.request.params)

    def process(self, step: StepOutput) -> list[EngineOutput]:
        """The step's tokens into their sequences; one output per request the step touched
        (none for a final_only request still running). A pooling request ends with its prefill:
        its KV blocks are freed at once."""
        for seq, entries in step.prompt_logprobs:
            self._decode_logprob_tokens(seq, entries)
            cast(list, seq.request.prompt_logprobs).extend(entries)  # a list: the request asked for them
        touched: dict[str, Request] = {}
        now = time.monotonic()
        for seq, result in zip(step.sample_seqs, step.results):
            self.append_token(seq, result)
            request = seq.request
            if request.first_token_time is None:
                request.first_token_time = now
            touched[request.request_id] = request
        for seq in step.pooled:
            seq.finish_reason = "stop"
            self.finish_sequence(seq)
            touched[seq.request.request_id] = seq.request
        return [out for out in map(make_output, touched.values()) if out is not None]

    def append_token(self, seq: Sequence, result: SampleResult) -> None:
        """Accept a sampled token and check whether the sequence stops here."""
        params = seq.request.params
        token = result.token_id
        seq.token_ids.append(token)
        grammar_done = self.structured_output.accept_token(seq, token)  # the grammar is complete
        self.generation_tokens_total += 1
        if seq.logprobs is not None:
            logprob = cast("float", result.logprob)  # set: the request asked for logprobs
            entry = result.top_logprobs or {token: Logprob(logprob)}
            self._decode_logprob_tokens(seq, [entry])
            seq.logprobs.append(entry)
            seq.cumulative_logprob += logprob
        finish, stop_reason = None, None
        num_out = seq.num_output_tokens
        may_stop = num_out >= params.min_tokens
        if may_stop and token in cast("list[int]", params.stop_token_ids):  # SamplingParams made it a list
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
        if finish is None and (
            (params.max_tokens is not None and num_out >= params.max_tokens) or seq.num_tokens >= self.max_model_len
        ):
            finish = "length"
        if finish is not None:
            seq.finish_reason, seq.stop_reason = finish, stop_reason
            self.finish_sequence(seq)

    @staticmethod
    def _decode_logprob_tokens(seq: Sequence, entries: list[PositionLogprobs]) -> None:
        if seq.detokenizer is None:
            return
        for entry in entries:
            for token_id, logprob in entry.items():
                logprob.decoded_token = seq.detokenizer.decode_token(token_id)


def make_output(request: Request) -> EngineOutput | None:
    """The request's output in its kind: everything so far (cumulative), what is new since the
    last one (delta), or only once finished (final_only). A pooling request: its embedding, once
    (an aborted one: an empty vector)."""
    if request.pooling_params is not None:
        data = request.seqs[0].embedding or []
        return PoolingRequestOutput(request.request_id, request.prompt_token_ids, PoolingOutput(data))
    kind = request.params.output_kind
    finished = request.is_finished
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
        outputs.append(
            CompletionOutput(
                index=seq.index,
                text=text,
                token_ids=token_ids,
                cumulative_logprob=seq.cumulative_logprob if seq.logprobs is not None else None,
                logprobs=logprobs,
                finish_reason=seq.finish_reason,
                stop_reason=seq.stop_reason,
            )
        )
    return RequestOutput(
        request_id=request.request_id,
        prompt=request.prompt,
        prompt_token_ids=request.prompt_token_ids,
        outputs=outputs,
        finished=finished,
        prompt_logprobs=request.prompt_logprobs,
        num_cached_tokens=request.seqs[0].num_cached_tokens,
        metrics={"arrival_time": request.arrival_time, "first_token_time": request.first_token_time},
    )
