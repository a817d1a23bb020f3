"""Hermes / Qwen 2.5 / Qwen 3: `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`, one block per
call; the text before the blocks is content."""

from __future__ import annotations

from vllm_cli.entrypoints.openai.tool_parsers.base import (
    PartialCall,
    Segment,
    ToolParser,
    ToolParserManager,
    held_suffix,
)
from vllm_cli.entrypoints.openai.tool_parsers.json_call import call_from_object
from vllm_cli.entrypoints.openai.tool_parsers.partial_json import JSONScanError, scan_value, skip_ws

START, END = "<tool_call>", "</tool_call>"


@ToolParserManager.register_module("hermes")
class HermesToolParser(ToolParser):
    name = "hermes"
    needs_special_tokens = True  # vLLM decodes with the markers kept for this parser too

    def scan(self, text: str, final: bool) -> list[Segment]:
        segments: list[Segment] = []
        pos = 0
        while True:
            start = text.find(START, pos)
            if start < 0:
                stop = len(text) if final else len(text) - held_suffix(text, pos, [START])
                segments.append(text[pos:stop])
                return segments
            segments.append(text[pos:start])
            body = start + len(START)
            found = self._call(text, body, final)
            if found is None:  # not a call: the marker is content and reading goes on after it
                segments.append(START)
                pos = body
                continue
            call, after = found
            segments.append(call)
            if after < 0:  # still arriving
                return segments
            pos = after

    @staticmethod
    def _call(text: str, i: int, final: bool) -> tuple[PartialCall, int] | None:
        """The call whose JSON starts at or after `i`, and where reading resumes after it (-1: the text
        ends inside it); None when there is no valid call there."""
        j = skip_ws(text, i)
        if j >= len(text):
            return None if final else (PartialCall(None), -1)
        if text[j] != "{":
            return None
        try:
            node = scan_value(text, j)
        except JSONScanError:
            return None
        call = call_from_object(node)
        if call is None:
            return None
        if not node.complete:
            return None if final else (call, -1)
        k = skip_ws(text, node.end)
        if text.startswith(END, k):
            return call, k + len(END)
        if END.startswith(text[k:]):  # the closing tag is still arriving (or never came)
            return (call, len(text)) if final else (call, -1)
        return call, node.end  # no closing tag: what follows is content
