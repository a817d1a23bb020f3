"""Pythonic calls (Llama 3.2 / Llama 4 / ToolACE style): `[get_weather(city="Paris"), f(x=1)]`, the whole
output one Python list of calls with keyword arguments. Argument values must be literals (read with
`ast.literal_eval`); anything else is not a call and the output stays content. Llama 4 may wrap the list in
`<|python_start|>` ... `<|python_end|>`. Arguments stream one whole argument at a time."""

from __future__ import annotations

import ast
import json
import re

from vllm_cli.entrypoints.openai.tool_parsers.base import PartialCall, Segment, ToolParser, ToolParserManager
from vllm_cli.entrypoints.openai.tool_parsers.partial_json import skip_ws

START, END = "<|python_start|>", "<|python_end|>"
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")


class _NotACall(Exception):
    pass


class _Arriving(Exception):
    pass


def literal_end(text: str, i: int) -> int:
    """Index of the ',' or ')' that ends the Python expression starting at `i` (outside brackets and
    strings). Raises _Arriving when the text ends first, _NotACall on an unmatched bracket."""
    n = len(text)
    depth = 0
    while i < n:
        c = text[i]
        if c in "'\"":
            quote = c * 3 if text.startswith(c * 3, i) else c
            j = i + len(quote)
            while True:
                if j >= n:
                    raise _Arriving
                if text[j] == "\\":
                    j += 2
                elif text.startswith(quote, j):
                    j += len(quote)
                    break
                elif text[j] == "\n" and len(quote) == 1:
                    raise _NotACall
                else:
                    j += 1
            i = j
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            if depth == 0:
                if c == ")":
                    return i
                raise _NotACall
            depth -= 1
        elif c == "," and depth == 0:
            return i
        i += 1
    raise _Arriving


@ToolParserManager.register_module("pythonic")
class PythonicToolParser(ToolParser):
    name = "pythonic"

    def scan(self, text: str, final: bool) -> list[Segment]:
        n = len(text)
        i = skip_ws(text, 0)
        if text.startswith(START, i):
            i = skip_ws(text, i + len(START))
            if i >= n and not final:
                return []  # the tag: what follows it decides
        elif not final and i < n and START.startswith(text[i:]):
            return [text[:i]]
        if i >= n or text[i] != "[":
            return [text]
        calls: list[PartialCall] = []
        try:
            end = self._calls(text, i + 1, calls)
        except _NotACall:
            return [text]
        except _Arriving:
            if final:
                return [text]
            return [*calls] or [PartialCall(None)]
        k = skip_ws(text, end)
        if text.startswith(END, k):
            end = k + len(END)
        elif not final and k < n and END.startswith(text[k:]):
            return [*calls]
        return [*calls, text[end:]]

    @staticmethod
    def _calls(text: str, i: int, calls: list[PartialCall]) -> int:
        """Read `name(k=v, ...), ...]` from `i` into `calls` (the last one partial when the text ends);
        returns the index after the closing ']'."""
        n = len(text)

        def ws(j: int) -> int:
            j = skip_ws(text, j)
            if j >= n:
                raise _Arriving
            return j

        i = ws(i)
        while True:
            m = _DOTTED.match(text, i)
            if m is None:
                raise _NotACall
            if m.end() >= n:
                raise _Arriving
            k = ws(m.end())
            if text[k] != "(":
                raise _NotACall
            call = PartialCall(None, "{")  # named once its first argument (or its ')') shows it is a call
            calls.append(call)
            parts: list[str] = []
            seen: set[str] = set()
            k = ws(k + 1)
            while text[k] != ")":
                km = _IDENT.match(text, k)
                if km is None:
                    raise _NotACall
                if km.end() >= n:
                    raise _Arriving
                key = km.group()
                e = ws(km.end())
                if text[e] != "=" or key in seen:
                    raise _NotACall
                v = ws(e + 1)
                if text[v] == "=":
                    raise _NotACall
                call.name = m.group()
                stop = literal_end(text, v)
                try:
                    value = json.dumps(ast.literal_eval(text[v:stop].strip()), ensure_ascii=False)
                except Exception as exc:  # not a literal, or not JSON-serialisable
                    raise _NotACall from exc
                seen.add(key)
                parts.append(f"{json.dumps(key, ensure_ascii=False)}: {value}")
                call.arguments = "{" + ", ".join(parts)
                k = stop
                if text[k] == ",":
                    k = ws(k + 1)
            call.name = m.group()
            call.arguments += "}"
            call.complete = True
            k = ws(k + 1)
            if text[k] == "]":
                return k + 1
            if text[k] != ",":
                raise _NotACall
            i = ws(k + 1)
