"""Input processing: what a request must be before it is queued (vLLM v1's processor).

Prompts are checked and tokenized, sampling parameters checked against the engine's limits;
everything here raises ValueError for bad input, before anything reaches the scheduler. Also
the model-derived settings the checks use: the tokenizer, the EOS ids, max_model_len.
"""

from __future__ import annotations

from typing import Any

from vllm_cli.config import EngineArgs
from vllm_cli.model_executor.model_source import ModelSource
from vllm_cli.sampling_params import SamplingParams
from vllm_cli.tokenizer import get_eos_token_ids, get_tokenizer

PromptInput = str | list[int] | dict
MAX_LOGPROBS = 20  # vLLM's default cap on logprobs / prompt_logprobs per position


def process_prompt(
    prompt: PromptInput | None, tokenizer: Any, vocab_size: int, max_model_len: int
) -> tuple[str | None, list[int]]:
    """Validate a prompt and tokenize it: (text or None, token ids). Raises ValueError."""
    if isinstance(prompt, dict):
        if "prompt_token_ids" in prompt:
            text, ids = prompt.get("prompt"), list(prompt["prompt_token_ids"])
        elif "prompt" in prompt:
            return process_prompt(prompt["prompt"], tokenizer, vocab_size, max_model_len)
        else:
            raise ValueError("a prompt dict needs 'prompt' or 'prompt_token_ids'")
    elif isinstance(prompt, str):
        if tokenizer is None:
            raise ValueError("text prompts need a tokenizer (the engine was started with skip_tokenizer_init)")
        text, ids = prompt, tokenizer.encode(prompt)
    elif isinstance(prompt, (list, tuple)):
        text, ids = None, list(prompt)
    else:
        raise ValueError(f"a prompt must be a string, a list of token ids or a dict, got {type(prompt).__name__}")
    if not ids:
        raise ValueError("the prompt is empty")
    if any(not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < vocab_size for t in ids):
        raise ValueError(f"prompt token ids must be integers in [0, {vocab_size})")
    if len(ids) >= max_model_len:
        raise ValueError(
            f"the prompt has {len(ids)} tokens, but this model's maximum context length is "
            f"{max_model_len} tokens (prompt plus at least one generated token)"
        )
    return text, ids


def validate_params(params: SamplingParams) -> None:
    """Engine-dependent limits SamplingParams cannot check alone. Raises ValueError."""
    for name in ("logprobs", "prompt_logprobs"):
        if (getattr(params, name) or 0) > MAX_LOGPROBS:
            raise ValueError(f"{name} must be at most {MAX_LOGPROBS}, got {getattr(params, name)}")


# ----- model-derived settings -----


def load_tokenizer(args: EngineArgs, source: ModelSource) -> Any:
    """--tokenizer, else the model's own; None under --skip-tokenizer-init."""
    if args.skip_tokenizer_init:
        return None
    if args.tokenizer:
        return get_tokenizer(args.tokenizer, trust_remote_code=args.trust_remote_code)
    return get_tokenizer(
        source.path, source.gguf_file, trust_remote_code=args.trust_remote_code, revision=args.revision
    )


def eos_token_ids(tokenizer: Any, hf_config: Any) -> set[int]:
    if tokenizer is not None:
        return set(get_eos_token_ids(tokenizer, hf_config))
    eos = getattr(hf_config, "eos_token_id", None)
    return set(eos if isinstance(eos, list) else [eos] if eos is not None else [])


def resolve_max_model_len(hf_config: Any, requested: int | None) -> int:
    """The model's context length, or the requested one (which may not exceed it)."""
    model_len = None
    for key in ("max_position_embeddings", "n_positions", "max_seq_len", "max_sequence_length", "seq_length"):
        value = getattr(hf_config, key, None)
        if isinstance(value, int) and value > 0:
            model_len = value
            break
    model_len = model_len or 2048
    if requested is None:
        return model_len
    if requested > model_len:
        raise ValueError(f"max_model_len ({requested}) is larger than the model's context length ({model_len})")
    return requested
