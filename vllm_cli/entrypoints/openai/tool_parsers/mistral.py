"""Mistral: `[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]` (Mistral 7B v0.3, Nemo, Small), and the
newer `[TOOL_CALLS]name[ARGS]{...}` per call (tokenizer v11+: Mistral Small 3.2, Magistral, Devstral).
`[TOOL_CALLS]` is a special token. Tool call ids are 9 alphanumerics, which Mistral's templates require."""

from __future__ import annotations

import re

from vllm_cli.entrypoints.openai.parser_types import mistral_tool_call_id
from vllm_cli.entrypoints.openai.tool_parsers.base import (
    PartialCall,
    Segment,
    ToolParser,
    ToolParserManager,
    held_suffix,
)
from vllm_cli.entrypoints.openai.tool_parsers.json_call import call_from_object
from vllm_cli.entrypoints.openai.tool_parsers.partial_json import JSONScanError, scan_value, skip_ws

BOT, ARGS = "[TOOL_CALLS]", "[ARGS]"
_NAME = re.compile(r"[A-Za-z0-9_.\-]+")


@ToolParserManager.register_module("mistral")
class MistralToolParser(ToolParser):
    name = "mistral"
    needs_special_tokens = True

    def new_call_id(self) -> str:
        return mistral_tool_call_id()

    def scan(self, text: str, final: bool) -> list[Segment]:
        segments: list[Segment] = []
        pos = 0
        while True:
            start = text.find(BOT, pos)
            if start < 0:
                stop = len(text) if final else len(text) - held_suffix(text, pos, [BOT])
                segments.append(text[pos:stop])
                return segments
            segments.append(text[pos:start])
            body = start + len(BOT)
            found = self._calls(text, body, final)
            if found is None:  # not calls: the marker is content and reading goes on after it
                segments.append(BOT)
                pos = body
                continue
            calls, after = found
            segments.extend(calls)
            if after < 0:
                return segments
            pos = after

    @staticmethod
    def _calls(text: str, i: int, final: bool) -> tuple[list[PartialCall], int] | None:
        n = len(text)
        j = skip_ws(text, i)
        if j >= n:
            return None if final else ([PartialCall(None)], -1)
        try:
            if text[j] == "[":  # a JSON list of calls
                node = scan_value(text, j)
                calls = []
                for item in node.items:
                    call = call_from_object(item, args_keys=("arguments", "parameters"))
                    if call is None:
                        return None
                    calls.append(call)
                if not node.complete:
                    return None if final else (calls or [PartialCall(None)], -1)
                if not calls:
                    return None
                return calls, node.end
            m = _NAME.match(text, j)  # name[ARGS]{...}
            if m is None:
                return None
            k = m.end()
            if text.startswith(ARGS, k):
                a = skip_ws(text, k + len(ARGS))
                if a >= n:
                    return None if final else ([PartialCall(m.group())], -1)
                if text[a] != "{":
                    return None
                node = scan_value(text, a)
                if node.complete:
                    return [PartialCall(m.group(), node.canon, complete=True)], node.end
                return None if final else ([PartialCall(m.group(), node.canon)], -1)
            if not final and ARGS.startswith(text[k:]):  # the name or the [ARGS] marker still arriving
                return [PartialCall(None)], -1
            return None
        except JSONScanError:
            return None
