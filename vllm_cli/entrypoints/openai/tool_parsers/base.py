"""ToolParser: one instance per request turns model text into OpenAI tool calls, whole or streamed.

A parser implements one method, `scan(text, final)`: the text read so far as a list of segments,
content strings and `PartialCall`s in order. With final=False the segments hold only what can no
longer change: text that might still become part of a call (a half-arrived marker, a call whose
name is not known yet) is left out, and a partial call carries the stable prefix of its arguments
JSON. With final=True the text is all there and every call is complete; what did not turn out to
be a valid call is content.

From that one method the base class gives both faces of the interface: `extract_tool_calls` scans
the whole output once, and `extract_tool_calls_streaming` rescans the text so far and sends what
was not sent before. So the streamed content and argument fragments add up to the non-streamed
result by construction, the one exception being a call that is already being streamed when the
text breaks off or turns malformed (a stream cannot take back what it sent).

Whitespace-only content between, before or after calls is dropped (a model's newlines around its
calls are not an answer); content with any other character is kept verbatim.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from vllm_cli.entrypoints.openai.parser_registry import ParserRegistry
from vllm_cli.entrypoints.openai.parser_types import (
    DeltaMessage,
    ExtractedToolCalls,
    ToolCall,
    ToolCallDelta,
    random_tool_call_id,
)

logger = logging.getLogger(__name__)


@dataclass
class PartialCall:
    """A call as far as it has been read."""

    name: str | None  # None: not known yet; nothing of this call is streamed until it is
    arguments: str = ""  # stable prefix of the arguments JSON; all of it once complete
    complete: bool = False
    id: str | None = None  # an id the model wrote itself (None: the parser makes one)


Segment = str | PartialCall


def held_suffix(text: str, start: int, markers: Sequence[str]) -> int:
    """Length of the longest end of `text[start:]` that is the beginning (not all) of a marker: text
    to hold back while the marker may still be arriving."""
    room = len(text) - start
    best = 0
    for marker in markers:
        for k in range(min(len(marker) - 1, room), best, -1):
            if text.endswith(marker[:k]):
                best = k
                break
    return best


def content_of(segments: Sequence[Segment]) -> str:
    """The content of `segments`: their strings, minus whitespace-only runs between calls."""
    runs: list[str] = []
    current: list[str] = []
    for seg in segments:
        if isinstance(seg, PartialCall):
            runs.append("".join(current))
            current = []
        else:
            current.append(seg)
    runs.append("".join(current))
    return "".join(run for run in runs if run.strip())


class ToolParser:
    """Base of the tool-call parsers. One instance per request: it holds the streaming state."""

    name: ClassVar[str] = ""
    # True when the call markers are special tokens that skip_special_tokens=True would drop: the
    # server then decodes this request's output with skip_special_tokens=False.
    needs_special_tokens: ClassVar[bool] = False

    def __init__(self, tokenizer: Any = None) -> None:
        self.tokenizer = tokenizer
        self._sent_content = 0  # characters of content streamed so far
        self._sent_calls: list[list[Any]] = []  # per streamed index: [id, name, characters of arguments sent]

    # -- what a parser implements -------------------------------------------------------------
    def scan(self, text: str, final: bool) -> list[Segment]:
        raise NotImplementedError

    def new_call_id(self) -> str:
        return random_tool_call_id()

    # -- the interface ------------------------------------------------------------------------
    def extract_tool_calls(self, model_output: str, tools: list[dict] | None = None) -> ExtractedToolCalls:
        """The calls in a finished output, and the text that is not a call. Never raises."""
        try:
            segments = self.scan(model_output, final=True)
        except Exception:  # a parser bug must not fail the request: the text stays content
            logger.exception("%s tool parser failed; returning the output as content", self.name)
            return ExtractedToolCalls(False, [], model_output or None)
        calls = [
            ToolCall(name=s.name, arguments=s.arguments, id=s.id or self.new_call_id())
            for s in segments
            if isinstance(s, PartialCall) and s.name is not None
        ]
        return ExtractedToolCalls(bool(calls), calls, content_of(segments) or None)

    def extract_tool_calls_streaming(
        self, previous_text: str, current_text: str, delta_text: str
    ) -> DeltaMessage | None:
        """What to send for the text generated so far (`current_text`, of which `delta_text` is new):
        None when there is nothing to send yet. Never raises."""
        return self._stream(current_text, delta_text, final=False)

    def finish_streaming(self, current_text: str) -> DeltaMessage | None:
        """Optional, once the stream has ended: what was held back and never resolved, such as a tail
        that looked like the start of a marker ("<tool_c") and is content after all. Never raises."""
        return self._stream(current_text, "", final=True)

    def _stream(self, current_text: str, delta_text: str, final: bool) -> DeltaMessage | None:
        try:
            segments = self.scan(current_text, final=final)
        except Exception:
            logger.exception("%s tool parser failed while streaming; sending the text as content", self.name)
            return DeltaMessage(content=delta_text) if delta_text else None
        content = content_of(segments)
        new_content = content[self._sent_content :]
        self._sent_content = max(self._sent_content, len(content))
        deltas: list[ToolCallDelta] = []
        calls = [s for s in segments if isinstance(s, PartialCall)]
        for index, call in enumerate(calls):
            if call.name is None:
                break
            if index >= len(self._sent_calls):
                call_id = call.id or self.new_call_id()
                self._sent_calls.append([call_id, call.name, len(call.arguments)])
                deltas.append(ToolCallDelta(index=index, id=call_id, name=call.name, arguments=call.arguments or None))
                continue
            _, sent_name, sent = self._sent_calls[index]
            if sent_name == call.name and len(call.arguments) > sent:
                deltas.append(ToolCallDelta(index=index, arguments=call.arguments[sent:]))
                self._sent_calls[index][2] = len(call.arguments)
        if not new_content and not deltas:
            return None
        return DeltaMessage(content=new_content or None, tool_calls=deltas)


class ToolParserManager(ParserRegistry):
    """The registry of tool call parsers by name (vLLM's `--tool-call-parser` names)."""

    kind = "tool call parser"
    package = "vllm_cli.entrypoints.openai.tool_parsers"
    _parsers: ClassVar[dict[str, type[Any]]] = {}

    @classmethod
    def get_tool_parser(cls, name: str) -> type[ToolParser]:
        return cls._get(name)

    @classmethod
    def import_tool_parser(cls, path: str) -> None:
        """Load a plugin file that registers a parser with the decorator."""
        cls._import_plugin(path)
