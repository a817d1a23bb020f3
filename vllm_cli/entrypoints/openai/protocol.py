"""Pydantic models of the OpenAI HTTP API: requests (OpenAI's field names plus vLLM's
sampling extras), responses, and OpenAI-shaped errors.

Requests are strict about what they mean: a wrong JSON type or an out-of-range value is a 400
that names the field, and so is a field that would change the output but is not implemented
(REFUSED_FIELDS: audio, legacy function calling, ...). Fields that do not change the output
(user, store, metadata, ...) are accepted, and unknown fields a newer client may add are
ignored, as vLLM does: `ignored_fields` lists them for one warning line in the server log.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Container
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

# torch.Generator.manual_seed accepts exactly this range.
_SEED_MIN, _SEED_MAX = -(2**63), 2**64 - 1
MAX_N = 128  # OpenAI's own limit on choices per request
MAX_LOGPROBS = 20


class APIError(Exception):
    """An error the client should see as {"error": {...}} with an HTTP status."""

    def __init__(
        self,
        message: str,
        status: int = 400,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.message, self.status, self.type, self.param, self.code = message, status, type, param, code

    def to_dict(self) -> dict:
        return ErrorResponse(
            error=ErrorInfo(message=self.message, type=self.type, param=self.param, code=self.code)
        ).model_dump()


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorInfo


ModelT = TypeVar("ModelT", bound=BaseModel)


def parse_request(model: type[ModelT], body: bytes) -> ModelT:
    """Validate a JSON body against a request model; any problem is an APIError (400)."""
    try:
        return model.model_validate_json(body)
    except ValidationError as e:
        raise _validation_error(e, model.model_fields) from None


def _validation_error(error: ValidationError, fields: Container[str] = ()) -> APIError:
    problems: list[str] = []
    param: str | None = None
    # Our own checks (value_error) explain themselves best; put them first.
    errors = sorted(error.errors(include_url=False), key=lambda err: err["type"] != "value_error")
    for err in errors:
        # Union members add their type name to the location (prompt.list[int].0): drop those.
        loc = [str(p) for p in err["loc"] if not (isinstance(p, str) and ("[" in p or p in ("str", "int")))]
        where = ".".join(loc)
        param = param or (loc[0] if loc else None)
        kind, msg = err["type"], err["msg"].removeprefix("Value error, ")
        if kind == "json_invalid":
            return APIError(f"malformed JSON body: {err['ctx'].get('error', msg)}")
        if kind == "extra_forbidden":
            problems.append(f"unsupported parameter: {where!r}")
        elif kind == "value_error" and (m := re.match(r"unsupported parameter: '(\w+)'", msg)):
            problems.append(msg)
            param = param or m.group(1)
        elif where:
            problems.append(f"{where}: {msg}")
        else:
            problems.append(msg)
            # A check of the whole request names its field first ("tool_choice needs tools").
            first = msg.split(" ", 1)[0]
            if param is None and first in fields:
                param = first
    unique = list(dict.fromkeys(problems))
    more = f" (and {len(unique) - 3} more)" if len(unique) > 3 else ""
    return APIError("; ".join(unique[:3]) + more, param=param)


# ----- requests -----


def _integral(value: Any) -> Any:
    # JSON (and JSON Schema's "integer") counts 1.0 as an integer, and so does vLLM; 1.5 stays a 400.
    return int(value) if isinstance(value, float) and value.is_integer() else value


_INTEGRAL = BeforeValidator(_integral)
# Constraints go inside, before the validator, so that /openapi.json shows them as minimum/maximum.
Int = Annotated[int, _INTEGRAL]
PositiveInt = Annotated[int, Field(ge=1), _INTEGRAL]
NonNegativeInt = Annotated[int, Field(ge=0), _INTEGRAL]
NumLogprobs = Annotated[int, Field(ge=0, le=MAX_LOGPROBS), _INTEGRAL]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, populate_by_name=True)


class _Lenient(_Request):
    """A request object whose unknown fields are kept aside (model_extra) and ignored."""

    model_config = ConfigDict(extra="allow")


def ignored_fields(model: BaseModel, prefix: str = "") -> list[str]:
    """Dotted names of the unknown fields of `model` and of the request objects inside it."""
    out = [prefix + name for name, value in (model.model_extra or {}).items() if value is not None]
    for name in type(model).model_fields:
        value = getattr(model, name)
        items = list(enumerate(value)) if isinstance(value, list) else [(None, value)]
        for i, item in items:
            if isinstance(item, _Request):
                out += ignored_fields(item, f"{prefix}{name}{'' if i is None else f'[{i}]'}.")
    return out


class StreamOptions(_Lenient):
    include_usage: bool | None = False


class TextContentPart(_Request):
    type: Literal["text"]
    text: str

    @model_validator(mode="before")
    @classmethod
    def _only_text(cls, value: Any) -> Any:
        if isinstance(value, dict) and value.get("type") != "text":
            raise ValueError(f"unsupported content part type {value.get('type')!r}: only 'text' parts are supported")
        return value


_ROLES = ("system", "developer", "user", "assistant", "tool")


class FunctionCallParam(_Lenient):
    name: str
    # OpenAI sends the arguments as JSON text; some clients send the object itself.
    arguments: str | dict[str, Any] = "{}"


class ToolCallParam(_Lenient):
    """A call in an earlier assistant message."""

    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCallParam


class ChatMessage(_Lenient):
    # A str checked by _known_role rather than a Literal: "function" gets a message that says why.
    role: str = Field(json_schema_extra={"enum": list(_ROLES)})
    content: str | list[TextContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallParam] | None = None  # assistant messages: the calls it made
    tool_call_id: str | None = None  # tool messages: the call this is the result of

    @field_validator("role")
    @classmethod
    def _known_role(cls, role: str) -> str:
        if role == "function":
            raise ValueError(
                "'function' messages (OpenAI's legacy function calling) are not supported: "
                "send the result as a 'tool' message with tool_call_id"
            )
        if role not in _ROLES:
            raise ValueError(f"unknown role {role!r}: expected system, developer, user, assistant or tool")
        return role

    @model_validator(mode="after")
    def _tool_calls_from_assistant(self) -> ChatMessage:
        if self.tool_calls and self.role != "assistant":
            raise ValueError(f"only assistant messages carry tool_calls, not {self.role!r} ones")
        return self

    def to_template_dict(self) -> dict:
        content = self.content if not isinstance(self.content, list) else [p.model_dump() for p in self.content]
        # "developer" is OpenAI's new name for "system"; chat templates only know the latter.
        message: dict[str, Any] = {"role": "system" if self.role == "developer" else self.role, "content": content}
        if self.name is not None:
            message["name"] = self.name
        if self.tool_calls:
            message["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.function.name, "arguments": c.function.arguments},
                }
                for c in self.tool_calls
            ]
        if self.tool_call_id is not None:
            message["tool_call_id"] = self.tool_call_id
        return message


# ----- tools, tool_choice, response_format, structured outputs -----


class FunctionDefinition(_Lenient):
    name: str = Field(min_length=1)
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON schema of the arguments object
    strict: bool | None = None


class ChatCompletionToolParam(_Lenient):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Lenient):
    name: str


class NamedToolChoice(_Lenient):
    type: Literal["function"]
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class JsonSchemaFormat(_Lenient):
    name: str = "response"
    description: str | None = None
    json_schema: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Lenient):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and (self.json_schema is None or self.json_schema.json_schema is None):
            raise ValueError("response_format of type 'json_schema' needs json_schema.schema")
        return self


class StructuredOutputsRequest(_Request):
    """vLLM's `structured_outputs` extra: exactly one constraint."""

    json_: dict[str, Any] | str | None = Field(None, alias="json")
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None
    disable_any_whitespace: bool = False


# Fields that would change the output and are not implemented: a 400 rather than being ignored.
REFUSED_FIELDS: dict[str, str] = {
    "functions": "legacy function calling is not supported: use tools",
    "function_call": "legacy function calling is not supported: use tool_choice",
    "audio": "audio output is not supported",
    "modalities": "only text output is supported",
    "prediction": "predicted outputs are not supported",
    "web_search_options": "web search is not supported",
    "reasoning_effort": "reasoning_effort is not supported",
    "suffix": "suffix (insertion) is not supported",
    "best_of": "best_of is not supported",
    "use_beam_search": "beam search is not supported",
    "truncate_prompt_tokens": "truncate_prompt_tokens is not supported",
    "allowed_token_ids": "allowed_token_ids is not supported",
    "bad_words": "bad_words is not supported",
    "guided_whitespace_pattern": "guided_whitespace_pattern is not supported",
    "prompt_logprobs": "prompt_logprobs is not supported (use echo with logprobs on completions)",
}


class SamplingRequest(_Lenient):
    """Fields shared by chat and text completions. None means "the default"."""

    model: str | None = None
    n: Annotated[int, Field(ge=1, le=MAX_N), _INTEGRAL] | None = 1
    temperature: float | None = Field(None, ge=0.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    seed: Annotated[int, Field(ge=_SEED_MIN, le=_SEED_MAX), _INTEGRAL] | None = None
    stop: str | list[str] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    response_format: ResponseFormat | None = None
    # Accepted and ignored: they do not change the output.
    user: str | None = None
    store: bool | None = None
    metadata: dict[str, Any] | None = None
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    # vLLM's extras
    structured_outputs: StructuredOutputsRequest | None = None
    guided_json: dict[str, Any] | str | None = None  # vLLM's older names for structured_outputs
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None
    guided_decoding_backend: str | None = None  # accepted and ignored: the server's backend is used
    top_k: Annotated[int, Field(ge=-1), _INTEGRAL] | None = None
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    repetition_penalty: float | None = Field(None, gt=0.0)
    min_tokens: NonNegativeInt | None = None
    ignore_eos: bool | None = False
    stop_token_ids: list[Int] | None = None
    skip_special_tokens: bool | None = True
    spaces_between_special_tokens: bool | None = True
    include_stop_str_in_output: bool | None = False

    @model_validator(mode="before")
    @classmethod
    def _refused(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name, why in REFUSED_FIELDS.items():
                if data.get(name) is not None:
                    raise ValueError(f"unsupported parameter: {name!r}: {why}")
        return data

    @model_validator(mode="after")
    def _stream_options_need_stream(self):
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options can only be set when stream is true")
        return self

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def sampling_kwargs(self) -> dict[str, Any]:
        """SamplingParams keyword arguments for the fields the client set (defaults otherwise)."""
        names = (
            "n",
            "temperature",
            "top_p",
            "presence_penalty",
            "frequency_penalty",
            "seed",
            "top_k",
            "min_p",
            "repetition_penalty",
            "min_tokens",
            "ignore_eos",
            "stop_token_ids",
            "skip_special_tokens",
            "spaces_between_special_tokens",
            "include_stop_str_in_output",
        )
        kwargs = {name: getattr(self, name) for name in names if getattr(self, name) is not None}
        if self.logit_bias:
            kwargs["logit_bias"] = self.logit_bias
        return kwargs


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: PositiveInt | None = Field(None, description="Deprecated by OpenAI for max_completion_tokens.")
    max_completion_tokens: PositiveInt | None = None
    logprobs: bool | None = False
    top_logprobs: NumLogprobs | None = None
    # vLLM's chat extras
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    chat_template_kwargs: dict[str, Any] | None = None
    tools: list[ChatCompletionToolParam] | None = None
    tool_choice: ToolChoice | None = None  # None: "auto" when there are tools, as OpenAI
    parallel_tool_calls: bool | None = None  # None: true

    @model_validator(mode="after")
    def _top_logprobs_need_logprobs(self):
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs to be true")
        return self

    @model_validator(mode="after")
    def _tool_choice_needs_tools(self) -> ChatCompletionRequest:
        choice = self.tool_choice
        if choice is None or choice == "none":
            return self
        if not self.tools:
            raise ValueError("tool_choice needs tools")
        if isinstance(choice, NamedToolChoice) and choice.function.name not in {t.function.name for t in self.tools}:
            raise ValueError(f"tool_choice names the function {choice.function.name!r}, which is not among tools")
        return self


PromptType = str | list[str] | list[Int] | list[list[Int]]


class CompletionRequest(SamplingRequest):
    prompt: PromptType
    max_tokens: PositiveInt | None = 16
    echo: bool | None = False
    logprobs: NumLogprobs | None = None

    @field_validator("prompt")
    @classmethod
    def _not_empty(cls, prompt: PromptType) -> PromptType:
        if isinstance(prompt, list) and (not prompt or any(isinstance(p, list) and not p for p in prompt)):
            raise ValueError("the prompt must not be empty")
        return prompt

    def prompts(self) -> list[str | list[int]]:
        """The prompt as a list of single prompts (text or token ids)."""
        p = self.prompt
        if isinstance(p, str) or (p and isinstance(p[0], int)):
            return [p]
        return list(p)  # type: ignore[arg-type]  # list[str] or list[list[int]] here


class EmbeddingRequest(_Lenient):
    """POST /v1/embeddings (OpenAI's fields; add_special_tokens as vLLM)."""

    model: str | None = None
    input: PromptType
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None
    add_special_tokens: bool = True

    @field_validator("input")
    @classmethod
    def _not_empty(cls, value: PromptType) -> PromptType:
        if isinstance(value, list) and (not value or any(isinstance(v, list) and not v for v in value)):
            raise ValueError("the input must not be empty")
        return value

    def inputs(self) -> list[str | list[int]]:
        """The input as a list of single inputs (text or token ids)."""
        v = self.input
        if isinstance(v, str) or (v and isinstance(v[0], int)):
            return [v]
        return list(v)  # type: ignore[arg-type]  # list[str] or list[list[int]] here


class TokenizeRequest(_Request):
    # Exactly one of prompt and messages, in the schema too (so a fuzzer knows).
    model_config = ConfigDict(
        json_schema_extra={
            "oneOf": [
                {"required": ["prompt"], "properties": {"prompt": {"type": "string"}}},
                {"required": ["messages"], "properties": {"messages": {"type": "array"}}},
            ]
        }
    )
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    tools: list[ChatCompletionToolParam] | None = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    chat_template_kwargs: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_input(self):
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of prompt or messages")
        return self


class DetokenizeRequest(_Request):
    model: str | None = None
    tokens: list[NonNegativeInt]


# ----- responses -----


def random_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


class UsageInfo(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> UsageInfo:
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )


class ChatTokenLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class ChatLogprobContent(ChatTokenLogprob):
    top_logprobs: list[ChatTokenLogprob] = Field(default_factory=list)


class ChatChoiceLogprobs(BaseModel):
    content: list[ChatLogprobContent] | None = None


class FunctionCall(BaseModel):
    name: str
    arguments: str  # JSON text of the arguments object


class ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatResponseMessage(BaseModel):
    role: str = "assistant"
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[ToolCall] = Field(default_factory=list)


class _OmitNone(BaseModel):
    @model_serializer(mode="wrap")
    def _omit_none(self, handler: Any) -> dict:  # OpenAI's deltas carry only what changed
        return {k: v for k, v in handler(self).items() if v is not None}


class DeltaFunctionCall(_OmitNone):
    name: str | None = None
    arguments: str | None = None


class DeltaToolCall(_OmitNone):
    """A streamed piece of a call: index, id, type and name first, then argument fragments."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: DeltaFunctionCall | None = None


class ChatChoice(BaseModel):
    index: int
    message: ChatResponseMessage
    logprobs: ChatChoiceLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: UsageInfo
    system_fingerprint: str | None = None


class DeltaMessage(_OmitNone):
    role: str | None = None
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[DeltaToolCall] | None = None


class ChatStreamChoice(BaseModel):
    index: int
    delta: DeltaMessage
    logprobs: ChatChoiceLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatStreamChoice]
    usage: UsageInfo | None = None
    system_fingerprint: str | None = None


class CompletionLogprobs(BaseModel):
    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo | None = None
    system_fingerprint: str | None = None


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str  # str: base64 of little-endian float32, as OpenAI sends it


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    id: str
    object: Literal["list"] = "list"
    created: int
    model: str
    data: list[EmbeddingData]
    usage: EmbeddingUsage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "vllm-cli"
    root: str | None = None
    parent: str | None = None
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]


class DetokenizeResponse(BaseModel):
    prompt: str


class VersionResponse(BaseModel):
    version: str


# ----- the Responses API (/v1/responses) -----
# Requests: OpenAI's shapes for text, function tools and tool round trips; each is translated to a chat
# request (serving_responses.py), so everything chat checks is checked once, there.

_RESPONSES_REFUSED: dict[str, str] = {
    "background": "background responses are not supported",
    "conversation": "conversations are not supported: use previous_response_id",
    "prompt": "prompt templates are not supported",
    "top_logprobs": "top_logprobs is not supported on /v1/responses",
}


class ResponseInputText(_Lenient):
    """A text part of an input message; output_text is how an earlier answer comes back."""

    type: Literal["input_text", "output_text"]
    text: str
    annotations: list[Any] | None = None  # output_text: accepted, not used
    logprobs: list[Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _only_text(cls, value: Any) -> Any:
        if isinstance(value, dict) and value.get("type") not in ("input_text", "output_text"):
            raise ValueError(
                f"unsupported content part type {value.get('type')!r}: only 'input_text' and 'output_text' parts "
                "are supported"
            )
        return value


ResponseContent = str | list[ResponseInputText]


def _text_of(content: ResponseContent) -> str:
    return content if isinstance(content, str) else "".join(part.text for part in content)


class ResponseInputMessage(_Lenient):
    """A message: {"role", "content"} (type "message" may be left out), or an earlier output message."""

    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: ResponseContent
    id: str | None = None
    status: str | None = None

    @property
    def text(self) -> str:
        return _text_of(self.content)


class ResponseFunctionCallInput(_Lenient):
    """A call the model made earlier (the function_call output item, sent back)."""

    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str
    id: str | None = None
    status: str | None = None


class ResponseFunctionCallOutputInput(_Lenient):
    """The result of a call, for the model to read."""

    type: Literal["function_call_output"]
    call_id: str
    output: ResponseContent
    id: str | None = None
    status: str | None = None

    @property
    def text(self) -> str:
        return _text_of(self.output)


class ResponseReasoningInput(_Lenient):
    """An earlier reasoning item sent back: accepted and left out of the prompt (templates drop old thinking)."""

    type: Literal["reasoning"]
    id: str | None = None
    summary: list[Any] = Field(default_factory=list)
    content: list[Any] | None = None
    encrypted_content: str | None = None
    status: str | None = None


ResponseInputItem = (
    ResponseInputMessage | ResponseFunctionCallInput | ResponseFunctionCallOutputInput | (ResponseReasoningInput)
)


class ResponsesFunctionTool(_Lenient):
    """A function tool in the Responses API's flat shape ({"type", "name", "parameters", ...})."""

    type: Literal["function"]
    name: str = Field(min_length=1)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    @model_validator(mode="before")
    @classmethod
    def _only_functions(cls, value: Any) -> Any:
        if isinstance(value, dict) and value.get("type") != "function":
            raise ValueError(f"unsupported tool type {value.get('type')!r}: only 'function' tools are supported")
        return value


class ResponsesNamedToolChoice(_Lenient):
    type: Literal["function"]
    name: str


class ResponseTextFormat(_Lenient):
    """text.format: "text", "json_object", or "json_schema" with the schema inline (flat, unlike chat)."""

    type: Literal["text", "json_object", "json_schema"]
    name: str = "response"
    description: str | None = None
    json_schema: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseTextFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("text.format of type 'json_schema' needs schema")
        return self


class ResponseTextConfig(_Lenient):
    format: ResponseTextFormat | None = None
    verbosity: str | None = None  # accepted: there is no knob for it


class ResponseReasoningParam(_Lenient):
    effort: str | None = None
    summary: str | None = None  # accepted: the reasoning item carries the full text, no summary
    generate_summary: str | None = None

    @field_validator("effort")
    @classmethod
    def _no_effort(cls, effort: str | None) -> str | None:
        if effort is not None:
            raise ValueError("reasoning.effort is not supported (the model's template decides how it thinks)")
        return effort


class ResponsesRequest(_Lenient):
    model: str | None = None
    input: str | list[ResponseInputItem]
    instructions: str | None = None
    previous_response_id: str | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    tools: list[ResponsesFunctionTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | ResponsesNamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    text: ResponseTextConfig | None = None
    reasoning: ResponseReasoningParam | None = None
    stream: bool | None = False
    store: bool | None = True
    truncation: Literal["disabled"] | None = None
    # Accepted and ignored: they do not change the output.
    metadata: dict[str, Any] | None = None
    user: str | None = None
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    include: list[str] | None = None
    stream_options: dict[str, Any] | None = None
    max_tool_calls: int | None = None

    @model_validator(mode="before")
    @classmethod
    def _checked_shape(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        for name, why in _RESPONSES_REFUSED.items():
            if data.get(name) not in (None, False):
                raise ValueError(f"unsupported parameter: {name!r}: {why}")
        if data.get("truncation") == "auto":
            raise ValueError("unsupported parameter: 'truncation': only 'disabled' is supported")
        return data

    @field_validator("input", mode="before")
    @classmethod
    def _items_by_type(cls, items: Any) -> Any:
        """Each item validated by the model its `type` names (a plain union would report every member)."""
        if not isinstance(items, list):
            return items
        models: dict[str, type[BaseModel]] = {
            "message": ResponseInputMessage,
            "function_call": ResponseFunctionCallInput,
            "function_call_output": ResponseFunctionCallOutputInput,
            "reasoning": ResponseReasoningInput,
        }
        out = []
        for i, item in enumerate(items):
            kind = item.get("type", "message") if isinstance(item, dict) else None
            if kind not in models:
                raise ValueError(f"item {i}: unsupported input item type {kind!r}: expected one of {', '.join(models)}")
            try:
                out.append(models[kind].model_validate_json(json.dumps(item)))
            except ValidationError as e:
                first = e.errors(include_url=False)[0]
                where = ".".join(str(p) for p in first["loc"])
                msg = first["msg"].removeprefix("Value error, ")
                raise ValueError(f"item {i}{' ' + where if where else ''}: {msg}") from None
        return out

    @model_validator(mode="after")
    def _tool_choice_needs_tools(self) -> ResponsesRequest:
        choice = self.tool_choice
        if choice is None or choice == "none":
            return self
        if not self.tools:
            raise ValueError("tool_choice needs tools")
        if isinstance(choice, ResponsesNamedToolChoice) and choice.name not in {t.name for t in self.tools}:
            raise ValueError(f"tool_choice names the function {choice.name!r}, which is not among tools")
        return self


ItemStatus = Literal["in_progress", "completed", "incomplete"]


class ResponseOutputText(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = Field(default_factory=list)
    logprobs: list[Any] = Field(default_factory=list)


class ResponseOutputMessage(BaseModel):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    status: ItemStatus = "completed"
    content: list[ResponseOutputText] = Field(default_factory=list)


class ResponseFunctionCall(BaseModel):
    id: str
    type: Literal["function_call"] = "function_call"
    call_id: str
    name: str
    arguments: str  # JSON text of the arguments object
    status: ItemStatus = "completed"


class ResponseReasoningText(BaseModel):
    type: Literal["reasoning_text"] = "reasoning_text"
    text: str


class ResponseReasoningItem(BaseModel):
    id: str
    type: Literal["reasoning"] = "reasoning"
    summary: list[Any] = Field(default_factory=list)
    content: list[ResponseReasoningText] = Field(default_factory=list)
    status: ItemStatus = "completed"


ResponseOutputItem = ResponseOutputMessage | ResponseFunctionCall | ResponseReasoningItem


class InputTokensDetails(BaseModel):
    cached_tokens: int = 0


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails = Field(default_factory=InputTokensDetails)
    output_tokens: int
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int


class IncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens", "content_filter"]


class ResponseObject(BaseModel):
    """A response of /v1/responses (`object: "response"`), as returned, streamed in lifecycle events and stored."""

    id: str
    object: Literal["response"] = "response"
    created_at: int
    model: str
    status: Literal["in_progress", "completed", "incomplete", "failed"]
    incomplete_details: IncompleteDetails | None = None
    error: ErrorInfo | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    output: list[ResponseOutputItem] = Field(default_factory=list)
    parallel_tool_calls: bool = True
    previous_response_id: str | None = None
    reasoning: dict[str, Any] | None = None
    store: bool = False
    temperature: float | None = None
    top_p: float | None = None
    text: dict[str, Any] = Field(default_factory=lambda: {"format": {"type": "text"}})
    tool_choice: str | dict[str, Any] = "auto"
    tools: list[dict[str, Any]] = Field(default_factory=list)
    truncation: Literal["disabled"] = "disabled"
    usage: ResponseUsage | None = None
    metadata: dict[str, Any] | None = None
    user: str | None = None

    @property
    def output_text(self) -> str:
        return "".join(
            part.text for item in self.output if isinstance(item, ResponseOutputMessage) for part in item.content
        )


class ResponseDeleted(BaseModel):
    id: str
    object: Literal["response.deleted"] = "response.deleted"
    deleted: bool = True


# Streamed events: `type` names the event (also the SSE `event:` line), numbered in order from 0.


class ResponseStreamEvent(BaseModel):
    type: str
    sequence_number: int = 0


class ResponseLifecycleEvent(ResponseStreamEvent):
    """response.created, response.in_progress, response.completed, response.incomplete."""

    response: ResponseObject


class ResponseOutputItemEvent(ResponseStreamEvent):
    """response.output_item.added (the item as it starts) and response.output_item.done (as it ended)."""

    output_index: int
    item: ResponseOutputItem


class ResponseContentPartEvent(ResponseStreamEvent):
    """response.content_part.added / .done for a message's output_text part."""

    item_id: str
    output_index: int
    content_index: int = 0
    part: ResponseOutputText


class ResponseTextDeltaEvent(ResponseStreamEvent):
    """response.output_text.delta and response.reasoning_text.delta."""

    item_id: str
    output_index: int
    content_index: int = 0
    delta: str
    logprobs: list[Any] = Field(default_factory=list)


class ResponseTextDoneEvent(ResponseStreamEvent):
    """response.output_text.done and response.reasoning_text.done."""

    item_id: str
    output_index: int
    content_index: int = 0
    text: str
    logprobs: list[Any] = Field(default_factory=list)


class ResponseArgumentsDeltaEvent(ResponseStreamEvent):
    item_id: str
    output_index: int
    delta: str


class ResponseArgumentsDoneEvent(ResponseStreamEvent):
    item_id: str
    output_index: int
    name: str
    arguments: str
