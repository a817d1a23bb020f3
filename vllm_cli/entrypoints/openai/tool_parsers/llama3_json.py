"""Llama 3.1 / 3.2 / 3.3 JSON calls: `{"name": ..., "parameters": {...}}`, optionally after
`<|python_tag|>`, several separated by `;`. There is no marker, so an output is read as calls only
when it begins with one; any other output is content."""

from __future__ import annotations

from vllm_cli.entrypoints.openai.tool_parsers.base import PartialCall, Segment, ToolParser, ToolParserManager
from vllm_cli.entrypoints.openai.tool_parsers.json_call import call_from_object
from vllm_cli.entrypoints.openai.tool_parsers.partial_json import JSONScanError, scan_value, skip_ws

PYTHON_TAG = "<|python_tag|>"
KEYS = frozenset({"name", "parameters", "arguments", "type"})


@ToolParserManager.register_module("llama3_json")
class Llama3JsonToolParser(ToolParser):
    name = "llama3_json"

    def scan(self, text: str, final: bool) -> list[Segment]:
        n = len(text)
        i = skip_ws(text, 0)
        if text.startswith(PYTHON_TAG, i):
            i = skip_ws(text, i + len(PYTHON_TAG))
            if i >= n and not final:
                return []  # the tag: what follows it decides
        elif not final and i < n and PYTHON_TAG.startswith(text[i:]):
            return [text[:i]]  # the tag may be arriving
        if i >= n or text[i] != "{":
            return [text]
        segments: list[Segment] = []
        tail = 0  # where the content after the last complete call begins
        pos = i
        while True:
            try:
                node = scan_value(text, pos)
                call: PartialCall | None = call_from_object(node, allowed_keys=KEYS, require_args=True)
            except JSONScanError:
                call = None
            if call is None or (final and not node.complete):  # not a call: the rest is content
                segments.append(text[tail:])
                return segments
            segments.append(call)
            if not node.complete:
                return segments
            tail = node.end
            k = skip_ws(text, node.end)
            if k >= n:
                return segments
            if text[k] == ";":
                k = skip_ws(text, k + 1)
                if k >= n:
                    return segments  # a trailing ';' (or the next call yet to come)
                if text[k] == "{":
                    pos = k
                    continue
            segments.append(text[tail:])
            return segments
