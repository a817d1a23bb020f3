"""Tool-call parsers, by vLLM's `--tool-call-parser` names. Each parser is one module that registers itself
with `ToolParserManager.register_module`; importing this package registers them all."""

from vllm_cli.entrypoints.openai.tool_parsers import hermes, llama3_json, mistral, pythonic  # noqa: F401
from vllm_cli.entrypoints.openai.tool_parsers.base import ToolParser, ToolParserManager

__all__ = ["ToolParser", "ToolParserManager"]
