"""Tool calling and structured output end to end: the real server in a subprocess on SmolLM2-135M
(with --enable-auto-tool-choice --tool-call-parser hermes), driven by LangChain's ChatOpenAI and the
openai client as users drive them. Greedy decoding and small max_tokens; one server for the module.

The 135M model is no tool user: forced calls (named, required) are right by construction
(constrained decoding), auto may or may not call, and the tests check the shape either way.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from functools import reduce
from operator import add
from typing import Any

import httpx
import openai
import pytest
from conftest import ServerProcess, launch_server
from pydantic import BaseModel

pytestmark = pytest.mark.slow


class City(BaseModel):
    """A city and the country it is in."""

    name: str
    country: str


WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


@pytest.fixture(scope="module")
def server(smollm2_gguf_path: str, tmp_path_factory: pytest.TempPathFactory) -> ServerProcess:
    s = launch_server(smollm2_gguf_path, tmp_path_factory.mktemp("tools") / "log", "--max-model-len", "2048",
                      "--served-model-name", "smollm2", "--enable-auto-tool-choice", "--tool-call-parser", "hermes")
    yield s
    assert s.stop() == 0, s.log_tail()


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="EMPTY", max_retries=0, timeout=120)


def _chat(server: ServerProcess, **kwargs) -> None:
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(base_url=f"{server.url}/v1", api_key="EMPTY", model="smollm2", temperature=0, max_retries=0,
                      **{"max_tokens": 60, **kwargs})


def _tools() -> None:
    from langchain_core.tools import tool

    @tool
    def get_weather(city: str) -> str:
        """The current weather in a city."""
        return f"22 C and sunny in {city}"

    @tool
    def get_time(timezone: str) -> str:
        """The current time in a timezone, such as Europe/Paris."""
        return "12:00"

    return [get_weather, get_time]


ASK = "What is the weather in Paris?"


def _check_call(call: dict, names: set[str]) -> None:
    assert call["name"] in names, call
    assert isinstance(call["args"], dict)
    key = "city" if call["name"] == "get_weather" else "timezone"
    assert set(call["args"]) == {key} and isinstance(call["args"][key], str), call


# ----- LangChain bind_tools -----

def test_named_tool_choice(server: ServerProcess) -> None:
    ai = _chat(server).bind_tools(_tools(), tool_choice="get_weather").invoke(ASK)
    assert ai.response_metadata["finish_reason"] == "tool_calls", ai
    [call] = ai.tool_calls
    _check_call(call, {"get_weather"})
    assert call["id"] and not ai.invalid_tool_calls


def test_required_tool_choice(server: ServerProcess) -> None:
    ai = _chat(server, max_tokens=100).bind_tools(_tools(), tool_choice="any").invoke(ASK)
    assert ai.response_metadata["finish_reason"] == "tool_calls", ai
    assert ai.tool_calls and not ai.invalid_tool_calls
    for call in ai.tool_calls:
        _check_call(call, {"get_weather", "get_time"})


def test_auto_tool_choice_is_well_formed(server: ServerProcess) -> None:
    ai = _chat(server).bind_tools(_tools()).invoke(ASK)
    finish = ai.response_metadata["finish_reason"]
    if ai.tool_calls:
        assert finish == "tool_calls"
        for call in ai.tool_calls:
            assert call["name"] in {"get_weather", "get_time"}
    else:
        assert finish in ("stop", "length") and isinstance(ai.content, str)
    assert not ai.invalid_tool_calls


def test_streamed_forced_call_aggregates_to_the_same_call(server: ServerProcess) -> None:
    llm = _chat(server).bind_tools(_tools(), tool_choice="get_weather")
    whole = llm.invoke(ASK)
    chunks = list(llm.stream(ASK))
    streamed = reduce(add, chunks)
    assert [(c["name"], c["args"]) for c in streamed.tool_calls] == [(c["name"], c["args"]) for c in whole.tool_calls]
    assert streamed.response_metadata["finish_reason"] == "tool_calls"
    assert not streamed.content


def test_tool_result_round_trip(server: ServerProcess) -> None:
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

    llm = _chat(server, max_tokens=30).bind_tools(_tools())
    messages = [HumanMessage(ASK),
                AIMessage("", tool_calls=[{"name": "get_weather", "args": {"city": "Paris"}, "id": "call_1"}]),
                ToolMessage("22 C and sunny", tool_call_id="call_1")]
    reply = llm.invoke(messages)
    assert isinstance(reply, AIMessage) and (reply.content or reply.tool_calls)
    # The call and its result reached the prompt (SmolLM2's template renders neither: text fallback).
    ids = httpx.post(f"{server.url}/tokenize", json={"messages": [
        {"role": "user", "content": ASK},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "22 C and sunny"}]}).json()["tokens"]
    prompt = httpx.post(f"{server.url}/detokenize", json={"tokens": ids}).json()["prompt"]
    assert '"name": "get_weather"' in prompt and "22 C and sunny" in prompt


# ----- structured output -----

def test_with_structured_output_json_schema(server: ServerProcess) -> None:
    city = _chat(server, max_tokens=100).with_structured_output(City).invoke("Name a city in France.")
    assert isinstance(city, City) and city.name and city.country


def test_with_structured_output_json_mode(server: ServerProcess) -> None:
    result = _chat(server, max_tokens=100).with_structured_output(None, method="json_mode").invoke(
        "Name a city in France, as JSON with the keys name and country.")
    assert isinstance(result, dict)


def test_openai_parse(client: openai.OpenAI) -> None:
    completion = client.chat.completions.parse(model="smollm2", messages=[{"role": "user", "content": "Name a city."}],
                                               response_format=City, max_tokens=100, temperature=0)
    message = completion.choices[0].message
    assert isinstance(message.parsed, City), message
    assert City.model_validate_json(message.content) == message.parsed


def test_response_format_json_object(client: openai.OpenAI) -> None:
    prompt = "Reply with a JSON object whose keys are name and age, for Alice who is 30."
    reply = client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": prompt}],
                                           response_format={"type": "json_object"}, max_tokens=100, temperature=0)
    assert reply.choices[0].finish_reason == "stop"  # the grammar's end, not max_tokens
    assert json.loads(reply.choices[0].message.content) == {"name": "Alice", "age": 30}


@pytest.mark.parametrize("constraint, check", [
    ({"choice": ["yes", "no"]}, lambda text: text in ("yes", "no")),
    ({"regex": "[0-9]{3}-[0-9]{2}"}, lambda text: re.fullmatch("[0-9]{3}-[0-9]{2}", text)),
    ({"grammar": 'root ::= "red" | "green" | "blue"'}, lambda text: text in ("red", "green", "blue")),
    ({"json": WEATHER_SCHEMA}, lambda text: isinstance(json.loads(text)["city"], str)),
])
def test_structured_outputs_extra(client: openai.OpenAI, constraint: dict,
                                  check: Callable[[str], Any]) -> None:
    chat = client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "Answer me."}],
                                          max_tokens=40, temperature=0, extra_body={"structured_outputs": constraint})
    assert check(chat.choices[0].message.content), chat
    completion = client.completions.create(model="smollm2", prompt="The answer is", max_tokens=40, temperature=0,
                                           extra_body={"structured_outputs": constraint})
    assert check(completion.choices[0].text), completion


def test_streamed_structured_output(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "Answer me."}],
                                            max_tokens=40, temperature=0, stream=True,
                                            extra_body={"guided_choice": ["yes", "no"]})
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) in ("yes", "no")


@pytest.mark.parametrize("extra, param", [
    ({"structured_outputs": {"regex": "("}}, "structured_outputs"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}},
     "response_format"),
    ({"structured_outputs": {"grammar": "this is not a grammar"}}, "structured_outputs"),
])
@pytest.mark.parametrize("stream", [False, True])
def test_bad_constraints_are_400_and_serving_goes_on(server: ServerProcess, client: openai.OpenAI, extra: dict,
                                                    param: str, stream: bool) -> None:
    body = {"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "stream": stream,
            **extra}
    response = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    ok = client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    assert ok.choices[0].message.content is not None


def test_default_fields_clients_send(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "hi"}], max_tokens=3, user="u", store=False,
        metadata={"k": "v"}, service_tier="auto", parallel_tool_calls=True, prompt_cache_key="p",
        extra_body={"some_future_field": 1})
    assert reply.choices[0].message.content is not None
