"""The interface every structured-output backend implements (xgrammar, llguidance).

A backend compiles a StructuredOutputsParams once (the result is shared by every sequence
that asks for the same constraint) and makes a fresh matcher per sequence. Bitmasks are
xgrammar's layout for both: int32 [rows, ceil(vocab_size / 32)], bit j of word w set when
token 32 * w + j is allowed.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

import torch

from vllm_cli.sampling_params import StructuredOutputsParams


class GrammarMatcher(Protocol):
    """One sequence's position in its grammar."""

    def accept_token(self, token_id: int) -> bool:
        """Advance by one token; False when the grammar does not allow it (state unchanged)."""
        ...

    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        """Write the tokens allowed next into bitmask[row]."""
        ...

    def is_terminated(self) -> bool:
        """The grammar is complete and its stop token was accepted (nothing may follow)."""
        ...

    def rollback(self, num_tokens: int) -> None:
        """Undo the last num_tokens accepted tokens."""
        ...


class CompiledGrammar(Protocol):
    backend: str

    def new_matcher(self) -> GrammarMatcher: ...


class StructuredOutputBackend(Protocol):
    name: str

    def compile(self, params: StructuredOutputsParams) -> CompiledGrammar:
        """Raises ValueError naming what is wrong ("invalid JSON schema: ...")."""
        ...


def schema_text(params: StructuredOutputsParams) -> str:
    """The JSON schema of a json request as text (a dict is serialized); ValueError if it is not JSON."""
    spec: Any = params.json
    if isinstance(spec, dict):
        return json.dumps(spec)
    try:
        json.loads(spec)
    except ValueError as e:
        raise ValueError(f"invalid JSON schema: not valid JSON ({e})") from None
    return str(spec)


# What each kind's compile error is called in the ValueError's message.
ERROR_PREFIX = {
    "json": "invalid JSON schema",
    "json_object": "invalid JSON schema",
    "regex": "invalid regex",
    "choice": "invalid choice",
    "grammar": "invalid grammar",
}
