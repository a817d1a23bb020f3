"""Plain result types shared by the tool-call and reasoning parsers (no pydantic: the server maps them
onto its protocol models)."""

from __future__ import annotations

import secrets
import string
from dataclasses import dataclass, field
from uuid import uuid4


def random_tool_call_id() -> str:
    """OpenAI-style id of one tool call, as vLLM makes them."""
    return f"chatcmpl-tool-{uuid4().hex[:24]}"


_ALNUM = string.ascii_letters + string.digits


def mistral_tool_call_id() -> str:
    """Mistral's tokenizer accepts only 9 alphanumerics as a tool call id (in the follow-up turn)."""
    return "".join(secrets.choice(_ALNUM) for _ in range(9))


@dataclass
class ToolCall:
    """One complete call: `arguments` is the JSON text of the arguments object."""

    name: str
    arguments: str
    id: str = field(default_factory=random_tool_call_id)


@dataclass
class ExtractedToolCalls:
    tools_called: bool
    tool_calls: list[ToolCall]
    content: str | None  # the text that is not a tool call (None when empty)


@dataclass
class ToolCallDelta:
    """OpenAI's streamed shape: the first delta of an index carries id and name, later ones argument
    fragments that concatenate to the arguments JSON."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str | None = None


@dataclass
class DeltaMessage:
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[ToolCallDelta] = field(default_factory=list)
