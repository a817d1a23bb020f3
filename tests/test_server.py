"""`vllm-cli serve` end to end: the real server in a subprocess on SmolLM2, driven by real
clients (openai sync/async/streaming, LangChain's ChatOpenAI, raw HTTP), plus a hypothesis
fuzz that must find no 5xx and no hang.

Two servers, each started once per module: `server` (no key, the seed's model name) and
`secured_server` (API key from VLLM_API_KEY, CORS, --chat-template, a short context; its last
test stops it with SIGTERM). Engine failures are provoked in-process with a stand-in
LLMEngine whose step raises.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time
from pathlib import Path

import aiohttp
import httpx
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import ServerProcess, launch_server

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
MESSAGES = [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is the capital of France?"}]
API_KEY = "sk-test-123"
JSON = {"Content-Type": "application/json"}  # for raw bodies: the server answers 415 to any other type
ORIGIN = "https://ok.example"


def _launch(model: str, log: Path, *args: str, env: dict | None = None) -> ServerProcess:
    server = launch_server(model, log, *args, env=env)
    assert httpx.get(f"{server.url}/health").status_code == 200
    return server


@pytest.fixture(scope="module")
def server(smollm2_gguf_path, tmp_path_factory):
    # Several names after one flag, as vLLM spells it; the first is the seed's model name.
    s = _launch(smollm2_gguf_path, tmp_path_factory.mktemp("server") / "log", "--max-model-len", "2048",
                "--served-model-name", "mosaicml/mpt-7b", "smollm2")
    yield s
    assert s.stop() == 0, s.log_tail()


@pytest.fixture(scope="module")
def secured_server(smollm2_gguf_path, tmp_path_factory):
    from vllm_cli.tokenizer import FALLBACK_CHAT_TEMPLATE

    tmp = tmp_path_factory.mktemp("secured")
    (tmp / "chatml.jinja").write_text(FALLBACK_CHAT_TEMPLATE)
    s = _launch(smollm2_gguf_path, tmp / "log", "--max-model-len", "256", "--allowed-origins", ORIGIN,
                "--shutdown-timeout", "20", "--chat-template", str(tmp / "chatml.jinja"),
                env={"VLLM_API_KEY": API_KEY})
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="EMPTY", max_retries=0, timeout=120)


def _metrics(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics").text
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^(vllm:\w+)\{[^}]*\} (\S+)$", text, re.M)}


def _aborted(url: str) -> float:
    m = re.search(r'^vllm:request_success_total\{finished_reason="abort",[^}]*\} (\S+)$',
                  httpx.get(f"{url}/metrics").text, re.M)
    return float(m.group(1)) if m else 0.0


def _assert_error(response: httpx.Response, status: int, param: str | None = None, match: str = "") -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"] and re.search(match, error["message"]), error
    if param is not None:
        assert error["param"] == param, error
    return error


def _sse_events(text: str) -> list:
    """The JSON payloads of an SSE body, checking its framing and the final [DONE]."""
    assert text.endswith("data: [DONE]\n\n"), text[-300:]
    events = [e for e in text.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events), events
    return [json.loads(e[6:]) for e in events[:-1]]


# ----- plain endpoints -----

def test_health_version_models(server, client):
    assert httpx.get(f"{server.url}/health").status_code == 200
    assert httpx.get(f"{server.url}/version").json()["version"]
    models = client.models.list()
    assert [m.id for m in models.data] == ["mosaicml/mpt-7b", "smollm2"]
    assert client.models.retrieve("smollm2").id == "smollm2"
    assert models.data[0].model_extra["max_model_len"] == 2048
    spec = httpx.get(f"{server.url}/openapi.json").json()
    assert {"/v1/chat/completions", "/v1/completions", "/v1/models", "/tokenize", "/metrics"} <= set(spec["paths"])
    assert "ChatCompletionRequest" in spec["components"]["schemas"]


def test_tokenize_detokenize(server):
    ids = httpx.post(f"{server.url}/tokenize", json={"prompt": "Hello, world!"}).json()
    assert ids["count"] == len(ids["tokens"]) > 0 and ids["max_model_len"] == 2048
    text = httpx.post(f"{server.url}/detokenize", json={"tokens": ids["tokens"]}).json()["prompt"]
    assert text == "Hello, world!"
    chat = httpx.post(f"{server.url}/tokenize", json={"messages": MESSAGES}).json()
    assert chat["count"] > ids["count"]


# ----- chat -----

def test_chat_openai_sync(server, client):
    r = client.chat.completions.create(model="smollm2", messages=MESSAGES, max_tokens=12, temperature=0)
    assert r.object == "chat.completion" and r.model == "smollm2" and r.id.startswith("chatcmpl-")
    choice = r.choices[0]
    assert choice.message.role == "assistant" and "Paris" in choice.message.content
    assert choice.finish_reason in ("stop", "length")
    prompt_len = httpx.post(f"{server.url}/tokenize", json={"messages": MESSAGES}).json()["count"]
    assert r.usage.prompt_tokens == prompt_len
    assert r.usage.total_tokens == prompt_len + r.usage.completion_tokens
    assert 1 <= r.usage.completion_tokens <= 12


def test_chat_stream_equals_non_stream(client):
    kwargs = dict(model="mosaicml/mpt-7b", messages=MESSAGES, max_completion_tokens=16, temperature=0)
    full = client.chat.completions.create(**kwargs)
    chunks = list(client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [full.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage == full.usage
    assert len([c for c in chunks if c.choices]) > 3  # deltas arrived token by token


def test_chat_n_stop_seed_logprobs(client):
    r = client.chat.completions.create(model="smollm2", messages=MESSAGES, max_tokens=6, n=3, temperature=1.0,
                                       seed=7, logprobs=True, top_logprobs=3)
    assert [c.index for c in r.choices] == [0, 1, 2]
    for c in r.choices:
        assert 1 <= len(c.logprobs.content) <= 6
        for entry in c.logprobs.content:
            assert len(entry.top_logprobs) == 3 and entry.bytes == list(entry.token.encode())
            assert entry.logprob <= entry.top_logprobs[0].logprob + 1e-6
    assert r.usage.completion_tokens == sum(len(c.logprobs.content) for c in r.choices)
    again = client.chat.completions.create(model="smollm2", messages=MESSAGES, max_tokens=6, n=3, temperature=1.0,
                                           seed=7)
    assert [c.message.content for c in again.choices] == [c.message.content for c in r.choices]
    stopped = client.chat.completions.create(model="smollm2", messages=MESSAGES, max_tokens=20, temperature=0,
                                             stop=["Paris"])
    assert "Paris" not in stopped.choices[0].message.content and stopped.choices[0].finish_reason == "stop"


def test_chat_content_parts_and_continue_final_message(client):
    parts = [{"role": "user", "content": [{"type": "text", "text": "What is the capital"},
                                          {"type": "text", "text": "of France?"}]}]
    r = client.chat.completions.create(model="smollm2", messages=parts, max_tokens=8, temperature=0)
    assert r.choices[0].message.content
    r = client.chat.completions.create(
        model="smollm2", max_tokens=5, temperature=0,
        messages=MESSAGES + [{"role": "assistant", "content": "The capital of France is"}],
        extra_body={"continue_final_message": True, "add_generation_prompt": False})
    assert "Paris" in r.choices[0].message.content


def test_openai_async_concurrent(server):
    async def main():
        async with openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="EMPTY", max_retries=0) as aclient:
            async def streamed(i: int) -> str:
                stream = await aclient.completions.create(model="smollm2", prompt=f"{i} + {i} =", max_tokens=4,
                                                          temperature=0, stream=True)
                return "".join([c.choices[0].text async for c in stream])

            chats = [aclient.chat.completions.create(model="smollm2", messages=MESSAGES, max_tokens=4)
                     for _ in range(6)]
            return await asyncio.gather(*chats, *(streamed(i) for i in range(6)))

    results = asyncio.run(main())
    assert all(r.choices[0].message.content for r in results[:6])
    assert all(isinstance(t, str) and t for t in results[6:])


# ----- completions -----

def test_completions_prompt_forms(server, client):
    one = client.completions.create(model="smollm2", prompt="The capital of France is", max_tokens=5,
                                    temperature=0)
    assert one.object == "text_completion" and one.choices[0].finish_reason == "length"
    assert one.usage.completion_tokens == 5
    ids = httpx.post(f"{server.url}/tokenize", json={"prompt": "The capital of France is"}).json()["tokens"]
    by_ids = client.completions.create(model="smollm2", prompt=ids, max_tokens=5, temperature=0)
    assert by_ids.choices[0].text == one.choices[0].text and by_ids.usage.prompt_tokens == len(ids)
    many = client.completions.create(model="smollm2", prompt=["The capital of France is", "1, 2, 3,"],
                                     max_tokens=5, temperature=0, n=2)
    assert [c.index for c in many.choices] == [0, 1, 2, 3]
    assert many.choices[0].text == many.choices[1].text == one.choices[0].text
    assert many.usage.completion_tokens == 20
    nested = client.completions.create(model="smollm2", prompt=[ids, ids[:3]], max_tokens=2, temperature=0)
    assert len(nested.choices) == 2 and nested.usage.prompt_tokens == len(ids) + 3


def test_completions_echo_logprobs_stream(client):
    prompt = "The capital of France is"
    r = client.completions.create(model="smollm2", prompt=prompt, max_tokens=4, temperature=0, echo=True,
                                  logprobs=2)
    choice = r.choices[0]
    assert choice.text.startswith(prompt)
    lp = choice.logprobs
    assert lp.token_logprobs[0] is None and len(lp.tokens) == r.usage.prompt_tokens + 4
    assert "".join(lp.tokens) == choice.text and lp.text_offset[1] == len(lp.tokens[0])
    assert all(len(top) >= 2 for top in lp.top_logprobs[1:])
    chunks = list(client.completions.create(model="smollm2", prompt=prompt, max_tokens=4, temperature=0,
                                            echo=True, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == choice.text
    assert chunks[-1].usage.completion_tokens == 4


def test_stop_strings_and_extras(client):
    r = client.completions.create(model="smollm2", prompt="1, 2, 3, 4,", max_tokens=30, temperature=0,
                                  stop=[" 7"], extra_body={"include_stop_str_in_output": True, "top_k": 5,
                                                           "min_p": 0.01, "repetition_penalty": 1.0})
    assert r.choices[0].text.endswith(" 7") and r.choices[0].finish_reason == "stop"
    assert r.choices[0].model_extra["stop_reason"] == " 7"
    r = client.completions.create(model="smollm2", prompt="Hi", max_tokens=6, temperature=0,
                                  extra_body={"min_tokens": 6, "ignore_eos": True})
    assert r.usage.completion_tokens == 6


# ----- LangChain: the seed scenario, unchanged -----

def test_langchain_seed(server):
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
    from langchain_core.prompts.chat import (ChatPromptTemplate, HumanMessagePromptTemplate,
                                             SystemMessagePromptTemplate)
    from langchain_openai import ChatOpenAI

    chat = ChatOpenAI(model="mosaicml/mpt-7b", openai_api_key="EMPTY", openai_api_base=f"{server.url}/v1",
                      max_tokens=5, temperature=0)
    messages = [
        SystemMessage(content="You are a helpful assistant that translates English to Italian."),
        HumanMessage(content="Translate the following sentence from English to Italian: I love programming."),
    ]
    reply = chat.invoke(messages)
    assert isinstance(reply, AIMessage) and reply.content
    assert reply.usage_metadata["output_tokens"] == 5

    template = "You are a helpful assistant that translates {input_language} to {output_language}."
    system_message_prompt = SystemMessagePromptTemplate.from_template(template)
    human_message_prompt = HumanMessagePromptTemplate.from_template("{text}")
    chat_prompt = ChatPromptTemplate.from_messages([system_message_prompt, human_message_prompt])
    reply = chat.invoke(chat_prompt.format_prompt(input_language="English", output_language="Italian",
                                                  text="I love programming.").to_messages())
    assert isinstance(reply, AIMessage) and reply.content
    streamed = "".join(chunk.content for chunk in chat.stream(messages))
    assert streamed == chat.invoke(messages).content


# ----- bad input -----

CHAT = "/v1/chat/completions"
OK_CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.mark.parametrize("path, body, status, param, match", [
    (CHAT, b'{"messages": [', 400, None, "malformed JSON"),
    (CHAT, b"[]", 400, None, "object"),
    (CHAT, {}, 400, "messages", "required"),
    (CHAT, {"messages": []}, 400, "messages", ""),
    (CHAT, {**OK_CHAT, "temperature": -0.5}, 400, "temperature", ""),
    (CHAT, {**OK_CHAT, "temperature": "hot"}, 400, "temperature", "number"),
    (CHAT, b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}', 400, "temperature", "finite"),
    (CHAT, {**OK_CHAT, "top_p": 1.5}, 400, "top_p", ""),
    (CHAT, {**OK_CHAT, "top_p": 0}, 400, "top_p", ""),
    (CHAT, {**OK_CHAT, "max_tokens": 0}, 400, "max_tokens", ""),
    (CHAT, {**OK_CHAT, "n": 0}, 400, "n", ""),
    (CHAT, {**OK_CHAT, "max_tokens": 5000}, 400, "max_tokens", r"maximum context length is 2048 tokens\. However"),
    (CHAT, {**OK_CHAT, "min_tokens": 5}, 400, "min_tokens", "max_tokens"),
    (CHAT, {**OK_CHAT, "logit_bias": {"999999": 1}}, 400, "logit_bias", ""),
    (CHAT, {**OK_CHAT, "top_logprobs": 2}, 400, None, "logprobs"),
    (CHAT, {**OK_CHAT, "tools": [{"type": "function"}]}, 400, "tools", "function"),
    (CHAT, {**OK_CHAT, "functions": [{"name": "f"}]}, 400, "functions", "unsupported parameter"),
    (CHAT, {**OK_CHAT, "stream_options": {"include_usage": True}}, 400, None, "stream"),
    (CHAT, {"messages": [{"role": "function", "content": "42"}]}, 400, "messages", "tool"),
    (CHAT, {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     400, "messages", "only 'text'"),
    (CHAT, {**OK_CHAT, "model": "gpt-4"}, 404, "model", "does not exist"),
    ("/v1/completions", {"prompt": list(range(3000))}, 400, "prompt", "maximum context length"),
    ("/v1/completions", {"prompt": [60000]}, 400, "prompt", ""),
    ("/v1/completions", {"prompt": ""}, 400, "prompt", "empty"),
    ("/v1/completions", {"prompt": "hi", "suffix": "x"}, 400, "suffix", "unsupported"),
    ("/v1/completions", {"prompt": "hi", "logprobs": 50}, 400, "logprobs", ""),
    ("/detokenize", {"tokens": [-1]}, 400, "tokens", ""),
    ("/v1/nothing", {}, 404, None, "Not Found"),
])
def test_bad_requests(server, path, body, status, param, match):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    _assert_error(httpx.post(server.url + path, content=content, headers=JSON), status, param, match)


def test_wrong_method_and_body_too_large(server):
    _assert_error(httpx.get(f"{server.url}/v1/completions"), 405)
    huge = json.dumps({"prompt": "x" * (11 * 2**20)}).encode()
    _assert_error(httpx.post(f"{server.url}/v1/completions", content=huge, headers=JSON), 413, match="body")
    assert httpx.get(f"{server.url}/health").status_code == 200


# ----- faults and load -----

def test_client_disconnect_frees_kv_blocks(server):
    async def main():
        async with aiohttp.ClientSession() as session:
            body = {"model": "smollm2", "prompt": "Once upon a time", "max_tokens": 1000, "ignore_eos": True,
                    "stream": True, "n": 2}
            response = await session.post(f"{server.url}/v1/completions", json=body)
            lines = 0
            async for line in response.content:
                lines += line.startswith(b"data: ")
                if lines == 6:
                    break
            busy = _metrics(server.url)
            response.close()  # hang up mid-stream
            # ... and a non-streamed request whose client gives up.
            with pytest.raises(TimeoutError):
                await session.post(f"{server.url}/v1/completions", json={**body, "stream": False},
                                   timeout=aiohttp.ClientTimeout(total=0.5))
            return busy

    aborted_before = _aborted(server.url)
    busy = asyncio.run(main())
    assert busy["vllm:num_requests_running"] == 1 and busy["vllm:kv_cache_usage_perc"] > 0  # one request, n=2
    deadline = time.monotonic() + 10
    while (m := _metrics(server.url))["vllm:num_requests_running"] or m["vllm:kv_cache_usage_perc"]:
        assert time.monotonic() < deadline, m
        time.sleep(0.1)
    assert m["vllm:num_requests_waiting"] == 0
    assert _aborted(server.url) == aborted_before + 4  # two choices of each request


def test_hundreds_of_concurrent_requests(server):
    async def one(session: aiohttp.ClientSession, i: int) -> tuple[int, str]:
        if i % 5 == 0:
            body, path = {"prompt": f"Count: {i},", "max_tokens": 3, "stream": True}, "/v1/completions"
        elif i % 17 == 0:
            body, path = {"messages": [], "max_tokens": 3}, CHAT  # invalid: answered, not dropped
        else:
            body, path = {"messages": [{"role": "user", "content": f"Say {i}."}], "max_tokens": 3}, CHAT
        async with session.post(server.url + path, json=body) as response:
            return response.status, await response.text()

    async def main():
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=150)) as session:
            return await asyncio.gather(*(one(session, i) for i in range(200)))

    results = asyncio.run(main())
    statuses = [status for status, _ in results]
    assert statuses.count(400) == len([i for i in range(200) if i % 17 == 0 and i % 5])
    assert statuses.count(200) + statuses.count(400) == 200
    for i, (status, text) in enumerate(results):
        if status == 200 and i % 5 == 0:
            assert not any("error" in e for e in _sse_events(text))
    assert _metrics(server.url)["vllm:num_requests_running"] == 0


def test_engine_failure_is_a_500_and_serving_goes_on():
    """An LLMEngine stand-in whose step raises: the real AsyncEngine reports the failure to the
    request, the server answers 500 (or an SSE error event) and the next request succeeds."""
    from aiohttp.test_utils import TestClient, TestServer

    from vllm_cli.config import EngineArgs
    from vllm_cli.engine.async_engine import AsyncEngine
    from vllm_cli.engine.llm_engine import EngineStats, LLMEngine
    from vllm_cli.entrypoints.openai.api_server import build_app
    from vllm_cli.outputs import CompletionOutput, RequestOutput

    class FlakyEngine(LLMEngine):
        """Just enough engine for AsyncEngine and the server; step() fails while `fail` is set."""

        def __init__(self):
            self.tokenizer, self.args, self.model_name, self.served_model_names = None, EngineArgs(), "flaky", ["flaky"]
            self.max_model_len, self.vocab_size, self.kv_cache_tokens = 64, 100, 64
            self.runner_kind = "generate"
            self.requests: dict[str, list[int]] = {}
            self.fail = True

        def add_request(self, request_id, prompt, params=None, prompt_token_ids=None, pooling_params=None):
            self.requests[request_id] = prompt_token_ids

        def step(self):
            if self.fail:
                raise RuntimeError("boom")
            done = [RequestOutput(rid, None, ids, [CompletionOutput(0, "ok", [5], finish_reason="length")], True)
                    for rid, ids in self.requests.items()]
            self.requests.clear()
            return done

        def abort_request(self, request_ids):
            for request_id in [request_ids] if isinstance(request_ids, str) else request_ids:
                self.requests.pop(request_id, None)

        def stats(self):
            return EngineStats(len(self.requests), 0, 0.0, 4, 0, 0, 0, 0, 0)

    async def main():
        engine = FlakyEngine()
        async_engine = AsyncEngine(engine)
        try:
            async with TestClient(TestServer(build_app(async_engine))) as http:
                body = {"prompt": [1, 2, 3], "max_tokens": 1}
                failed = await http.post("/v1/completions", json=body)
                assert failed.status == 500
                error = (await failed.json())["error"]
                assert "boom" in error["message"] and error["type"] == "server_error"
                streamed = await http.post("/v1/completions", json={**body, "stream": True})
                events = _sse_events(await streamed.text())
                assert "boom" in events[-1]["error"]["message"]
                engine.fail = False
                ok = await http.post("/v1/completions", json=body)
                assert ok.status == 200 and (await ok.json())["choices"][0]["text"] == "ok"
        finally:
            async_engine.shutdown()

    asyncio.run(main())


# ----- fuzz: no 5xx, no hang -----
# Bodies are valid with a few optional fields, and one time in three one field is replaced by
# an invalid value (or an unknown field is added): the engine sees many valid parameter mixes,
# the validation every kind of bad value. Valid values stay small (at most 3 choices of 4
# tokens) and invalid ones far out of range, so that no example turns into a long generation.

_FLOAT = st.floats(allow_nan=False, allow_infinity=False)  # what JSON can carry
_ANY = st.recursive(st.none() | st.booleans() | st.integers(-3, 10**6) | _FLOAT | st.text(max_size=4),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                                max_size=3),
                    max_leaves=6)
_NOT_INT = st.text(max_size=3) | st.booleans() | _FLOAT | st.lists(st.integers(), max_size=2)  # strict: 2.0 is no int
_NOT_NUMBER = st.text(max_size=3) | st.booleans() | st.lists(_FLOAT, max_size=2) | st.dictionaries(st.text(), _FLOAT)
_NOT_BOOL = st.integers() | st.text(max_size=3) | st.none()
_TOKEN = st.integers(0, 49_151)
_MAX_TOKENS = (st.integers(1, 4), st.integers(-5, 0) | st.integers(3000, 2**70) | _NOT_INT)
_COMMON = {  # field: (valid values, invalid values)
    "model": (st.sampled_from(["smollm2", "mosaicml/mpt-7b"]), st.just("nope") | _ANY.filter(lambda v: v is not None)),
    "n": (st.integers(1, 3), st.integers(-2, 0) | st.integers(129, 10**9) | _NOT_INT),
    "temperature": (st.floats(0, 2), st.floats(-5, -1e-6) | _NOT_NUMBER),
    "top_p": (st.floats(0, 1, exclude_min=True), st.floats(1.001, 5) | st.floats(-1, 0) | _NOT_NUMBER),
    "top_k": (st.integers(-1, 100_000), st.integers(-10, -2) | _NOT_INT),
    "min_p": (st.floats(0, 1), st.floats(1.001, 3) | st.floats(-2, -0.001)),
    "presence_penalty": (st.floats(-2, 2), st.floats(2.001, 10) | _NOT_NUMBER),
    "frequency_penalty": (st.floats(-2, 2), st.floats(-10, -2.001) | _NOT_NUMBER),
    "repetition_penalty": (st.floats(0.01, 10) | st.floats(10, 1e6), st.floats(-1, 0)),
    "seed": (st.integers(-(2**63), 2**64 - 1), st.integers(2**64, 2**70) | _NOT_INT),
    "stop": (st.text(min_size=1, max_size=3) | st.lists(st.text(min_size=1, max_size=3), max_size=3),
             st.just("") | st.lists(st.just(""), min_size=1, max_size=2) | st.integers()),
    "stop_token_ids": (st.lists(st.integers(0, 60_000), max_size=3), st.lists(st.integers(-5, -1), min_size=1)),
    "logit_bias": (st.dictionaries(_TOKEN.map(str), st.floats(-1e6, 1e6), max_size=3),
                   st.dictionaries(st.sampled_from(["-1", "x", "99999"]), _FLOAT, min_size=1, max_size=2)),
    "min_tokens": (st.integers(0, 1), st.integers(5, 100) | st.integers(-5, -1)),
    "ignore_eos": (st.booleans(), _NOT_BOOL),
    "skip_special_tokens": (st.booleans(), _NOT_BOOL),
    "spaces_between_special_tokens": (st.booleans(), _NOT_BOOL),
    "include_stop_str_in_output": (st.booleans(), _NOT_BOOL),
    "stream": (st.booleans(), _NOT_BOOL),
    "user": (st.text(max_size=5), st.integers()),
}
_TEXT_PART = st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=8)})
_MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["system", "developer", "user", "assistant"]),
                                  "content": st.text(max_size=20) | st.lists(_TEXT_PART, min_size=1, max_size=2)},
                                 optional={"name": st.text(max_size=4)})
_BAD_MESSAGE = (st.fixed_dictionaries({"role": st.sampled_from(["tool", "function", "robot"]) | _ANY,
                                       "content": st.text(max_size=5)})
                | st.fixed_dictionaries({"role": st.just("user"), "content": st.lists(st.fixed_dictionaries(
                    {"type": st.sampled_from(["image_url", "audio", "text"]), "image_url": _ANY}), min_size=1)})
                | _ANY)
_CHAT_FIELDS = {
    **_COMMON,
    "messages": (st.lists(_MESSAGE, min_size=1, max_size=3), st.lists(_BAD_MESSAGE, max_size=2) | _ANY),
    "max_tokens": _MAX_TOKENS,
    "max_completion_tokens": _MAX_TOKENS,
    "logprobs": (st.booleans(), _NOT_BOOL),
    "top_logprobs": (st.integers(0, 20), st.integers(21, 100) | st.integers(-5, -1)),
    "add_generation_prompt": (st.booleans(), _NOT_BOOL),
    "continue_final_message": (st.booleans(), _NOT_BOOL),
    "chat_template_kwargs": (st.dictionaries(st.text(max_size=6), _ANY, max_size=2), _NOT_BOOL),
}
_PROMPT = (st.text(min_size=1, max_size=20) | st.lists(_TOKEN, min_size=1, max_size=5)
           | st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=3)
           | st.lists(st.lists(_TOKEN, min_size=1, max_size=4), min_size=1, max_size=3))
_COMPLETION_FIELDS = {
    **_COMMON,
    "prompt": (_PROMPT, st.just("") | st.just([]) | st.lists(st.integers(49_152, 10**9), min_size=1, max_size=2)
               | st.lists(st.just([]), min_size=1, max_size=2) | _ANY),
    "max_tokens": _MAX_TOKENS,
    "echo": (st.booleans(), _NOT_BOOL),
    "logprobs": (st.integers(0, 20), st.integers(21, 100) | st.integers(-5, -1) | _NOT_INT),
}


@st.composite
def _bodies(draw, fields: dict, required: tuple[str, ...]) -> dict:
    body = {name: draw(fields[name][0]) for name in required}
    for name in draw(st.sets(st.sampled_from(sorted(set(fields) - set(required))), max_size=6)):
        body[name] = draw(fields[name][0])
    mutation = draw(st.integers(0, 5))
    if mutation < 2:
        name = draw(st.sampled_from(sorted(fields)))
        body[name] = draw(fields[name][1])
    elif mutation == 2:
        body["not_a_field"] = draw(_ANY)
    if body.get("stream") is True and draw(st.booleans()):
        body["stream_options"] = {"include_usage": draw(st.booleans())}
    return body


def _check_fuzzed(response: httpx.Response, body) -> None:
    assert response.status_code in (200, 400, 404), (body, response.status_code, response.text)
    if response.status_code != 200:
        _assert_error(response, response.status_code)
    elif response.headers["content-type"].startswith("text/event-stream"):
        events = _sse_events(response.text)
        assert events and not any("error" in e for e in events), (body, response.text)
    elif response.url.path == "/tokenize":
        assert isinstance(response.json()["tokens"], list)
    elif response.url.path == "/detokenize":
        assert isinstance(response.json()["prompt"], str)
    else:
        result = response.json()
        assert all(c["finish_reason"] in ("stop", "length") for c in result["choices"]), result
        usage = result["usage"]
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


_FUZZ = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True,
                 database=None)


@_FUZZ
@given(body=_bodies(_CHAT_FIELDS, ("messages", "max_tokens")))
def test_fuzz_chat(server, body):
    _check_fuzzed(httpx.post(f"{server.url}{CHAT}", json=body, timeout=60), body)


@_FUZZ
@given(body=_bodies(_COMPLETION_FIELDS, ("prompt", "max_tokens")))
def test_fuzz_completions(server, body):
    _check_fuzzed(httpx.post(f"{server.url}/v1/completions", json=body, timeout=60), body)


def _json(strategy) -> st.SearchStrategy[bytes]:
    return strategy.map(lambda v: json.dumps(v).encode())


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(path=st.sampled_from([CHAT, "/v1/completions", "/tokenize", "/detokenize"]),
       body=st.binary(max_size=40) | _json(_ANY)
       | _json(st.fixed_dictionaries({"tokens": st.lists(st.integers(-10, 10**6), max_size=4)}))
       | _json(st.fixed_dictionaries({"prompt": st.text(max_size=10)}, optional={"add_special_tokens": _ANY}))
       | _json(st.fixed_dictionaries({"messages": st.lists(_MESSAGE | _BAD_MESSAGE, max_size=2)})))
def test_fuzz_raw_bodies(server, path, body):
    _check_fuzzed(httpx.post(server.url + path, content=body, headers=JSON, timeout=60), body)


# ----- API key, CORS, shutdown (the secured server) -----

def test_api_key(secured_server):
    url = secured_server.url
    for path in ("/health", "/metrics", "/version"):
        assert httpx.get(url + path).status_code == 200, path
    _assert_error(httpx.get(f"{url}/v1/models"), 401)
    error = _assert_error(httpx.post(f"{url}{CHAT}", json=OK_CHAT, headers={"Authorization": "Bearer nope"}), 401)
    assert error["code"] == "invalid_api_key"
    _assert_error(httpx.post(f"{url}/tokenize", json={"prompt": "x"}), 401)
    keyed = openai.OpenAI(base_url=f"{url}/v1", api_key=API_KEY, max_retries=0)
    assert keyed.chat.completions.create(model=keyed.models.list().data[0].id, messages=MESSAGES,
                                         max_tokens=2).choices[0].message.content is not None
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{url}/v1", api_key="EMPTY", max_retries=0).models.list()


def test_chat_template_flag(secured_server):
    """--chat-template (here the ChatML fallback, as for a base model) replaces the tokenizer's."""
    assert "chat template: chat template from " in secured_server.log_tail()
    headers = {"Authorization": f"Bearer {API_KEY}"}
    ids = httpx.post(f"{secured_server.url}/tokenize", json={"messages": [{"role": "user", "content": "hi"}]},
                     headers=headers).json()["tokens"]
    text = httpx.post(f"{secured_server.url}/detokenize", json={"tokens": ids}, headers=headers).json()["prompt"]
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    reply = httpx.post(f"{secured_server.url}{CHAT}", headers=headers, json={
        "messages": [{"role": "user", "content": "hi"}], "max_tokens": 30, "temperature": 0}).json()
    assert "<|im_end|>" not in reply["choices"][0]["message"]["content"]


def test_cors(secured_server):
    url = secured_server.url
    preflight = httpx.options(f"{url}{CHAT}", headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert "authorization" in preflight.headers["access-control-allow-headers"]
    denied = httpx.options(f"{url}{CHAT}", headers={"Origin": "https://evil.example",
                                                    "Access-Control-Request-Method": "POST"})
    assert denied.status_code == 403 and "access-control-allow-origin" not in denied.headers
    headers = {"Origin": ORIGIN, "Authorization": f"Bearer {API_KEY}"}
    stream = httpx.post(f"{url}{CHAT}", json={**OK_CHAT, "stream": True}, headers=headers)
    assert stream.headers["access-control-allow-origin"] == ORIGIN
    assert httpx.get(f"{url}/v1/models", headers={"Origin": ORIGIN}).headers["access-control-allow-origin"] == ORIGIN
    assert "access-control-allow-origin" not in httpx.get(f"{url}/health",
                                                          headers={"Origin": "https://evil.example"}).headers


def test_sigterm_finishes_in_flight_requests_then_exits_0(secured_server):
    """Last test of the secured server: SIGTERM mid-stream; the stream still completes."""
    body = {"prompt": "Once upon a time", "max_tokens": 40, "ignore_eos": True, "stream": True}
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.stream("POST", f"{secured_server.url}/v1/completions", json=body, headers=headers,
                      timeout=60) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
        secured_server.proc.send_signal(signal.SIGTERM)
        rest = [line for line in lines if line]
    assert rest[-1] == "data: [DONE]"
    events = [json.loads(line[6:]) for line in rest if line.startswith("data: {")]
    assert events[-1]["choices"][0]["finish_reason"] == "length"
    assert secured_server.proc.wait(30) == 0
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{secured_server.url}/health")
    assert "Server stopped" in secured_server.log_tail()
