"""One chat choice's generated text -> the assistant message: reasoning (a reasoning parser),
content, and tool calls, whole (`final`) or delta by delta (`feed`, then `finish`).

Tool calls come from the tool choice in force:
- named ({"type": "function", ...}): the output was constrained to the function's arguments
  object, so all of it (leading whitespace aside) is the arguments of one call;
- required: the output was constrained to a JSON array of {"name", "parameters"} objects (vLLM's
  form), each a call;
- auto: the server's tool parser (--tool-call-parser) finds calls in free text; the rest is content;
- none (or no tools): all text is content.

Streaming sends what can no longer change: content and reasoning as they come, a named call's
argument fragments as they come, a required call once its array item is complete, an auto call as
the parser releases it. `finish` compares what was sent with `final` on the whole text and sends
the difference (text a parser held back, a call completed by the last token), so the streamed
deltas add up to the non-streamed message.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from vllm_cli.entrypoints.openai.protocol import DeltaFunctionCall, DeltaMessage, DeltaToolCall, FunctionCall, ToolCall


def random_tool_call_id() -> str:
    return f"chatcmpl-tool-{uuid.uuid4().hex[:24]}"


def required_tools_schema(tools: list[dict], parallel: bool = True) -> dict:
    """vLLM's schema for tool_choice "required": an array of calls, each {"name": one of the tools,
    "parameters": that tool's arguments}; one call at most without parallel_tool_calls."""
    items = [
        {
            "properties": {
                "name": {"type": "string", "enum": [t["function"]["name"]]},
                "parameters": t["function"].get("parameters") or {"type": "object", "properties": {}},
            },
            "required": ["name", "parameters"],
        }
        for t in tools
    ]
    schema: dict[str, Any] = {"type": "array", "minItems": 1, "items": {"type": "object", "anyOf": items}}
    if not parallel:
        schema["maxItems"] = 1
    return schema


def _array_items(text: str) -> tuple[list[Any], bool]:
    """The complete items at the start of a JSON array being generated, and whether it is closed."""
    decoder = json.JSONDecoder()
    i, n = 0, len(text)
    items: list[Any] = []

    def skip(i: int) -> int:
        while i < n and text[i] in " \t\r\n,":
            i += 1
        return i

    i = skip(0)
    if i >= n or text[i] != "[":
        return [], False
    i += 1
    while True:
        i = skip(i)
        if i < n and text[i] == "]":
            return items, True
        try:
            item, i = decoder.raw_decode(text, i)
        except ValueError:
            return items, False
        items.append(item)


def _required_calls(items: list[Any]) -> list[tuple[str, str]] | None:
    """(name, arguments JSON) of each item, or None when an item is not a call."""
    calls = []
    for item in items:
        if not (isinstance(item, dict) and isinstance(item.get("name"), str)):
            return None
        calls.append((item["name"], json.dumps(item.get("parameters", {}), ensure_ascii=False)))
    return calls


@dataclass
class Message:
    reasoning_content: str | None = None
    content: str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)


@dataclass
class _SentCall:
    id: str
    name: str
    arguments: str = ""


class ChoiceOutput:
    """mode: None (plain text), "auto", "required" or "named" (then `name` is the function).
    tool_parser / reasoning_parser: this choice's own parser instances (they keep stream state)."""

    def __init__(
        self,
        mode: str | None = None,
        *,
        name: str | None = None,
        tools: list[dict] | None = None,
        tool_parser: Any = None,
        reasoning_parser: Any = None,
        parallel: bool = True,
    ):
        if mode == "auto" and tool_parser is None:
            raise ValueError("auto tool choice needs a tool parser")
        self.mode, self.name, self.tools = mode, name, tools or []
        self.tool_parser, self.reasoning_parser, self.parallel = tool_parser, reasoning_parser, parallel
        self.text = ""  # everything generated so far
        self.answer = ""  # the part after the reasoning
        self.sent_reasoning = ""
        self.sent_content = ""
        self.sent_calls: list[_SentCall] = []

    @property
    def plain(self) -> bool:
        """True when the text is the content as it is (no parsing at all)."""
        return self.mode is None and self.reasoning_parser is None

    # -- the whole text --------------------------------------------------------------------
    def final(self, text: str) -> Message:
        reasoning, answer = None, text
        if self.reasoning_parser is not None:
            reasoning, answer_or_none = self.reasoning_parser.extract_reasoning(text)
            answer = answer_or_none or ""
        message = Message(reasoning_content=reasoning or None)
        if self.mode == "named":
            message.tool_calls = [
                ToolCall(
                    id=random_tool_call_id(), function=FunctionCall(name=self.name or "", arguments=answer.lstrip())
                )
            ]
        elif self.mode == "required":
            try:
                calls = _required_calls(parsed) if isinstance(parsed := json.loads(answer), list) else None
            except ValueError:
                calls = None
            if calls:
                message.tool_calls = [
                    ToolCall(id=random_tool_call_id(), function=FunctionCall(name=n, arguments=a)) for n, a in calls
                ]
            else:  # cut short (max_tokens): the text is all there is
                message.content = answer or None
        elif self.mode == "auto":
            extracted = self.tool_parser.extract_tool_calls(answer, self.tools)
            message.content = extracted.content or None
            message.tool_calls = [
                ToolCall(id=c.id or random_tool_call_id(), function=FunctionCall(name=c.name, arguments=c.arguments))
                for c in extracted.tool_calls
            ]
        else:
            message.content = answer
        if not self.parallel:
            message.tool_calls = message.tool_calls[:1]
        return message

    # -- streaming -------------------------------------------------------------------------
    def feed(self, delta_text: str) -> DeltaMessage | None:
        """The delta to send for `delta_text`, the next piece of the output (None: nothing yet)."""
        previous, self.text = self.text, self.text + delta_text
        if self.plain:
            self.sent_content += delta_text
            return DeltaMessage(content=delta_text) if delta_text else None
        reasoning_delta: str | None = None
        answer_delta = delta_text
        if self.reasoning_parser is not None:
            d = self.reasoning_parser.extract_reasoning_streaming(previous, self.text, delta_text)
            reasoning_delta = d.reasoning_content if d is not None else None
            answer_delta = (d.content if d is not None else None) or ""
        out = DeltaMessage()
        if reasoning_delta:
            out.reasoning_content = reasoning_delta
            self.sent_reasoning += reasoning_delta
        previous_answer, self.answer = self.answer, self.answer + answer_delta
        calls: list[DeltaToolCall] = []
        if self.mode == "named":
            if self.sent_calls:
                if answer_delta:
                    calls.append(self._fragment(0, answer_delta))
            elif self.answer.lstrip():
                calls.append(self._start(0, self.name or "", self.answer.lstrip()))
        elif self.mode == "required":
            items, _ = _array_items(self.answer)
            for index, (name, arguments) in enumerate(_required_calls(items) or []):
                if index >= len(self.sent_calls) and (self.parallel or index == 0):
                    calls.append(self._start(index, name, arguments))
        elif self.mode == "auto":
            if answer_delta:
                d = self.tool_parser.extract_tool_calls_streaming(previous_answer, self.answer, answer_delta)
                if d is not None:
                    if d.content:
                        out.content = d.content
                        self.sent_content += d.content
                    for c in d.tool_calls:
                        if not self.parallel and c.index > 0:
                            continue
                        if c.index >= len(self.sent_calls):
                            if c.name is None:
                                continue  # a parser sends the name first; nothing to hang this on
                            calls.append(self._start(c.index, c.name, c.arguments or "", c.id))
                        elif c.arguments:
                            calls.append(self._fragment(c.index, c.arguments))
        elif answer_delta:
            out.content = answer_delta
            self.sent_content += answer_delta
        if calls:
            out.tool_calls = calls
        return out if (out.content or out.reasoning_content or out.tool_calls) else None

    def finish(self) -> DeltaMessage | None:
        """What the stream has not sent yet of the final message (after the last `feed`)."""
        message = self.final(self.text)
        out = DeltaMessage()
        if message.reasoning_content and message.reasoning_content.startswith(self.sent_reasoning):
            out.reasoning_content = message.reasoning_content[len(self.sent_reasoning) :] or None
        if message.content and message.content.startswith(self.sent_content):
            out.content = message.content[len(self.sent_content) :] or None
        calls: list[DeltaToolCall] = []
        for index, call in enumerate(message.tool_calls):
            arguments = call.function.arguments
            if index >= len(self.sent_calls):
                calls.append(self._start(index, call.function.name, arguments, call.id))
            elif arguments.startswith(self.sent_calls[index].arguments):
                if rest := arguments[len(self.sent_calls[index].arguments) :]:
                    calls.append(self._fragment(index, rest))
        if calls:
            out.tool_calls = calls
        return out if (out.content or out.reasoning_content or out.tool_calls) else None

    @property
    def called(self) -> bool:
        return bool(self.sent_calls)

    def _start(self, index: int, name: str, arguments: str, call_id: str | None = None) -> DeltaToolCall:
        call = _SentCall(call_id or random_tool_call_id(), name, arguments)
        self.sent_calls.append(call)
        return DeltaToolCall(
            index=index, id=call.id, type="function", function=DeltaFunctionCall(name=name, arguments=arguments)
        )

    def _fragment(self, index: int, arguments: str) -> DeltaToolCall:
        self.sent_calls[index].arguments += arguments
        return DeltaToolCall(index=index, function=DeltaFunctionCall(arguments=arguments))
