"""Benchmark workloads: seeded random token-id prompts, JSONL prompt files, ShareGPT JSON, sonnet.

Random prompts are token ids, so no tokenizer is needed (a config-only model dir with
`--load-format dummy` works) and the input length is exact, on our engine and over HTTP.
The datasets that need token counts (ShareGPT reply lengths, sonnet, chat-formatted custom
prompts) take a `PromptTokenizer`: a local tokenizer or the server's /tokenize.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

DEFAULT_OUTPUT_LEN = 128

Encode = Callable[[str], list[int]]  # a tokenizer's encode: text -> token ids


class PromptTokenizer(Protocol):
    """What the datasets need of a tokenizer (vllm_cli.benchmarks.serving.ServerTokenizer or LocalTokenizer)."""

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, no special tokens added."""
        ...

    def chat_ids(self, text: str) -> list[int]:
        """Token ids of `text` as one user message through the chat template, generation prompt added."""
        ...


class LocalTokenizer:
    """A PromptTokenizer on a tokenizer loaded here (`--tokenizer`): dir, hub id or .gguf."""

    def __init__(self, path: str) -> None:
        from vllm_cli.tokenizer import get_tokenizer, resolve_chat_template

        self._tokenizer: Any = get_tokenizer(path)
        self._template = resolve_chat_template(self._tokenizer, None)[0]

    def encode(self, text: str) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=False))

    def chat_ids(self, text: str) -> list[int]:
        from vllm_cli.tokenizer import apply_chat_template

        return apply_chat_template(self._tokenizer, [{"role": "user", "content": text}], self._template)


# Chat messages must be text: random prompts for /v1/chat/completions are drawn from these
# words, which most tokenizers encode as about one token each (with their leading space).
_WORDS = (
    "the of and to in is you that it he was for on are as with his they at be this have from or one "
    "had by word but not what all were we when your can said there use an each which she do how their "
    "if will up other about out many then them these so some her would make like him into time has look "
    "two more write go see number no way could people my than first water been call who oil its now find "
    "long down day did get come made may part"
).split()


@dataclass
class BenchRequest:
    prompt: str | list[int]  # token ids (exact length) or text
    prompt_len: int | None  # None: text, whose length only the model's tokenizer knows
    output_len: int


def _lengths(rng: random.Random, length: int, range_ratio: float) -> Callable[[], int]:
    """vLLM's --random-range-ratio: lengths uniform in [floor(L * (1 - r)), ceil(L * (1 + r))], at least 1."""
    if not 0 <= range_ratio < 1:
        raise ValueError(f"the random range ratio must be in [0, 1), got {range_ratio}")
    if range_ratio == 0:
        return lambda: length
    low, high = max(1, math.floor(length * (1 - range_ratio))), math.ceil(length * (1 + range_ratio))
    return lambda: rng.randint(low, high)


def random_requests(
    num_prompts: int,
    input_len: int,
    output_len: int,
    vocab_size: int,
    seed: int = 0,
    prefix_len: int = 0,
    range_ratio: float = 0.0,
) -> list[BenchRequest]:
    """`num_prompts` prompts of `prefix_len` shared + `input_len` random token ids in [0, vocab_size)
    (each length drawn around `input_len` / `output_len` when `range_ratio` > 0)."""
    if input_len + prefix_len < 1 or output_len < 1:
        raise ValueError("input length and output length must be at least 1")
    rng = random.Random(seed)
    prefix = [rng.randrange(vocab_size) for _ in range(prefix_len)]
    in_len, out_len = _lengths(rng, input_len, range_ratio), _lengths(rng, output_len, range_ratio)
    requests = []
    for _ in range(num_prompts):
        n, out = in_len(), out_len()
        requests.append(BenchRequest(prefix + [rng.randrange(vocab_size) for _ in range(n)], prefix_len + n, out))
    return requests


def random_text_requests(
    num_prompts: int, input_len: int, output_len: int, seed: int = 0, prefix_len: int = 0, range_ratio: float = 0.0
) -> list[BenchRequest]:
    """As random_requests, in words (about one token each), for endpoints that only take text."""
    rng = random.Random(seed)
    prefix = [rng.choice(_WORDS) for _ in range(prefix_len)]
    in_len, out_len = _lengths(rng, input_len, range_ratio), _lengths(rng, output_len, range_ratio)
    requests = []
    for _ in range(num_prompts):
        n, out = in_len(), out_len()
        requests.append(BenchRequest(" ".join(prefix + [rng.choice(_WORDS) for _ in range(n)]), None, out))
    return requests


SONNET_BASE_PROMPT = "Pick as many lines as you can from these poem lines:\n"


def sonnet_requests(
    path: str,
    num_prompts: int,
    input_len: int,
    output_len: int,
    prefix_len: int,
    tokenizer: PromptTokenizer,
    chat_format: bool,
    seed: int = 0,
) -> list[BenchRequest]:
    """vLLM's sonnet dataset: "Pick as many lines as you can from these poem lines:" then the
    file's first lines (a prefix shared by every prompt, about `prefix_len` tokens) and random
    lines up to about `input_len` tokens, counted through the chat template. `chat_format`:
    the prompt is the templated token ids (for /v1/completions); else the text (chat endpoints
    apply the template themselves)."""
    with open(path, encoding="utf-8") as f:
        lines = [line for line in f.readlines() if line.strip()]
    if not lines:
        raise ValueError(f"{path}: no lines of text")
    avg_len = sum(len(tokenizer.encode(line)) for line in lines) / len(lines)
    base_len = len(tokenizer.chat_ids(SONNET_BASE_PROMPT))
    if input_len <= base_len:
        raise ValueError(f"the sonnet input length must be above the base prompt's {base_len} tokens")
    num_input_lines = round((input_len - base_len) / avg_len)
    num_prefix_lines = max(round((prefix_len - base_len) / avg_len), 0)
    prefix = lines[:num_prefix_lines]
    rng = random.Random(seed)
    requests: list[BenchRequest] = []
    for _ in range(num_prompts * 20):  # as vLLM, draws that run over input_len are redrawn; not forever
        if len(requests) == num_prompts:
            return requests
        text = SONNET_BASE_PROMPT + "".join(prefix + rng.choices(lines, k=max(num_input_lines - num_prefix_lines, 0)))
        ids = tokenizer.chat_ids(text)
        if len(ids) <= input_len:
            requests.append(BenchRequest(ids if chat_format else text, len(ids), output_len))
    raise ValueError(f"{path}: too few sonnet prompts fit {input_len} tokens; raise the sonnet input length")


def load_dataset(
    path: str,
    num_prompts: int,
    output_len: int | None = None,
    encode: Encode | None = None,
    default_output_len: int = DEFAULT_OUTPUT_LEN,
) -> list[BenchRequest]:
    """The first `num_prompts` usable prompts of a file, in file order.

    JSONL: one prompt a line, a JSON string or an object with `prompt` (text or token ids) or
    `prompt_token_ids`, and optionally `output_tokens` (vLLM's custom dataset) / `output_len` / `max_tokens`.
    ShareGPT JSON: a list of {"conversations": [{"from": "human", "value": ...}, {"from": "gpt", ...}]};
    the first turn is the prompt, the reply's token count (with `encode`) the output length.
    `output_len`, when given, overrides the file's lengths; with neither, `default_output_len` tokens.
    """
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        data = json.loads(text)
        records = data if isinstance(data, list) else [data]
    except json.JSONDecodeError:
        try:
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: neither a JSON document nor JSONL ({e})") from None
    requests: list[BenchRequest] = []
    for i, record in enumerate(records):
        if len(requests) >= num_prompts:
            break
        request = _parse_record(record, output_len, encode, default_output_len)
        if request is None:
            continue
        if not request.prompt:
            raise ValueError(f"{path}: record {i + 1} has an empty prompt")
        requests.append(request)
    if not requests:
        raise ValueError(f"{path}: no usable prompts (expected JSONL prompts or ShareGPT conversations)")
    return requests


def is_sharegpt(path: str) -> bool:
    """Whether a dataset file is ShareGPT JSON (a list of {"conversations": ...}) rather than JSONL."""
    with open(path, encoding="utf-8") as f:
        head = f.read(4096).lstrip()
    return head.startswith("[") and '"conversations"' in head


def _parse_record(
    record: object, output_len: int | None, encode: Encode | None, default_output_len: int
) -> BenchRequest | None:
    if isinstance(record, str):
        return _text(record, output_len or default_output_len, encode)
    if not isinstance(record, dict):
        raise ValueError(f"a prompt record must be a string or an object, got {type(record).__name__}")
    if "conversations" in record:  # ShareGPT: keep the first exchange, skip one-sided ones
        turns = record["conversations"]
        if len(turns) < 2:
            return None
        prompt, reply = turns[0]["value"], turns[1]["value"]
        if output_len is None and encode is not None:
            reply_len = len(encode(reply))
            if reply_len < 4:  # as vLLM: replies this short say nothing about decode speed
                return None
            return _text(prompt, reply_len, encode)
        return _text(prompt, output_len or default_output_len, encode)
    out = (
        output_len
        or record.get("output_tokens")
        or record.get("output_len")
        or record.get("max_tokens")
        or default_output_len
    )
    prompt = record.get("prompt_token_ids", record.get("prompt"))
    if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
        return BenchRequest(prompt, len(prompt), int(out))
    if isinstance(prompt, str):
        return _text(prompt, int(out), encode)
    raise ValueError("a prompt record needs 'prompt' (text or token ids) or 'prompt_token_ids'")


def _text(prompt: str, output_len: int, encode: Encode | None) -> BenchRequest:
    return BenchRequest(prompt, len(encode(prompt)) if encode else None, output_len)
