"""Tool calling, structured output and reasoning on the server side, without an engine: the real
aiohttp app (build_app) on a scripted stand-in engine that records the SamplingParams each request
gets and answers with set text. Covers request -> structured_outputs for every response_format /
structured_outputs / guided_* / tool_choice variant, the reply's tool_calls (whole and streamed),
tool messages and assistant tool_calls through SmolLM2's chat template, ignored and refused fields.
The same paths against the real model: tests/test_tools_server.py."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from vllm_cli.entrypoints.openai.api_server import STATE, ParserOptions, build_app
from vllm_cli.entrypoints.openai.choice_output import ChoiceOutput, required_tools_schema
from vllm_cli.entrypoints.openai.reasoning_parsers import ReasoningParserManager
from vllm_cli.entrypoints.openai.tool_parsers import ToolParserManager
from vllm_cli.outputs import CompletionOutput, RequestOutput
from vllm_cli.sampling_params import SamplingParams, StructuredOutputsParams
from vllm_cli.tokenizer import render_chat_prompt

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
USER = [{"role": "user", "content": "Weather in Paris?"}]
CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"


# ----- a scripted engine -----

class _Engine:
    """What the server reads of an LLMEngine."""

    def __init__(self, tokenizer: Any):
        from vllm_cli.config import EngineArgs

        self.tokenizer, self.args = tokenizer, EngineArgs()
        self.model_name, self.served_model_names = "smollm2", ["smollm2"]
        self.max_model_len, self.vocab_size, self.kv_cache_tokens = 2048, len(tokenizer), 2048
        self.runner_kind = "generate"

    def process_prompt(self, prompt: Any) -> tuple[str | None, list[int]]:
        return (prompt, self.tokenizer.encode(prompt)) if isinstance(prompt, str) else (None, list(prompt))

    def validate_params(self, params: SamplingParams) -> None:
        pass


@dataclass
class ScriptedEngine:
    """An AsyncEngine stand-in: every request gets `script` (text pieces, one per output), and its
    SamplingParams and prompt are kept. A regex "(" is refused as the real engine does."""

    engine: _Engine
    script: list[str] = field(default_factory=lambda: ["Hello", " there"])
    params: list[SamplingParams] = field(default_factory=list)
    prompts: list[list[int]] = field(default_factory=list)
    is_running: bool = True

    async def generate(self, prompt: Any, params: SamplingParams, request_id: str,
                       prompt_token_ids: list[int] | None = None) -> Any:
        self.params.append(params)
        self.prompts.append(prompt_token_ids or [])
        so = params.structured_outputs
        if so is not None and so.regex == "(":
            raise ValueError("invalid regular expression '(': missing )")
        for k, piece in enumerate(self.script):
            last = k == len(self.script) - 1
            yield RequestOutput(request_id, None, prompt_token_ids or [],
                                [CompletionOutput(i, piece, [1], finish_reason="stop" if last else None)
                                 for i in range(params.n)], last)

    def stats(self) -> Any:
        from vllm_cli.engine.llm_engine import EngineStats

        return EngineStats(0, 0, 0.0, 4, 0, 0, 0, 0, 0)


def _call(engine: ScriptedEngine, requests: list[tuple[str, dict]], parsers: ParserOptions | None = None,
          tool_parser: type | None = None, reasoning_parser: type | None = None) -> list[tuple[int, Any]]:
    """Send each (path, body); returns (status, JSON body or SSE events) for each."""

    async def main() -> list[tuple[int, Any]]:
        app = build_app(engine, parsers=parsers)  # type: ignore[arg-type]
        chat = app[STATE].chat
        if tool_parser is not None:
            chat.tool_parser, chat.enable_auto_tools = tool_parser, True
        chat.reasoning_parser = reasoning_parser
        out = []
        async with TestClient(TestServer(app)) as http:
            for path, body in requests:
                response = await http.post(path, json=body)
                text = await response.text()
                if body.get("stream") and response.status == 200:
                    assert text.endswith("data: [DONE]\n\n"), text
                    events = [json.loads(e[6:]) for e in text.split("\n\n") if e and e != "data: [DONE]"]
                    out.append((response.status, events))
                else:
                    out.append((response.status, json.loads(text)))
        return out

    return asyncio.run(main())


@pytest.fixture
def engine(smollm2_tokenizer: Any) -> ScriptedEngine:
    return ScriptedEngine(_Engine(smollm2_tokenizer))


def _aggregate(events: list[dict]) -> dict:
    """Streamed chat chunks of choice 0 folded the way the openai/LangChain clients fold them."""
    content, reasoning, calls, finish = "", "", {}, None
    for event in events:
        for choice in event["choices"]:
            delta = choice["delta"]
            content += delta.get("content") or ""
            reasoning += delta.get("reasoning_content") or ""
            for c in delta.get("tool_calls") or []:
                call = calls.setdefault(c["index"], {"id": None, "name": "", "arguments": ""})
                call["id"] = call["id"] or c.get("id")
                call["name"] += (c.get("function") or {}).get("name") or ""
                call["arguments"] += (c.get("function") or {}).get("arguments") or ""
            finish = choice["finish_reason"] or finish
    return {"content": content, "reasoning": reasoning, "calls": [calls[i] for i in sorted(calls)], "finish": finish}


# ----- request -> structured_outputs -----

SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}


@pytest.mark.parametrize("extra, expected", [
    ({}, None),
    ({"response_format": {"type": "text"}}, None),
    ({"response_format": {"type": "json_object"}}, StructuredOutputsParams(json_object=True)),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "A", "schema": SCHEMA, "strict": True}}},
     StructuredOutputsParams(json=SCHEMA)),
    ({"structured_outputs": {"choice": ["yes", "no"]}}, StructuredOutputsParams(choice=["yes", "no"])),
    ({"structured_outputs": {"regex": "[0-9]+"}}, StructuredOutputsParams(regex="[0-9]+")),
    ({"structured_outputs": {"grammar": 'root ::= "a"'}}, StructuredOutputsParams(grammar='root ::= "a"')),
    ({"structured_outputs": {"json": SCHEMA, "disable_any_whitespace": True}},
     StructuredOutputsParams(json=SCHEMA, disable_any_whitespace=True)),
    ({"structured_outputs": {"json_object": True}}, StructuredOutputsParams(json_object=True)),
    ({"guided_json": SCHEMA}, StructuredOutputsParams(json=SCHEMA)),
    ({"guided_regex": "a+"}, StructuredOutputsParams(regex="a+")),
    ({"guided_choice": ["x", "y"]}, StructuredOutputsParams(choice=["x", "y"])),
    ({"guided_grammar": 'root ::= "b"'}, StructuredOutputsParams(grammar='root ::= "b"')),
])
@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
def test_constraint_mapping(engine: ScriptedEngine, path: str, extra: dict,
                            expected: StructuredOutputsParams | None) -> None:
    body = {"messages": USER} if path == CHAT else {"prompt": "Hi"}
    [(status, reply)] = _call(engine, [(path, {**body, "max_tokens": 5, **extra})])
    assert status == 200, reply
    assert engine.params[0].structured_outputs == expected


@pytest.mark.parametrize("extra, param, match", [
    ({"response_format": {"type": "json_schema"}}, "response_format", "json_schema.schema"),
    ({"response_format": {"type": "xml"}}, "response_format", ""),
    ({"structured_outputs": {}}, "structured_outputs", "exactly one"),
    ({"structured_outputs": {"regex": "a", "choice": ["a"]}}, "structured_outputs", "exactly one"),
    ({"structured_outputs": {"choice": []}}, "structured_outputs", "non-empty"),
    ({"structured_outputs": {"whitespace_pattern": " "}}, "structured_outputs", "unsupported"),
    ({"response_format": {"type": "json_object"}, "guided_regex": "a"}, "guided_regex", "at most one"),
    ({"structured_outputs": {"regex": "("}}, "structured_outputs", "invalid regular expression"),
    ({"guided_regex": "("}, "guided_regex", "invalid regular expression"),
])
@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
@pytest.mark.parametrize("stream", [False, True])
def test_constraint_errors_are_400_naming_the_field(engine: ScriptedEngine, path: str, extra: dict, param: str,
                                                    match: str, stream: bool) -> None:
    body = {"messages": USER} if path == CHAT else {"prompt": "Hi"}
    ok = {**body, "max_tokens": 5}
    (status, reply), (ok_status, _) = _call(engine, [(path, {**ok, "stream": stream, **extra}), (path, ok)])
    assert status == 400, reply
    assert reply["error"]["param"] == param and match in reply["error"]["message"], reply
    assert ok_status == 200  # the server goes on


# ----- tool_choice -----

def test_named_tool_choice(engine: ScriptedEngine) -> None:
    engine.script = ['{"city": ', '"Paris"}']
    named = {"type": "function", "function": {"name": "get_weather"}}
    body = {"messages": USER, "tools": [WEATHER, TIME], "tool_choice": named, "max_tokens": 20}
    [(status, reply), (_, events)] = _call(engine, [(CHAT, body), (CHAT, {**body, "stream": True})])
    assert status == 200
    assert engine.params[0].structured_outputs == StructuredOutputsParams(
        json=WEATHER["function"]["parameters"], disable_any_whitespace=True)
    choice = reply["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    [call] = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("chatcmpl-tool-")
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    # Streamed: index, id, type and name first, then argument fragments; the same call in the end.
    first = next(c for e in events for ch in e["choices"] for c in ch["delta"].get("tool_calls") or [])
    assert first["index"] == 0 and first["type"] == "function" and first["function"]["name"] == "get_weather"
    streamed = _aggregate(events)
    assert streamed["calls"] == [{"id": streamed["calls"][0]["id"], "name": "get_weather",
                                  "arguments": '{"city": "Paris"}'}]
    assert streamed["finish"] == "tool_calls" and streamed["content"] == ""


@pytest.mark.parametrize("parallel", [None, False])
def test_required_tool_choice(engine: ScriptedEngine, parallel: bool | None) -> None:
    engine.script = ['[{"name": "get_weather", "parameters": {"city": "Paris"}}', ', {"name": "get_time", ',
                     '"parameters": {}}]']
    body = {"messages": USER, "tools": [WEATHER, TIME], "tool_choice": "required", "max_tokens": 50}
    if parallel is not None:
        body["parallel_tool_calls"] = parallel
    [(_, reply), (_, events)] = _call(engine, [(CHAT, body), (CHAT, {**body, "stream": True})])
    so = engine.params[0].structured_outputs
    assert so is not None and so.json == required_tools_schema([WEATHER, TIME], parallel is None)
    assert (so.json.get("maxItems") == 1) == (parallel is False)
    calls = [(c["function"]["name"], json.loads(c["function"]["arguments"]))
             for c in reply["choices"][0]["message"]["tool_calls"]]
    expected = [("get_weather", {"city": "Paris"}), ("get_time", {})][:1 if parallel is False else 2]
    assert calls == expected and reply["choices"][0]["finish_reason"] == "tool_calls"
    streamed = _aggregate(events)
    assert [(c["name"], json.loads(c["arguments"])) for c in streamed["calls"]] == expected
    assert streamed["finish"] == "tool_calls"


def test_required_output_cut_short_is_content(engine: ScriptedEngine) -> None:
    engine.script = ['[{"name": "get_weather", "para']
    body = {"messages": USER, "tools": [WEATHER], "tool_choice": "required", "max_tokens": 5}
    [(_, reply), (_, events)] = _call(engine, [(CHAT, body), (CHAT, {**body, "stream": True})])
    message = reply["choices"][0]["message"]
    assert message["tool_calls"] == [] and message["content"] == '[{"name": "get_weather", "para'
    assert _aggregate(events)["content"] == message["content"]


def test_auto_without_the_flags(engine: ScriptedEngine) -> None:
    engine.script = ["I cannot check the weather."]
    body = {"messages": USER, "tools": [WEATHER], "max_tokens": 5}
    [(implicit_status, implicit), (explicit_status, explicit)] = _call(
        engine, [(CHAT, body), (CHAT, {**body, "tool_choice": "auto"})])
    # tools without tool_choice (LangChain's bind_tools): a text answer, no constraint
    assert implicit_status == 200 and implicit["choices"][0]["message"]["content"] == "I cannot check the weather."
    assert engine.params[0].structured_outputs is None
    # an explicit "auto": vLLM's 400
    assert explicit_status == 400 and explicit["error"]["param"] == "tool_choice"
    assert "--enable-auto-tool-choice" in explicit["error"]["message"]


@pytest.mark.parametrize("script", [
    ["Let me check. ", "<tool_call>\n", '{"name": "get_weather", "arguments": {"city": "Paris"}}', "\n</tool_call>"],
    ["It is ", "sunny <", "3"],
])
def test_auto_tool_choice_with_a_parser(engine: ScriptedEngine, script: list[str]) -> None:
    engine.script = script
    body = {"messages": USER, "tools": [WEATHER], "max_tokens": 50}
    [(_, reply), (_, events)] = _call(engine, [(CHAT, body), (CHAT, {**body, "stream": True})],
                                      tool_parser=ToolParserManager.get_tool_parser("hermes"))
    assert engine.params[0].structured_outputs is None
    message, streamed = reply["choices"][0]["message"], _aggregate(events)
    if "<tool_call>\n" in script:
        assert message["content"].strip() == "Let me check." and reply["choices"][0]["finish_reason"] == "tool_calls"
        assert [c["function"] for c in message["tool_calls"]] == [
            {"name": "get_weather", "arguments": '{"city": "Paris"}'}]
        assert streamed["finish"] == "tool_calls"
    else:
        assert message == {"role": "assistant", "content": "It is sunny <3", "reasoning_content": None,
                           "tool_calls": []}
        assert reply["choices"][0]["finish_reason"] == "stop" and streamed["finish"] == "stop"
    # content and calls never mixed up; the text held back by the parser ("<") comes at the end
    assert streamed["content"] == (message["content"] or "")
    assert [(c["name"], c["arguments"]) for c in streamed["calls"]] == [
        (c["function"]["name"], c["function"]["arguments"]) for c in message["tool_calls"]]


def test_tool_choice_errors(engine: ScriptedEngine) -> None:
    named = {"type": "function", "function": {"name": "nope"}}
    replies = _call(engine, [
        (CHAT, {"messages": USER, "tool_choice": "required"}),
        (CHAT, {"messages": USER, "tools": [WEATHER], "tool_choice": named}),
        (CHAT, {"messages": USER, "tools": [WEATHER], "tool_choice": "required",
                "response_format": {"type": "json_object"}}),
        (CHAT, {"messages": USER, "tools": [{"type": "function", "function": {"name": ""}}]}),
        (CHAT, {"messages": USER, "tools": [WEATHER], "tool_choice": "none", "max_tokens": 3}),
    ])
    assert [(s, r.get("error", {}).get("param")) for s, r in replies] == [
        (400, "tool_choice"), (400, "tool_choice"), (400, "response_format"), (400, "tools"), (200, None)]


def test_reasoning_split(engine: ScriptedEngine) -> None:
    engine.script = ["<think>Paris is in ", "France.</think>", "It is ", "sunny."]
    body = {"messages": USER, "max_tokens": 50}
    [(_, reply), (_, events), (_, constrained)] = _call(engine, [
        (CHAT, body), (CHAT, {**body, "stream": True}),
        (CHAT, {**body, "response_format": {"type": "json_object"}})],
        reasoning_parser=ReasoningParserManager.get_reasoning_parser("deepseek_r1"))
    message = reply["choices"][0]["message"]
    assert message["reasoning_content"] == "Paris is in France." and message["content"] == "It is sunny."
    streamed = _aggregate(events)
    assert streamed["reasoning"] == "Paris is in France." and streamed["content"] == "It is sunny."
    # With an output constraint all of the output is the answer (see serving_chat.py).
    assert constrained["choices"][0]["message"]["reasoning_content"] is None


def test_enable_thinking_reaches_the_template(engine: ScriptedEngine, smollm2_tokenizer: Any) -> None:
    engine.engine.args.chat_template = ("{% for m in messages %}{{ m.content }}{% endfor %}"
                                        "{% if enable_thinking is defined and not enable_thinking %}"
                                        "<think></think>{% endif %}")
    body = {"messages": USER, "max_tokens": 3}
    _call(engine, [(CHAT, {**body, "chat_template_kwargs": {"enable_thinking": False}}), (CHAT, body)])
    prompts = [smollm2_tokenizer.decode(ids) for ids in engine.prompts]
    assert prompts == ["Weather in Paris?<think></think>", "Weather in Paris?"]


def test_choice_output_named_stream() -> None:
    out = ChoiceOutput("named", name="f")
    assert out.feed("  ") is None
    first = out.feed('{"a"')
    assert first is not None and first.tool_calls and first.tool_calls[0].function.arguments == '{"a"'
    out.feed(": 1}")
    assert out.finish() is None and out.final('  {"a": 1}').tool_calls[0].function.arguments == '{"a": 1}'


# ----- messages and fields -----

TOOL_TURN = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "22 C and sunny"},
]


def test_tool_messages_reach_smollm2_template(engine: ScriptedEngine, smollm2_tokenizer: Any) -> None:
    [(status, reply)] = _call(engine, [(CHAT, {"messages": TOOL_TURN, "tools": [WEATHER], "max_tokens": 5})])
    assert status == 200, reply
    prompt = smollm2_tokenizer.decode(engine.prompts[0])
    # SmolLM2's template renders neither tools nor tool calls: they are written in as text.
    assert '"name": "get_weather"' in prompt and "<tools>" in prompt
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in prompt
    assert "22 C and sunny" in prompt and prompt.endswith("<|im_start|>assistant\n")


def test_template_that_renders_tools_gets_them(smollm2_tokenizer: Any) -> None:
    template = ("{% for t in tools or [] %}{{ 'TOOL ' + t.function.name + '\n' }}{% endfor %}"
                "{% for m in messages %}{{ m.role }}: {{ m.content }}"
                "{% for c in m.tool_calls or [] %}CALL {{ c.function.name }} {{ c.function.arguments | tojson }}"
                "{% endfor %}{{ '\n' }}{% endfor %}")
    text = render_chat_prompt(smollm2_tokenizer, TOOL_TURN, template, tools=[WEATHER], add_generation_prompt=False)
    assert text == ('TOOL get_weather\nuser: Weather in Paris?\nassistant: CALL get_weather {"city": "Paris"}\n'
                    "tool: 22 C and sunny\n")


def test_template_that_drops_tool_results_gets_them_as_text(smollm2_tokenizer: Any) -> None:
    template = "{% for m in messages %}{% if m.role in ('user', 'assistant') %}{{ m.role }}: {{ m.content }}\n" \
               "{% endif %}{% endfor %}"
    text = render_chat_prompt(smollm2_tokenizer, [USER[0], TOOL_TURN[1], TOOL_TURN[2]], template,
                              add_generation_prompt=False)
    assert "user: <tool_response>\n22 C and sunny\n</tool_response>" in text
    assert '<tool_call>\n{"name": "get_weather"' in text  # no tool_calls in the template: calls as text
    strict = "{% for m in messages %}{% if m.role == 'tool' %}{{ raise_exception('no tools') }}{% endif %}" \
             "{{ m.content }}\n{% endfor %}"
    assert "<tool_response>" in render_chat_prompt(smollm2_tokenizer, [USER[0], TOOL_TURN[2]], strict)


def test_tokenize_takes_tools(engine: ScriptedEngine, smollm2_tokenizer: Any) -> None:
    async def main() -> dict:
        async with TestClient(TestServer(build_app(engine))) as http:  # type: ignore[arg-type]
            response = await http.post("/tokenize", json={"messages": USER, "tools": [WEATHER]})
            return await response.json()

    assert "get_weather" in smollm2_tokenizer.decode(asyncio.run(main())["tokens"])


def test_ignored_fields_are_accepted_and_logged(engine: ScriptedEngine, caplog: pytest.LogCaptureFixture) -> None:
    body = {"messages": [{**USER[0], "refusal": None, "annotations": []}], "max_tokens": 3, "user": "u1",
            "store": False, "metadata": {"k": "v"}, "service_tier": "auto", "parallel_tool_calls": True,
            "prompt_cache_key": "abc", "safety_identifier": "s", "verbosity": "low", "guided_decoding_backend": "x"}
    completion = {"prompt": "Hi", "max_tokens": 3, "user": "u1", "store": True, "metadata": {}, "newer_field": 1}
    logger = logging.getLogger("vllm_cli")  # does not propagate to the root logger caplog listens on
    logger.addHandler(caplog.handler)
    try:
        replies = _call(engine, [(CHAT, body), (COMPLETIONS, completion)])
    finally:
        logger.removeHandler(caplog.handler)
    assert [s for s, _ in replies] == [200, 200]
    warnings = [r.getMessage() for r in caplog.records if "ignored" in r.getMessage()]
    assert warnings == ["The following fields were present in the request but ignored: verbosity, "
                        "messages[0].annotations",
                        "The following fields were present in the request but ignored: newer_field"]


@pytest.mark.parametrize("path, extra, param", [
    (CHAT, {"functions": [{"name": "f"}]}, "functions"),
    (CHAT, {"function_call": "auto"}, "function_call"),
    (CHAT, {"audio": {"voice": "alloy"}}, "audio"),
    (CHAT, {"modalities": ["text", "audio"]}, "modalities"),
    (CHAT, {"prediction": {"type": "content", "content": "x"}}, "prediction"),
    (CHAT, {"reasoning_effort": "high"}, "reasoning_effort"),
    (CHAT, {"messages": [{"role": "function", "name": "f", "content": "1"}]}, "messages"),
    (CHAT, {"tool_choice": {"type": "allowed_tools", "allowed_tools": {}}}, "tool_choice"),
    (COMPLETIONS, {"suffix": "x"}, "suffix"),
    (COMPLETIONS, {"best_of": 2}, "best_of"),
    (COMPLETIONS, {"use_beam_search": True}, "use_beam_search"),
])
def test_refused_fields_stay_400(engine: ScriptedEngine, path: str, extra: dict, param: str) -> None:
    body = {"messages": USER} if path == CHAT else {"prompt": "Hi"}
    [(status, reply)] = _call(engine, [(path, {**body, "max_tokens": 3, **extra})])
    assert status == 400 and reply["error"]["param"] == param, reply


def test_parser_options_errors() -> None:
    with pytest.raises(ValueError, match="requires --tool-call-parser"):
        ParserOptions(enable_auto_tool_choice=True).resolve()
    with pytest.raises(ValueError, match="nope"):
        ParserOptions(tool_call_parser="nope").resolve()
