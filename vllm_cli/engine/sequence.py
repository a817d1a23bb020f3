"""Requests and their sequences: the engine's unit of scheduling.

A request with n > 1 holds n sequences; each is scheduled on its own and shares the
prompt's KV blocks with its siblings through the prefix cache.
"""

from __future__ import annotations

import enum
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

from vllm_cli.outputs import PositionLogprobs
from vllm_cli.pooling_params import PoolingParams
from vllm_cli.sampling_params import SamplingParams


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


_seq_ids = itertools.count()


class Sequence:
    def __init__(self, request: Request, index: int):
        self.seq_id = next(_seq_ids)
        self.request = request
        self.index = index  # choice index within the request
        self.token_ids: list[int] = list(request.prompt_token_ids)
        self.num_prompt_tokens = len(request.prompt_token_ids)
        self.num_computed_tokens = 0  # tokens whose K/V are in the cache
        self.block_table: list[int] = []
        self.block_hashes: list[bytes] = []  # chained hash of each full block of token_ids (block_manager)
        self.status = SequenceStatus.WAITING
        self.finish_reason: str | None = None
        self.stop_reason: int | str | None = None
        self.logprobs: list[PositionLogprobs] | None = [] if request.params.logprobs is not None else None
        self.cumulative_logprob = 0.0
        self.num_cached_tokens = 0  # prompt tokens served from the prefix cache at first admission
        self.detokenizer: Any = None
        self.generator: Any = None
        # Structured outputs: this sequence's grammar state (a SequenceGrammar; None: unconstrained),
        # advanced by each accepted token (OutputProcessor.append_token), masking the logits before
        # the sampler (EngineCore.step).
        self.structured_output: Any = None
        self.num_preemptions = 0
        # Pooling requests: the hidden states pooled so far (a running sum for mean pooling) and the
        # finished embedding.
        self.pooled_hidden: Any = None
        self.embedding: list[float] | None = None
        # What delta outputs have already carried (output_kind="delta").
        self.emitted_tokens = 0
        self.emitted_logprobs = 0

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def is_finished(self) -> bool:
        return self.status == SequenceStatus.FINISHED

    def __repr__(self) -> str:
        return (
            f"Sequence(id={self.seq_id}, request={self.request.request_id!r}, tokens={self.num_tokens}, "
            f"computed={self.num_computed_tokens}, status={self.status.value})"
        )


@dataclass
class Request:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    arrival_time: float = field(default_factory=time.monotonic)
    seqs: list[Sequence] = field(default_factory=list)
    prompt_logprobs: list[PositionLogprobs | None] | None = None
    first_token_time: float | None = None
    pooling_params: PoolingParams | None = None  # set: an embedding request (prefill only, no tokens sampled)

    def __post_init__(self) -> None:
        self.seqs = [Sequence(self, i) for i in range(self.params.n)]
        if self.params.prompt_logprobs is not None:
            self.prompt_logprobs = [None]  # the first prompt token has no logprob

    @property
    def is_finished(self) -> bool:
        return all(seq.is_finished for seq in self.seqs)
