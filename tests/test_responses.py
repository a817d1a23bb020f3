"""/v1/responses end to end: the real server in a subprocess on SmolLM2-135M, driven by the openai
client's Responses API (create, stream, parse, retrieve, delete) and LangChain's
ChatOpenAI(use_responses_api=True), as users drive them. Greedy decoding and short outputs; one
server for the module, with a store of 3 responses so eviction is cheap to reach.

The 135M model is no tool user: the function-call round trip forces the call with tool_choice
(constrained decoding), then checks that the call's output reaches the prompt and a text answer comes.
"""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from conftest import ServerProcess, launch_server
from pydantic import BaseModel

pytestmark = pytest.mark.slow

MODEL = "smollm2"
STORE_SIZE = 3
WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "The current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


class City(BaseModel):
    name: str
    country: str


@pytest.fixture(scope="module")
def server(smollm2_gguf_path: str, tmp_path_factory: pytest.TempPathFactory) -> ServerProcess:
    s = launch_server(smollm2_gguf_path, tmp_path_factory.mktemp("responses") / "log", "--max-model-len", "2048",
                      "--served-model-name", MODEL, "--responses-store-size", str(STORE_SIZE))
    yield s
    assert s.stop() == 0, s.log_tail()


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="EMPTY", max_retries=0, timeout=600)


def _prompt(server: ServerProcess, messages: list[dict]) -> str:
    """What the chat template makes of `messages` (to compare with what /v1/responses rendered)."""
    ids = httpx.post(f"{server.url}/tokenize", json={"messages": messages}).json()["tokens"]
    return httpx.post(f"{server.url}/detokenize", json={"tokens": ids}).json()["prompt"]


def _error(response: httpx.Response, status: int, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"], error
    assert error["param"] == param, error
    return error


# ----- create -----

def test_create_with_a_string_and_instructions(client: openai.OpenAI) -> None:
    response = client.responses.create(model=MODEL, input="What is the capital of France?",
                                       instructions="Answer in one word.", max_output_tokens=8, temperature=0)
    assert response.object == "response" and response.id.startswith("resp_")
    assert response.status in ("completed", "incomplete")
    assert response.instructions == "Answer in one word."
    [message] = response.output
    assert message.type == "message" and message.role == "assistant" and message.id.startswith("msg_")
    assert response.output_text == message.content[0].text != ""
    usage = response.usage
    assert usage.input_tokens > 10 and 0 < usage.output_tokens <= 8
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.input_tokens_details.cached_tokens >= 0 and usage.output_tokens_details.reasoning_tokens == 0


def test_items_input_equals_string_input(client: openai.OpenAI) -> None:
    as_string = client.responses.create(model=MODEL, input="Say hello.", max_output_tokens=6, temperature=0)
    as_items = client.responses.create(
        model=MODEL, max_output_tokens=6, temperature=0,
        input=[{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Say hello."}]}])
    assert as_items.output_text == as_string.output_text


def test_max_output_tokens_makes_it_incomplete(client: openai.OpenAI) -> None:
    response = client.responses.create(model=MODEL, input="Write a long story about a dragon.", max_output_tokens=3,
                                       temperature=0, store=False)
    assert response.status == "incomplete"
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.usage.output_tokens == 3 and response.output[0].status == "incomplete"
    assert response.store is False


# ----- stream -----

def test_stream_events_in_order_add_up_to_the_final_response(client: openai.OpenAI) -> None:
    with client.responses.stream(model=MODEL, input="Name three colors.", max_output_tokens=12,
                                 temperature=0) as stream:
        events = list(stream)
        final = stream.get_final_response()
    types = [e.type for e in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[2:4] == ["response.output_item.added", "response.content_part.added"]
    assert types[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"]
    assert set(types[4:-4]) == {"response.output_text.delta"}
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    [done] = [e for e in events if e.type == "response.output_text.done"]
    assert deltas == done.text == final.output_text != ""
    whole = client.responses.create(model=MODEL, input="Name three colors.", max_output_tokens=12, temperature=0)
    assert whole.output_text == final.output_text
    assert final.usage.output_tokens == whole.usage.output_tokens


def test_stream_framing_and_the_incomplete_event(server: ServerProcess) -> None:
    body = {"model": MODEL, "input": "Write a long story.", "max_output_tokens": 2, "stream": True}
    text = httpx.post(f"{server.url}/v1/responses", json=body, timeout=600).text
    blocks = [b for b in text.split("\n\n") if b]
    assert "[DONE]" not in text  # the Responses API ends with its last event
    events = []
    for block in blocks:
        event_line, data_line = block.split("\n")
        assert event_line.startswith("event: ") and data_line.startswith("data: "), block
        events.append(json.loads(data_line[6:]))
        assert events[-1]["type"] == event_line[7:]
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert events[-1]["response"]["output"][0]["status"] == "incomplete"


# ----- structured output -----

def test_parse_with_a_pydantic_model(client: openai.OpenAI) -> None:
    response = client.responses.parse(model=MODEL, input="Name a city in France.", text_format=City,
                                      max_output_tokens=60, temperature=0)
    assert isinstance(response.output_parsed, City), response
    assert City.model_validate_json(response.output_text) == response.output_parsed
    assert response.text.format.type == "json_schema"


def test_json_object_format(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model=MODEL, input="Reply with a JSON object whose keys are name and age, for Alice who is 30.",
        text={"format": {"type": "json_object"}}, max_output_tokens=60, temperature=0)
    assert response.status == "completed"
    assert isinstance(json.loads(response.output_text), dict)


# ----- tools -----

def test_function_call_round_trip(server: ServerProcess, client: openai.OpenAI) -> None:
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = client.responses.create(model=MODEL, input=ask, tools=[WEATHER_TOOL], max_output_tokens=40,
                                    tool_choice={"type": "function", "name": "get_weather"}, temperature=0)
    [call] = first.output
    assert call.type == "function_call" and call.name == "get_weather" and call.id.startswith("fc_")
    assert isinstance(json.loads(call.arguments)["city"], str)
    assert first.tool_choice.type == "function" and first.tools[0].name == "get_weather"
    result = {"type": "function_call_output", "call_id": call.call_id, "output": "22 C and sunny"}
    second = client.responses.create(model=MODEL, input=ask + [call.model_dump(), result], tools=[WEATHER_TOOL],
                                     tool_choice="none", max_output_tokens=20, temperature=0)
    assert second.output[0].type == "message" and second.output_text
    # The call and its result reached the prompt (SmolLM2's template renders neither: chat's text fallback).
    prompt = _prompt(server, ask + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call.call_id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}]},
        {"role": "tool", "tool_call_id": call.call_id, "content": "22 C and sunny"}])
    assert '"name": "get_weather"' in prompt and "22 C and sunny" in prompt
    streamed = client.responses.create(model=MODEL, input=ask, tools=[WEATHER_TOOL], max_output_tokens=40,
                                       tool_choice="required", temperature=0, stream=True)
    events = list(streamed)
    arguments = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    [done] = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert done.arguments == arguments and json.loads(arguments)["city"]
    assert events[-1].type == "response.completed" and events[-1].response.output[0].arguments == arguments


# ----- the store -----

def test_previous_response_id_continues_the_conversation(client: openai.OpenAI) -> None:
    first = client.responses.create(model=MODEL, input="My name is Ada.", instructions="Be brief.",
                                    max_output_tokens=8, temperature=0)
    second = client.responses.create(model=MODEL, input="What is my name?", previous_response_id=first.id,
                                     max_output_tokens=8, temperature=0)
    assert second.previous_response_id == first.id
    # The first turn's input and output came before the new input (its instructions did not carry over).
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens - 10
    explicit = client.responses.create(
        model=MODEL, max_output_tokens=8, temperature=0,
        input=[{"role": "user", "content": "My name is Ada."},
               {"role": "assistant", "content": first.output_text},
               {"role": "user", "content": "What is my name?"}])
    assert second.usage.input_tokens == explicit.usage.input_tokens
    assert second.output_text == explicit.output_text


def test_get_and_delete(server: ServerProcess, client: openai.OpenAI) -> None:
    created = client.responses.create(model=MODEL, input="Hi", max_output_tokens=4, temperature=0)
    assert created.store is True
    fetched = client.responses.retrieve(created.id)
    assert fetched.model_dump() == created.model_dump()
    client.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)
    _error(httpx.get(f"{server.url}/v1/responses/{created.id}"), 404)
    _error(httpx.delete(f"{server.url}/v1/responses/resp_nope"), 404)
    body = {"model": MODEL, "input": "Hi", "previous_response_id": "resp_nope", "max_output_tokens": 2}
    _error(httpx.post(f"{server.url}/v1/responses", json=body), 404, "previous_response_id")
    unstored = client.responses.create(model=MODEL, input="Hi", max_output_tokens=2, store=False)
    assert unstored.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)


def test_the_store_evicts_the_least_recently_used(client: openai.OpenAI) -> None:
    ids = [client.responses.create(model=MODEL, input=f"Count to {i}.", max_output_tokens=2).id
           for i in range(STORE_SIZE)]
    client.responses.retrieve(ids[0])  # used: now the most recent
    newest = client.responses.create(model=MODEL, input="One more.", max_output_tokens=2).id
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(ids[1])  # the least recently used went
    for kept in (ids[0], ids[2], newest):
        assert client.responses.retrieve(kept).id == kept


# ----- bad input -----

@pytest.mark.parametrize("body, param", [
    ({"input": [{"type": "input_image", "image_url": "x"}]}, "input"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}, "input"),
    ({"input": "hi", "tools": [{"type": "web_search"}]}, "tools"),
    ({"input": "hi", "tool_choice": "required"}, "tool_choice"),
    ({"input": "hi", "max_output_tokens": 0}, "max_output_tokens"),
    ({"input": "hi", "max_output_tokens": 5000}, "max_output_tokens"),
    ({"input": "hi", "text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "nonsense"}}}},
     "text.format"),
    ({"input": "hi", "background": True}, "background"),
    ({"input": "hi", "reasoning": {"effort": "high"}}, "reasoning"),
    ({}, "input"),
])
def test_bad_requests_are_400_in_openai_shape(server: ServerProcess, body: dict, param: str) -> None:
    _error(httpx.post(f"{server.url}/v1/responses", json={"model": MODEL, **body}, timeout=60), 400, param)


def test_unknown_model_is_404(server: ServerProcess) -> None:
    _error(httpx.post(f"{server.url}/v1/responses", json={"model": "nope", "input": "hi"}), 404, "model")


# ----- LangChain -----

def _langchain(server: ServerProcess, **kwargs):
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(model=MODEL, base_url=f"{server.url}/v1", api_key="EMPTY", use_responses_api=True,
                      temperature=0, max_retries=0, **{"max_tokens": 20, **kwargs})


def test_langchain_invoke(server: ServerProcess) -> None:
    from langchain_core.messages import HumanMessage, SystemMessage

    reply = _langchain(server).invoke([SystemMessage("Answer briefly."), HumanMessage("What is 2 + 2?")])
    assert reply.text and reply.usage_metadata["output_tokens"] > 0
    assert reply.response_metadata["id"].startswith("resp_")


def test_langchain_bind_tools(server: ServerProcess) -> None:
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_core.tools import tool

    @tool
    def get_weather(city: str) -> str:
        """The current weather in a city."""
        return f"22 C and sunny in {city}"

    llm = _langchain(server, max_tokens=40)
    ask = HumanMessage("What is the weather in Paris?")
    called = llm.bind_tools([get_weather], tool_choice="get_weather").invoke([ask])
    [call] = called.tool_calls
    assert call["name"] == "get_weather" and isinstance(call["args"]["city"], str)
    answer = llm.bind_tools([get_weather]).invoke([ask, called, ToolMessage("22 C and sunny", tool_call_id=call["id"])])
    assert answer.text and not answer.tool_calls


# ----- the item builders, without a server -----

def _without_ids(items: list) -> list[dict]:
    return [item.model_dump(exclude={"id", "call_id"}) for item in items]


@pytest.mark.parametrize("size", [1, 3, 7, 1000])
def test_streamed_items_add_up_to_the_whole_output(size: int) -> None:
    """Reasoning (deepseek_r1), text and a hermes tool call, streamed in deltas of `size` characters:
    the events open and close each item in order, and the streamed items equal the non-streamed ones."""
    from vllm_cli.entrypoints.openai.choice_output import ChoiceOutput
    from vllm_cli.entrypoints.openai.reasoning_parsers import ReasoningParserManager
    from vllm_cli.entrypoints.openai.serving_responses import _StreamedItems, output_items
    from vllm_cli.entrypoints.openai.tool_parsers import ToolParserManager

    text = ('The user wants the weather.</think>Let me check. <tool_call>\n{"name": "get_weather", '
            '"arguments": {"city": "Paris"}}\n</tool_call>')
    tools = [{"type": "function", "function": WEATHER_TOOL}]

    def choice() -> ChoiceOutput:
        return ChoiceOutput("auto", tools=tools, tool_parser=ToolParserManager.get_tool_parser("hermes")(None),
                            reasoning_parser=ReasoningParserManager.get_reasoning_parser("deepseek_r1")(None))

    streaming, stream = choice(), _StreamedItems()
    events = []
    for i in range(0, len(text), size):
        events += stream.delta(streaming.feed(text[i:i + size]))
    events += stream.delta(streaming.finish())
    events += stream.close("completed")
    whole = output_items(choice().final(text), "completed")
    assert [item.type for item in whole] == ["reasoning", "message", "function_call"]
    assert _without_ids(stream.items) == _without_ids(whole)
    assert [e.sequence_number for e in events] == list(range(len(events)))
    kinds = [e.type for e in events if not e.type.endswith(".delta")]
    assert kinds == ["response.output_item.added", "response.reasoning_text.done", "response.output_item.done",
                     "response.output_item.added", "response.content_part.added", "response.output_text.done",
                     "response.content_part.done", "response.output_item.done",
                     "response.output_item.added", "response.function_call_arguments.done",
                     "response.output_item.done"]
    assert "".join(e.delta for e in events if e.type == "response.reasoning_text.delta") == "The user wants the weather."
    assert json.loads("".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")) == {
        "city": "Paris"}


def test_input_items_become_chat_messages() -> None:
    from vllm_cli.entrypoints.openai.protocol import ResponsesRequest
    from vllm_cli.entrypoints.openai.serving_responses import input_messages

    req = ResponsesRequest.model_validate_json(json.dumps({"input": [
        {"role": "developer", "content": "Be brief."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Weather "},
                                                        {"type": "input_text", "text": "in Paris?"}]},
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
         "content": [{"type": "output_text", "text": "Checking.", "annotations": []}]},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "22 C"},
    ]}))
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    assert input_messages(req.input) == [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "22 C"},
    ]


def test_a_server_without_a_store() -> None:
    from vllm_cli.entrypoints.openai.protocol import APIError
    from vllm_cli.entrypoints.openai.serving_responses import ResponseStore, ServingResponses

    serving = ServingResponses(chat=None, store_size=0)  # type: ignore[arg-type]  # _history needs no chat
    with pytest.raises(APIError) as info:
        serving._history("resp_1")
    assert info.value.status == 400 and info.value.param == "previous_response_id"
    assert "--responses-store-size 0" in info.value.message
    assert not serving.store.enabled and len(serving.store) == 0
    with pytest.raises(ValueError, match="responses store size"):
        ResponseStore(-1)
