"""Structured output on llguidance (vLLM's "guidance" backend)."""

from __future__ import annotations

import json
import threading
from typing import Any

import torch

from vllm_cli.sampling_params import StructuredOutputsParams
from vllm_cli.structured_output.backend import ERROR_PREFIX, schema_text


class GuidanceMatcher:
    def __init__(self, ll_tokenizer: Any, grammar: str) -> None:
        import llguidance

        self._m = llguidance.LLMatcher(ll_tokenizer, grammar, log_level=0)

    def accept_token(self, token_id: int) -> bool:
        if self._m.is_stopped():
            return False
        return bool(self._m.consume_token(token_id)) and not self._m.is_error()

    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        import llguidance.torch

        llguidance.torch.fill_next_token_bitmask(self._m, bitmask, row)

    def is_terminated(self) -> bool:
        return bool(self._m.is_stopped())

    def rollback(self, num_tokens: int) -> None:
        self._m.rollback(num_tokens)


class GuidanceGrammar:
    backend = "guidance"

    def __init__(self, ll_tokenizer: Any, grammar: str) -> None:
        self.ll_tokenizer = ll_tokenizer
        self.grammar = grammar

    def new_matcher(self) -> GuidanceMatcher:
        return GuidanceMatcher(self.ll_tokenizer, self.grammar)


class GuidanceBackend:
    name = "guidance"

    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: list[int]) -> None:
        self._tokenizer = tokenizer
        self._vocab_size = vocab_size
        self._stop_token_ids = stop_token_ids
        self._ll_tokenizer: Any = None
        self._lock = threading.Lock()

    def _get_tokenizer(self) -> Any:
        with self._lock:
            if self._ll_tokenizer is None:
                import llguidance.hf

                self._ll_tokenizer = llguidance.hf.from_tokenizer(
                    self._tokenizer, n_vocab=self._vocab_size, eos_token=self._stop_token_ids or None
                )
            return self._ll_tokenizer

    def compile(self, params: StructuredOutputsParams) -> GuidanceGrammar:
        import llguidance

        ll_tokenizer = self._get_tokenizer()
        kind = params.kind
        defaults: Any = {"whitespace_flexible": not params.disable_any_whitespace}  # a JsonCompileOptions
        try:
            if kind == "json":
                grammar = llguidance.LLMatcher.grammar_from_json_schema(schema_text(params), defaults=defaults)
            elif kind == "json_object":
                grammar = llguidance.LLMatcher.grammar_from_json_schema('{"type": "object"}', defaults=defaults)
            elif kind == "regex":
                grammar = llguidance.grammar_from("regex", params.regex or "")
            elif kind == "choice":
                grammar = llguidance.grammar_from("choice", json.dumps(params.choice))
            else:  # Lark, or GBNF as xgrammar takes it
                grammar = llguidance.grammar_from("grammar", params.grammar or "")
            error = llguidance.LLMatcher.validate_grammar(grammar, ll_tokenizer)
        except ValueError as e:
            if str(e).startswith(ERROR_PREFIX[kind]):
                raise
            error = str(e)
        except RuntimeError as e:
            error = str(e)
        if error:
            raise ValueError(f"{ERROR_PREFIX[kind]}: {error.strip()}")
        return GuidanceGrammar(ll_tokenizer, grammar)
