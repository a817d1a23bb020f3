"""Schemathesis hooks for fuzzing the vllm-cli server (SCHEMATHESIS_HOOKS=fuzz_hooks, with
benchmarks/ on PYTHONPATH; benchmarks/load_and_faults.py sets both).

Keeps each generated request's work small: at most 4 new tokens a choice and 2 choices, so a few
hundred examples run in minutes on a CPU instead of generating to the end of the context. Only
values the schema accepts are shrunk, so a request generated to be invalid stays invalid."""

from __future__ import annotations

from typing import Any

import schemathesis

GENERATING_PATHS = ("/v1/chat/completions", "/v1/completions")
# field: (the smallest valid value, the schema's maximum or None, the most we let through)
LIMITS = {"max_tokens": (1, None, 4), "max_completion_tokens": (1, None, 4), "n": (1, 128, 2)}


def _whole(value: Any) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)) or (isinstance(value, float) and value.is_integer())


def shrink_work(path: str, body: Any) -> None:
    """Clamp the fields that decide how much a generating request computes (in place)."""
    if path not in GENERATING_PATHS or not isinstance(body, dict):
        return
    for name, (low, high, most) in LIMITS.items():
        value = body.get(name)
        if _whole(value) and value >= low and (high is None or value <= high):
            body[name] = min(int(value), most)
    if body.get("max_tokens") is None and body.get("max_completion_tokens") is None:
        body["max_tokens"] = 4  # null or absent means the rest of the context


@schemathesis.hook
def before_call(ctx: Any, case: Any, kwargs: dict) -> None:
    shrink_work(case.operation.path, case.body)
