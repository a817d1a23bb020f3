"""Structured output on xgrammar (vLLM's default backend)."""

from __future__ import annotations

import json
import re
import threading
from typing import Any

import torch

from vllm_cli.sampling_params import StructuredOutputsParams
from vllm_cli.structured_output.backend import ERROR_PREFIX, schema_text

# xgrammar's C++ errors start "[10:17:51] /project/cpp/json_schema_converter.cc:5082: ".
_CPP_PREFIX = re.compile(r"^\[[^\]]*\]\s+\S+:\d+:\s*(Check failed: \(.*?\) is false:\s*)?")


def clean_error(e: BaseException) -> str:
    return _CPP_PREFIX.sub("", str(e).strip()).strip()


def choice_grammar(choices: list[str]) -> str:
    """EBNF (GBNF) of the literal alternatives: root ::= "a" | "b"."""
    return "root ::= " + " | ".join(json.dumps(c, ensure_ascii=False) for c in choices)


class XgrammarMatcher:
    def __init__(self, compiled: Any) -> None:
        import xgrammar as xgr

        self._m = xgr.GrammarMatcher(compiled)

    def accept_token(self, token_id: int) -> bool:
        return bool(self._m.accept_token(token_id))

    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        self._m.fill_next_token_bitmask(bitmask, row)

    def is_terminated(self) -> bool:
        return bool(self._m.is_terminated())

    def rollback(self, num_tokens: int) -> None:
        self._m.rollback(num_tokens)


class XgrammarGrammar:
    backend = "xgrammar"

    def __init__(self, compiled: Any) -> None:
        self.compiled = compiled

    def new_matcher(self) -> XgrammarMatcher:
        return XgrammarMatcher(self.compiled)


class XgrammarBackend:
    name = "xgrammar"

    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: list[int]) -> None:
        self._tokenizer = tokenizer
        self._vocab_size = vocab_size
        self._stop_token_ids = stop_token_ids
        self._compiler: Any = None
        self._lock = threading.Lock()

    def _get_compiler(self) -> Any:
        with self._lock:  # the tokenizer info is built once, by the first request that needs it
            if self._compiler is None:
                import xgrammar as xgr

                info = xgr.TokenizerInfo.from_huggingface(
                    self._tokenizer, vocab_size=self._vocab_size, stop_token_ids=self._stop_token_ids or None
                )
                # Our own LRU caches the compiled grammars; xgrammar's would keep a second copy.
                self._compiler = xgr.GrammarCompiler(info, max_threads=2, cache_enabled=False)
            return self._compiler

    def compile(self, params: StructuredOutputsParams) -> XgrammarGrammar:
        compiler = self._get_compiler()
        kind = params.kind
        any_ws = not params.disable_any_whitespace
        try:
            if kind == "json":
                compiled = compiler.compile_json_schema(schema_text(params), any_whitespace=any_ws)
            elif kind == "json_object":
                compiled = compiler.compile_json_schema('{"type": "object"}', any_whitespace=any_ws, strict_mode=False)
            elif kind == "regex":
                compiled = compiler.compile_regex(params.regex)
            elif kind == "choice":
                compiled = compiler.compile_grammar(choice_grammar(params.choice or []))
            else:
                compiled = compiler.compile_grammar(params.grammar)
        except ValueError as e:
            if str(e).startswith(ERROR_PREFIX[kind]):
                raise
            raise ValueError(f"{ERROR_PREFIX[kind]}: {clean_error(e)}") from None
        except RuntimeError as e:  # xgrammar reports parse errors as RuntimeError
            raise ValueError(f"{ERROR_PREFIX[kind]}: {clean_error(e)}") from None
        return XgrammarGrammar(compiled)
