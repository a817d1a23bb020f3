"""Reasoning parsers, by vLLM's `--reasoning-parser` names. Each parser is one module that registers itself
with `ReasoningParserManager.register_module`; importing this package registers them all."""

from vllm_cli.entrypoints.openai.reasoning_parsers import deepseek_r1, qwen3  # noqa: F401
from vllm_cli.entrypoints.openai.reasoning_parsers.base import ReasoningParser, ReasoningParserManager

__all__ = ["ReasoningParser", "ReasoningParserManager"]
