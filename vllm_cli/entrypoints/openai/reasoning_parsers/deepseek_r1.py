"""DeepSeek-R1 (and its distills): the chat template opens `<think>` in the prompt, so the output is usually
`reasoning</think>answer` without the start tag (a `<think>` it does write is dropped). Everything before
`</think>` is reasoning; an output with no `</think>` at all is all reasoning (content None)."""

from __future__ import annotations

from vllm_cli.entrypoints.openai.reasoning_parsers.base import ReasoningParserManager, ThinkTagReasoningParser


@ReasoningParserManager.register_module("deepseek_r1")
class DeepSeekR1ReasoningParser(ThinkTagReasoningParser):
    name = "deepseek_r1"
    starts_in_reasoning = True
