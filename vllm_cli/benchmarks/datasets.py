"""Benchmark workloads: seeded random token-id prompts, JSONL prompt files, ShareGPT JSON.

Random prompts are token ids, so no tokenizer is needed (a config-only model dir with
`--load-format dummy` works) and the input length is exact, on our engine and over HTTP.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_OUTPUT_LEN = 128

Encode = Callable[[str], list[int]]  # a tokenizer's encode: text -> token ids

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


def random_requests(
    num_prompts: int, input_len: int, output_len: int, vocab_size: int, seed: int = 0, prefix_len: int = 0
) -> list[BenchRequest]:
    """`num_prompts` prompts of `prefix_len` shared + `input_len` random token ids in [0, vocab_size)."""
    if input_len + prefix_len < 1 or output_len < 1:
        raise ValueError("input length and output length must be at least 1")
    rng = random.Random(seed)
    prefix = [rng.randrange(vocab_size) for _ in range(prefix_len)]
    return [
        BenchRequest(prefix + [rng.randrange(vocab_size) for _ in range(input_len)], prefix_len + input_len, output_len)
        for _ in range(num_prompts)
    ]


def random_text_requests(
    num_prompts: int, input_len: int, output_len: int, seed: int = 0, prefix_len: int = 0
) -> list[BenchRequest]:
    """As random_requests, in words (about one token each), for endpoints that only take text."""
    rng = random.Random(seed)
    prefix = [rng.choice(_WORDS) for _ in range(prefix_len)]
    return [
        BenchRequest(" ".join(prefix + [rng.choice(_WORDS) for _ in range(input_len)]), None, output_len)
        for _ in range(num_prompts)
    ]


def load_dataset(
    path: str, num_prompts: int, output_len: int | None = None, encode: Encode | None = None
) -> list[BenchRequest]:
    """The first `num_prompts` usable prompts of a file, in file order.

    JSONL: one prompt a line, a JSON string or an object with `prompt` (text or token ids) or
    `prompt_token_ids`, and optionally `output_len` / `max_tokens`.
    ShareGPT JSON: a list of {"conversations": [{"from": "human", "value": ...}, {"from": "gpt", ...}]};
    the first turn is the prompt, the reply's token count (with `encode`) the output length.
    `output_len`, when given, overrides the file's lengths; with neither, 128 tokens.
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
        request = _parse_record(record, output_len, encode)
        if request is None:
            continue
        if not request.prompt:
            raise ValueError(f"{path}: record {i + 1} has an empty prompt")
        requests.append(request)
    if not requests:
        raise ValueError(f"{path}: no usable prompts (expected JSONL prompts or ShareGPT conversations)")
    return requests


def _parse_record(record: object, output_len: int | None, encode: Encode | None) -> BenchRequest | None:
    if isinstance(record, str):
        return _text(record, output_len or DEFAULT_OUTPUT_LEN, encode)
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
        return _text(prompt, output_len or DEFAULT_OUTPUT_LEN, encode)
    out = output_len or record.get("output_len") or record.get("max_tokens") or DEFAULT_OUTPUT_LEN
    prompt = record.get("prompt_token_ids", record.get("prompt"))
    if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
        return BenchRequest(prompt, len(prompt), int(out))
    if isinstance(prompt, str):
        return _text(prompt, int(out), encode)
    raise ValueError("a prompt record needs 'prompt' (text or token ids) or 'prompt_token_ids'")


def _text(prompt: str, output_len: int, encode: Encode | None) -> BenchRequest:
    return BenchRequest(prompt, len(encode(prompt)) if encode else None, output_len)
