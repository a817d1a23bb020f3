"""Qwen3: `<think>reasoning</think>answer`. With thinking off (enable_thinking=False puts an empty think block
in the prompt) the output has no tags and is all content. An output that lacks the start tag but has
`</think>` (Qwen3-2507 thinking models, whose template opens the tag in the prompt) is reasoning then
content, as recent vLLM reads it. Streaming cannot see that end tag coming: unless `observe_prompt` saw the
prompt open the tag, such an output streams as content (minus the tag)."""

from __future__ import annotations

from vllm_cli.entrypoints.openai.reasoning_parsers.base import ReasoningParserManager, ThinkTagReasoningParser


@ReasoningParserManager.register_module("qwen3")
class Qwen3ReasoningParser(ThinkTagReasoningParser):
    name = "qwen3"
    starts_in_reasoning = False
