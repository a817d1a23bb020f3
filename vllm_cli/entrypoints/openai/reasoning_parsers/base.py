"""ReasoningParser: one instance per request splits a thinking model's output into reasoning and answer.

A parser implements `split(text, final)`: (reasoning, content) of the text read so far. With final=False
both hold only what can no longer change (a tag that may still be arriving, such as "</thi", is held
back), so the streamed deltas, diffs of successive splits, add up to the non-streamed split.

`ThinkTagReasoningParser` does this for the `<think>...</think>` family. Leading whitespace of the
reasoning and of the answer is dropped (the newlines models write after the tags); a part that is only
whitespace is None.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from vllm_cli.entrypoints.openai.parser_registry import ParserRegistry
from vllm_cli.entrypoints.openai.parser_types import DeltaMessage
from vllm_cli.entrypoints.openai.tool_parsers.base import held_suffix

logger = logging.getLogger(__name__)


class ReasoningParser:
    """Base of the reasoning parsers. One instance per request: it holds the streaming state."""

    name: ClassVar[str] = ""
    needs_special_tokens: ClassVar[bool] = False

    def __init__(self, tokenizer: Any = None) -> None:
        self.tokenizer = tokenizer
        self._sent_reasoning = 0
        self._sent_content = 0
        self._streaming = False  # set by the streaming methods: the split must agree with what was sent

    def split(self, text: str, final: bool) -> tuple[str, str]:
        raise NotImplementedError

    def is_reasoning_end(self, text: str) -> bool:
        """Whether the output so far has left the reasoning: the answer (and any tool calls) has begun."""
        raise NotImplementedError

    def observe_prompt(self, prompt: str) -> None:
        """Optional: the rendered prompt, for parsers whose output starts differently when the chat
        template already opened (or closed) the reasoning."""

    def extract_reasoning(self, model_output: str) -> tuple[str | None, str | None]:
        """(reasoning, content) of a finished output. Never raises."""
        try:
            reasoning, content = self.split(model_output, final=True)
        except Exception:
            logger.exception("%s reasoning parser failed; returning the output as content", self.name)
            return None, model_output or None
        return reasoning or None, content or None

    def extract_reasoning_streaming(
        self, previous_text: str, current_text: str, delta_text: str
    ) -> DeltaMessage | None:
        """What to send for the text so far: None when nothing yet. Never raises."""
        return self._stream(current_text, delta_text, final=False)

    def finish_streaming(self, current_text: str) -> DeltaMessage | None:
        """Optional, once the stream has ended: what was held back as a possible tag ("</thi"). Never raises."""
        return self._stream(current_text, "", final=True)

    def _stream(self, current_text: str, delta_text: str, final: bool) -> DeltaMessage | None:
        self._streaming = True
        try:
            reasoning, content = self.split(current_text, final=final)
        except Exception:
            logger.exception("%s reasoning parser failed while streaming; sending the text as content", self.name)
            return DeltaMessage(content=delta_text) if delta_text else None
        new_reasoning = reasoning[self._sent_reasoning :]
        new_content = content[self._sent_content :]
        self._sent_reasoning = max(self._sent_reasoning, len(reasoning))
        self._sent_content = max(self._sent_content, len(content))
        if not new_reasoning and not new_content:
            return None
        return DeltaMessage(content=new_content or None, reasoning_content=new_reasoning or None)


class ThinkTagReasoningParser(ReasoningParser):
    """`<think>reasoning</think>answer`. `starts_in_reasoning`: whether an output that does not open with
    the start tag begins inside the reasoning (its template opened the tag in the prompt)."""

    start_tag: ClassVar[str] = "<think>"
    end_tag: ClassVar[str] = "</think>"
    starts_in_reasoning: bool = True

    def observe_prompt(self, prompt: str) -> None:
        opened, closed = prompt.rfind(self.start_tag), prompt.rfind(self.end_tag)
        if opened > closed:  # the prompt leaves a <think> open: the output continues the reasoning
            self.starts_in_reasoning = True
        elif closed >= 0 and prompt.rstrip().endswith(self.end_tag):  # thinking switched off
            self.starts_in_reasoning = False

    def _body(self, text: str, final: bool) -> tuple[int, bool] | None:
        """Where the output proper begins and whether it begins in the reasoning; None while the start
        tag may still be arriving."""
        j = len(text) - len(text.lstrip())
        if text.startswith(self.start_tag, j):
            return j + len(self.start_tag), True
        if not final and self.start_tag.startswith(text[j:]):
            return None
        return 0, self.starts_in_reasoning

    def split(self, text: str, final: bool) -> tuple[str, str]:
        body = self._body(text, final)
        if body is None:
            return "", ""
        start, in_reasoning = body
        end = text.find(self.end_tag, start)
        if end >= 0:
            reasoning, content = text[start:end], text[end + len(self.end_tag) :]
            if not in_reasoning and (self._streaming or not final):
                # The output did not open the tag and nothing said the prompt did: its first part was
                # streamed as content before the end tag showed it was reasoning.
                return "", (reasoning + content).lstrip()
            return reasoning.lstrip(), content.lstrip()
        stop = len(text) if final else len(text) - held_suffix(text, start, [self.end_tag])
        part = text[start:stop].lstrip()
        return (part, "") if in_reasoning else ("", part)

    def is_reasoning_end(self, text: str) -> bool:
        if self.end_tag in text:
            return True
        body = self._body(text, final=False)
        return body is not None and not body[1]


class ReasoningParserManager(ParserRegistry):
    """The registry of reasoning parsers by name (vLLM's `--reasoning-parser` names)."""

    kind = "reasoning parser"
    package = "vllm_cli.entrypoints.openai.reasoning_parsers"
    _parsers: ClassVar[dict[str, type[Any]]] = {}

    @classmethod
    def get_reasoning_parser(cls, name: str) -> type[ReasoningParser]:
        return cls._get(name)

    @classmethod
    def import_reasoning_parser(cls, path: str) -> None:
        """Load a plugin file that registers a parser with the decorator."""
        cls._import_plugin(path)
