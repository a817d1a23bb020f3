"""POST /v1/responses, GET and DELETE /v1/responses/{id}: OpenAI's Responses API on the chat path.

A request becomes a chat request (input items -> messages, `instructions` -> a system message first,
flat function tools -> chat tools, `text.format` -> response_format, max_output_tokens ->
max_completion_tokens) that `ServingChat.plan` runs as it runs /v1/chat/completions: the same
template rendering, tool_choice handling and tool parser, reasoning parser, constrained decoding and
sampling. The choice's output (choice_output.ChoiceOutput: reasoning, content, tool calls, whole or
as deltas) becomes the output items: a `reasoning` item, a `message` item, `function_call` items.
Errors name the Responses field (`input`, `max_output_tokens`, `text.format`), not the chat one.

Streaming sends OpenAI's event sequence (response.created, response.in_progress, then per item
output_item.added, its content_part / text / arguments deltas and their .done events,
output_item.done, and response.completed or response.incomplete), numbered by sequence_number.

`store` (on by default, as OpenAI) keeps each finished response, with the conversation that led to it,
in a bounded in-memory LRU (`--responses-store-size`, 0: off). `previous_response_id` continues a
stored conversation: its input and output come before the new input (its instructions do not carry
over, as OpenAI). The store is per process and lost on restart.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import AsyncGenerator, Iterator
from contextlib import aclosing, contextmanager
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from vllm_cli.entrypoints.openai.choice_output import Message
from vllm_cli.entrypoints.openai.protocol import (
    APIError,
    ChatCompletionRequest,
    DeltaMessage,
    IncompleteDetails,
    InputTokensDetails,
    ItemStatus,
    OutputTokensDetails,
    ResponseArgumentsDeltaEvent,
    ResponseArgumentsDoneEvent,
    ResponseContentPartEvent,
    ResponseDeleted,
    ResponseFunctionCall,
    ResponseFunctionCallInput,
    ResponseFunctionCallOutputInput,
    ResponseInputItem,
    ResponseInputMessage,
    ResponseLifecycleEvent,
    ResponseObject,
    ResponseOutputItem,
    ResponseOutputItemEvent,
    ResponseOutputMessage,
    ResponseOutputText,
    ResponseReasoningItem,
    ResponseReasoningText,
    ResponsesNamedToolChoice,
    ResponsesRequest,
    ResponseStreamEvent,
    ResponseTextDeltaEvent,
    ResponseTextDoneEvent,
    ResponseUsage,
    now,
    parse_request,
    random_id,
)
from vllm_cli.entrypoints.openai.serving_chat import ChatPlan, ServingChat
from vllm_cli.entrypoints.openai.serving_engine import stream_sse
from vllm_cli.outputs import RequestOutput

DEFAULT_STORE_SIZE = 1000

# Chat's field names in errors -> the Responses field the client sent.
_PARAMS = {
    "messages": "input",
    "max_completion_tokens": "max_output_tokens",
    "max_tokens": "max_output_tokens",
    "response_format": "text.format",
}


def _item_id(prefix: str) -> str:
    return random_id(prefix).replace("-", "_", 1)  # OpenAI's ids: resp_..., msg_..., fc_..., rs_...


# ----- the store -----


@dataclass
class StoredResponse:
    response: ResponseObject
    messages: list[dict]  # the conversation through this response's output, as chat messages (no instructions)


class ResponseStore:
    """The last `max_size` stored responses, least recently used evicted first; 0 stores nothing.
    Per process: lost on restart, not shared between servers."""

    def __init__(self, max_size: int = DEFAULT_STORE_SIZE):
        if max_size < 0:
            raise ValueError(f"the responses store size must be >= 0, got {max_size}")
        self.max_size = max_size
        self._entries: OrderedDict[str, StoredResponse] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.max_size > 0

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, entry: StoredResponse) -> None:
        if not self.enabled:
            return
        self._entries[entry.response.id] = entry
        self._entries.move_to_end(entry.response.id)
        while len(self._entries) > self.max_size:
            self._entries.popitem(last=False)

    def get(self, response_id: str) -> StoredResponse | None:
        entry = self._entries.get(response_id)
        if entry is not None:
            self._entries.move_to_end(response_id)
        return entry

    def delete(self, response_id: str) -> bool:
        return self._entries.pop(response_id, None) is not None


def _not_found(response_id: str) -> APIError:
    return APIError(f"Response with id '{response_id}' not found.", 404, code="response_not_found")


# ----- request -> chat -----


def input_messages(items: str | list[ResponseInputItem]) -> list[dict]:
    """Input items as chat messages: a call joins the assistant message before it (or starts one), a call's
    output is a tool message, reasoning items are left out (templates drop earlier thinking)."""
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    messages: list[dict] = []
    for item in items:
        if isinstance(item, ResponseInputMessage):
            messages.append({"role": item.role, "content": item.text})
        elif isinstance(item, ResponseFunctionCallInput):
            call = {
                "id": item.call_id,
                "type": "function",
                "function": {"name": item.name, "arguments": item.arguments},
            }
            if messages and messages[-1]["role"] == "assistant":
                messages[-1].setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif isinstance(item, ResponseFunctionCallOutputInput):
            messages.append({"role": "tool", "tool_call_id": item.call_id, "content": item.text})
    return messages


def chat_request(req: ResponsesRequest, model: str, messages: list[dict]) -> ChatCompletionRequest:
    """The chat request that does what `req` asks (validated as a chat body, so chat's checks apply)."""
    choice: Any = req.tool_choice
    if isinstance(choice, ResponsesNamedToolChoice):
        choice = {"type": "function", "function": {"name": choice.name}}
    fmt = req.text.format if req.text else None
    response_format: dict | None = None
    if fmt is not None and fmt.type == "json_object":
        response_format = {"type": "json_object"}
    elif fmt is not None and fmt.type == "json_schema":
        schema = {"name": fmt.name, "schema": fmt.json_schema, "description": fmt.description, "strict": fmt.strict}
        response_format = {"type": "json_schema", "json_schema": {k: v for k, v in schema.items() if v is not None}}
    body = {
        "model": model,
        "messages": messages,
        "max_completion_tokens": req.max_output_tokens,
        "temperature": req.temperature,
        "top_p": req.top_p,
        "tools": [
            {"type": "function", "function": t.model_dump(exclude={"type"}, exclude_none=True)} for t in req.tools
        ]
        if req.tools
        else None,
        "tool_choice": choice,
        "parallel_tool_calls": req.parallel_tool_calls,
        "response_format": response_format,
    }
    return parse_request(ChatCompletionRequest, json.dumps({k: v for k, v in body.items() if v is not None}).encode())


@contextmanager
def _responses_params() -> Iterator[None]:
    """Errors raised on the chat request name the Responses field."""
    try:
        yield
    except APIError as e:
        if e.param in _PARAMS:
            e.param = _PARAMS[e.param]
            e.message = e.message.replace("response_format", "text.format")
        raise


# ----- output -> items -----


def output_items(message: Message, status: ItemStatus) -> list[ResponseOutputItem]:
    """The final chat message as output items: reasoning, the message (also when nothing else came, so there
    is always an answer to read), function calls."""
    items: list[ResponseOutputItem] = []
    if message.reasoning_content:
        items.append(
            ResponseReasoningItem(
                id=_item_id("rs"), content=[ResponseReasoningText(text=message.reasoning_content)], status=status
            )
        )
    if message.content or not (items or message.tool_calls):
        items.append(
            ResponseOutputMessage(
                id=_item_id("msg"), content=[ResponseOutputText(text=message.content or "")], status=status
            )
        )
    for call in message.tool_calls:
        items.append(
            ResponseFunctionCall(
                id=_item_id("fc"),
                call_id=call.id,
                name=call.function.name,
                arguments=call.function.arguments,
                status=status,
            )
        )
    return items


def assistant_message(items: list[ResponseOutputItem]) -> dict:
    """The output items as the assistant's chat message, for the stored conversation."""
    text = "".join(part.text for item in items if isinstance(item, ResponseOutputMessage) for part in item.content)
    calls = [
        {"id": item.call_id, "type": "function", "function": {"name": item.name, "arguments": item.arguments}}
        for item in items
        if isinstance(item, ResponseFunctionCall)
    ]
    message: dict[str, Any] = {"role": "assistant", "content": text or None}
    if calls:
        message["tool_calls"] = calls
    return message


class _StreamedItems:
    """The output items of a streamed response, built from the chat choice's deltas, and the events that
    build them. The text item (message or reasoning) that is receiving text stays open until something
    else comes; function calls stay open until the end (argument fragments may still come)."""

    def __init__(self) -> None:
        self.items: list[ResponseOutputItem] = []
        self.sequence_number = 0
        self.text_index: int | None = None  # the open message or reasoning item
        self.calls: dict[int, int] = {}  # the chat call index -> its output index

    def event(self, event: ResponseStreamEvent) -> ResponseStreamEvent:
        event.sequence_number = self.sequence_number
        self.sequence_number += 1
        return event

    def _added(self, item: ResponseOutputItem) -> list[ResponseStreamEvent]:
        self.items.append(item)
        added = ResponseOutputItemEvent(
            type="response.output_item.added", output_index=len(self.items) - 1, item=item.model_copy(deep=True)
        )
        return [self.event(added)]

    def delta(self, delta: DeltaMessage | None) -> list[ResponseStreamEvent]:
        if delta is None:
            return []
        events: list[ResponseStreamEvent] = []
        if delta.reasoning_content:
            events += self._text(ResponseReasoningItem, delta.reasoning_content)
        if delta.content:
            events += self._text(ResponseOutputMessage, delta.content)
        for call in delta.tool_calls or []:
            if call.id is not None:  # a call starts: id and name, maybe the first arguments
                events += self._close_text("completed")
                self.calls[call.index] = len(self.items)
                name = call.function.name if call.function else None
                item = ResponseFunctionCall(
                    id=_item_id("fc"), call_id=call.id, name=name or "", arguments="", status="in_progress"
                )
                events += self._added(item)
            arguments = call.function.arguments if call.function else None
            if arguments and call.index in self.calls:
                index = self.calls[call.index]
                fc = self.items[index]
                assert isinstance(fc, ResponseFunctionCall)
                fc.arguments += arguments
                event = ResponseArgumentsDeltaEvent(
                    type="response.function_call_arguments.delta", item_id=fc.id, output_index=index, delta=arguments
                )
                events.append(self.event(event))
        return events

    def _text(self, kind: type, text: str) -> list[ResponseStreamEvent]:
        events: list[ResponseStreamEvent] = []
        if self.text_index is None or not isinstance(self.items[self.text_index], kind):
            events += self._close_text("completed")
            self.text_index = len(self.items)
            if kind is ResponseOutputMessage:
                message = ResponseOutputMessage(id=_item_id("msg"), status="in_progress")
                events += self._added(message)
                message.content.append(ResponseOutputText(text=""))
                part = ResponseContentPartEvent(
                    type="response.content_part.added",
                    item_id=message.id,
                    output_index=self.text_index,
                    part=ResponseOutputText(text=""),
                )
                events.append(self.event(part))
            else:
                reasoning = ResponseReasoningItem(id=_item_id("rs"), status="in_progress")
                events += self._added(reasoning)
                reasoning.content.append(ResponseReasoningText(text=""))
        item = self.items[self.text_index]
        assert isinstance(item, ResponseOutputMessage | ResponseReasoningItem)
        if text:
            item.content[0].text += text
            name = "response.output_text.delta" if kind is ResponseOutputMessage else "response.reasoning_text.delta"
            delta = ResponseTextDeltaEvent(type=name, item_id=item.id, output_index=self.text_index, delta=text)
            events.append(self.event(delta))
        return events

    def _close_text(self, status: ItemStatus) -> list[ResponseStreamEvent]:
        if self.text_index is None:
            return []
        index, item = self.text_index, self.items[self.text_index]
        self.text_index = None
        assert isinstance(item, ResponseOutputMessage | ResponseReasoningItem)
        text = item.content[0].text
        item.status = status
        if isinstance(item, ResponseOutputMessage):
            events: list[ResponseStreamEvent] = [
                ResponseTextDoneEvent(type="response.output_text.done", item_id=item.id, output_index=index, text=text),
                ResponseContentPartEvent(
                    type="response.content_part.done", item_id=item.id, output_index=index, part=item.content[0]
                ),
            ]
        else:
            events = [
                ResponseTextDoneEvent(
                    type="response.reasoning_text.done", item_id=item.id, output_index=index, text=text
                )
            ]
        events.append(ResponseOutputItemEvent(type="response.output_item.done", output_index=index, item=item))
        return [self.event(e.model_copy(deep=True)) for e in events]

    def close(self, status: ItemStatus) -> list[ResponseStreamEvent]:
        """Every open item done, in output order; an empty message when nothing came at all."""
        events = self._text(ResponseOutputMessage, "") if not self.items else []
        events += self._close_text(status)
        for index in sorted(self.calls.values()):
            fc = self.items[index]
            assert isinstance(fc, ResponseFunctionCall)
            fc.status = status
            done = ResponseArgumentsDoneEvent(
                type="response.function_call_arguments.done",
                item_id=fc.id,
                output_index=index,
                name=fc.name,
                arguments=fc.arguments,
            )
            events.append(self.event(done))
            item_done = ResponseOutputItemEvent(type="response.output_item.done", output_index=index, item=fc)
            events.append(self.event(item_done.model_copy(deep=True)))
        return events


# ----- the endpoint -----


class ServingResponses:
    def __init__(self, chat: ServingChat, store_size: int = DEFAULT_STORE_SIZE):
        self.chat = chat
        self.store = ResponseStore(store_size)

    async def create(self, request: web.Request) -> web.StreamResponse:
        req = await self.chat.parse(ResponsesRequest, request)
        model = self.chat.model_name(req.model)
        conversation = self._history(req.previous_response_id) + input_messages(req.input)
        system = [{"role": "system", "content": req.instructions}] if req.instructions is not None else []
        with _responses_params():
            plan = await self.chat.plan(chat_request(req, model, system + conversation))
            response_id = _item_id("resp")
            outputs = await self.chat.start(plan, response_id)
        tool_choice = req.tool_choice if req.tool_choice is not None else "auto"
        base = ResponseObject(
            id=response_id,
            created_at=now(),
            model=model,
            status="in_progress",
            instructions=req.instructions,
            max_output_tokens=req.max_output_tokens,
            parallel_tool_calls=req.parallel_tool_calls is not False,
            previous_response_id=req.previous_response_id,
            reasoning=req.reasoning.model_dump(exclude_none=True) if req.reasoning else None,
            store=req.store is not False and self.store.enabled,
            temperature=req.temperature,
            top_p=req.top_p,
            text={"format": req.text.format.model_dump(by_alias=True, exclude_none=True)}
            if req.text and req.text.format
            else {"format": {"type": "text"}},
            tool_choice=tool_choice if isinstance(tool_choice, str) else tool_choice.model_dump(),
            tools=[t.model_dump(exclude_none=True) for t in req.tools or []],
            metadata=req.metadata,
            user=req.user,
        )
        if req.stream:
            return await stream_sse(request, self._events(outputs, base, plan, conversation), typed_events=True)
        response = await self._collect(outputs, base, plan, conversation)
        return web.json_response(response.model_dump())

    def _history(self, previous_response_id: str | None) -> list[dict]:
        if previous_response_id is None:
            return []
        if not self.store.enabled:
            raise APIError(
                "previous_response_id needs the response store, which this server has turned off "
                "(--responses-store-size 0): send the whole conversation as input instead",
                param="previous_response_id",
            )
        stored = self.store.get(previous_response_id)
        if stored is None:
            raise APIError(
                f"Previous response with id '{previous_response_id}' not found.",
                404,
                param="previous_response_id",
                code="previous_response_not_found",
            )
        return [dict(m) for m in stored.messages]

    async def _finish(
        self,
        base: ResponseObject,
        items: list[ResponseOutputItem],
        finish_reason: str | None,
        usage: tuple[int, int, int],
        conversation: list[dict],
    ) -> ResponseObject:
        """The finished response (stored when asked): status, output items, usage."""
        input_tokens, output_tokens, cached = usage
        reasoning = "".join(
            part.text for item in items if isinstance(item, ResponseReasoningItem) for part in item.content
        )
        reasoning_tokens = await self.chat.off_loop(self._count_tokens, reasoning) if reasoning else 0
        incomplete = finish_reason == "length"
        response = base.model_copy(
            update={
                "status": "incomplete" if incomplete else "completed",
                "incomplete_details": IncompleteDetails(reason="max_output_tokens") if incomplete else None,
                "output": items,
                "usage": ResponseUsage(
                    input_tokens=input_tokens,
                    input_tokens_details=InputTokensDetails(cached_tokens=cached),
                    output_tokens=output_tokens,
                    output_tokens_details=OutputTokensDetails(reasoning_tokens=min(reasoning_tokens, output_tokens)),
                    total_tokens=input_tokens + output_tokens,
                ),
            }
        )
        if response.store:
            self.store.put(StoredResponse(response, conversation + [assistant_message(items)]))
        return response

    def _count_tokens(self, text: str) -> int:
        return len(self.chat.tokenizer.encode(text, add_special_tokens=False))

    async def _collect(
        self,
        outputs: AsyncGenerator[RequestOutput, None],
        base: ResponseObject,
        plan: ChatPlan,
        conversation: list[dict],
    ) -> ResponseObject:
        texts: list[str] = []
        output_tokens = cached = 0
        finish_reason: str | None = None
        async with aclosing(outputs):
            async for out in outputs:
                cached = max(cached, out.num_cached_tokens)
                for c in out.outputs:
                    texts.append(c.text)
                    output_tokens += len(c.token_ids)
                    finish_reason = c.finish_reason or finish_reason
        status: ItemStatus = "incomplete" if finish_reason == "length" else "completed"
        items = output_items(plan.choices[0].final("".join(texts)), status)
        return await self._finish(base, items, finish_reason, (len(plan.ids), output_tokens, cached), conversation)

    async def _events(
        self,
        outputs: AsyncGenerator[RequestOutput, None],
        base: ResponseObject,
        plan: ChatPlan,
        conversation: list[dict],
    ) -> AsyncGenerator[ResponseStreamEvent, None]:
        stream = _StreamedItems()
        yield stream.event(ResponseLifecycleEvent(type="response.created", response=base))
        yield stream.event(ResponseLifecycleEvent(type="response.in_progress", response=base))
        choice = plan.choices[0]
        output_tokens = cached = 0
        finish_reason: str | None = None
        async with aclosing(outputs):
            async for out in outputs:
                cached = max(cached, out.num_cached_tokens)
                for c in out.outputs:
                    output_tokens += len(c.token_ids)
                    finish_reason = c.finish_reason or finish_reason
                    for event in stream.delta(choice.feed(c.text)):
                        yield event
        for event in stream.delta(choice.finish()):
            yield event
        status: ItemStatus = "incomplete" if finish_reason == "length" else "completed"
        for event in stream.close(status):
            yield event
        response = await self._finish(
            base, stream.items, finish_reason, (len(plan.ids), output_tokens, cached), conversation
        )
        kind = "response.incomplete" if response.status == "incomplete" else "response.completed"
        yield stream.event(ResponseLifecycleEvent(type=kind, response=response))

    async def retrieve(self, request: web.Request) -> web.Response:
        response_id = request.match_info["response_id"]
        stored = self.store.get(response_id)
        if stored is None:
            raise _not_found(response_id)
        return web.json_response(stored.response.model_dump())

    async def delete(self, request: web.Request) -> web.Response:
        response_id = request.match_info["response_id"]
        if not self.store.delete(response_id):
            raise _not_found(response_id)
        return web.json_response(ResponseDeleted(id=response_id).model_dump())
