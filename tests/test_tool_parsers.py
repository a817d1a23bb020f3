"""Tool-call parsers on recorded-style model outputs, whole and streamed in deltas of many sizes.

The streamed checks hold each parser to the interface's promise: the content deltas add up to the
non-streamed content (so no text of a call leaks into content), and per call index the first delta
carries the id and name and the argument fragments add up to exactly the non-streamed arguments JSON.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from vllm_cli.entrypoints.openai.parser_types import ExtractedToolCalls
from vllm_cli.entrypoints.openai.tool_parsers import ToolParser, ToolParserManager
from vllm_cli.entrypoints.openai.tool_parsers.partial_json import JSONScanError, canonical_object, scan_value

# Delta sizes: one character at a time, small fixed steps, and irregular token-like runs.
SPLITS = [[1], [2], [3], [1, 4, 2, 7], [5, 1, 1, 13, 2], [40]]


def stream(parser_cls: type[ToolParser], text: str, sizes: list[int], finish: bool = True) -> tuple[str, list[dict]]:
    """Feed `text` in deltas of `sizes` (cycled), then `finish_streaming` if `finish`; return (content,
    calls) as a client would assemble them."""
    parser = parser_cls(None)
    content: list[str] = []
    calls: dict[int, dict] = {}
    previous, pos, k = "", 0, 0
    while pos <= len(text):
        if pos == len(text):
            if not finish:
                break
            delta = parser.finish_streaming(text)
            pos += 1
        else:
            pos = min(len(text), pos + sizes[k % len(sizes)])
            k += 1
            current = text[:pos]
            delta = parser.extract_tool_calls_streaming(previous, current, current[len(previous):])
            previous = current
        if delta is None:
            continue
        assert delta.content or delta.tool_calls, "an empty delta should be None"
        assert delta.reasoning_content is None
        if delta.content:
            content.append(delta.content)
        for tc in delta.tool_calls:
            if tc.index not in calls:
                assert tc.index == len(calls), "indices start at 0 and go up by one"
                assert tc.id and tc.name, "the first delta of a call carries its id and name"
                calls[tc.index] = {"id": tc.id, "name": tc.name, "arguments": ""}
            else:
                assert tc.id is None and tc.name is None
            if tc.arguments:
                calls[tc.index]["arguments"] += tc.arguments
    return "".join(content), [calls[i] for i in range(len(calls))]


def check(parser_name: str, text: str, calls: list[tuple[str, dict]], content: str | None,
          streamed: bool = True) -> ExtractedToolCalls:
    """Non-streamed result is `calls` and `content`; every streamed split gives the same."""
    cls = ToolParserManager.get_tool_parser(parser_name)
    result = cls(None).extract_tool_calls(text, None)
    assert result.content == content
    assert result.tools_called == bool(calls)
    assert [(c.name, json.loads(c.arguments)) for c in result.tool_calls] == calls
    for c in result.tool_calls:
        assert isinstance(json.loads(c.arguments), dict)
    assert len({c.id for c in result.tool_calls}) == len(calls)
    if streamed:
        for sizes in SPLITS:
            s_content, s_calls = stream(cls, text, sizes)
            assert s_content == (content or ""), sizes
            assert [(c["name"], c["arguments"]) for c in s_calls] == \
                [(c.name, c.arguments) for c in result.tool_calls], sizes
            # without finish_streaming, only a tail held back as a possible marker is missing
            u_content, u_calls = stream(cls, text, sizes, finish=False)
            assert (content or "").startswith(u_content)
            assert [(c["name"], c["arguments"]) for c in u_calls] == [(c["name"], c["arguments"]) for c in s_calls]
    return result


# ---- hermes (Qwen 2.5 / Qwen 3 / Hermes 2 Pro) ------------------------------------------------------

WEATHER = {"location": "San Francisco, CA, USA", "unit": "celsius"}


def test_hermes_single_call() -> None:
    text = ('<tool_call>\n{"name": "get_current_temperature", "arguments": '
            '{"location": "San Francisco, CA, USA", "unit": "celsius"}}\n</tool_call>')
    r = check("hermes", text, [("get_current_temperature", WEATHER)], None)
    assert r.tool_calls[0].id.startswith("chatcmpl-tool-")
    # the arguments are JSON text exactly as json.dumps writes them
    assert r.tool_calls[0].arguments == json.dumps(WEATHER, ensure_ascii=False)


def test_hermes_content_then_two_calls_unicode() -> None:
    text = ("I'll look up the weather in both cities for you.\n"
            '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "country": "France"}}\n</tool_call>\n'
            '<tool_call>\n{"name": "get_weather", "arguments": '
            '{"city": "東京", "note": "naïve café ☕ \\u00e9 \\ud83d\\ude00"}}\n</tool_call>')
    check("hermes", text, [("get_weather", {"city": "Paris", "country": "France"}),
                           ("get_weather", {"city": "東京", "note": "naïve café ☕ é 😀"})],
          "I'll look up the weather in both cities for you.\n")


def test_hermes_nested_arguments_with_braces_in_strings() -> None:
    args = {"code": "def f(x):\n    return {\"a\": [x, '}']}  # }{ ]",
            "options": {"timeout": 10, "env": {"A": "1", "B": ""}, "flags": [True, None, -1500.0, 0, 2.5]},
            "empty": {}, "list": []}
    text = ('<tool_call>\n{"name": "run_python", "arguments": ' + json.dumps(args, indent=1) + "}\n</tool_call>")
    r = check("hermes", text, [("run_python", args)], None)
    assert r.tool_calls[0].arguments == json.dumps(args, ensure_ascii=False)


def test_hermes_arguments_key_order_and_string_arguments() -> None:
    # name after the arguments: nothing is streamed until the name is known, then all of it
    text = '<tool_call>\n{"arguments": {"q": "x"}, "name": "search"}\n</tool_call>'
    check("hermes", text, [("search", {"q": "x"})], None)
    # arguments written as a JSON string, and a call with no arguments at all
    text = ('<tool_call>\n{"name": "f", "arguments": "{\\"x\\": 1}"}\n</tool_call>\n'
            '<tool_call>\n{"name": "now"}\n</tool_call>')
    check("hermes", text, [("f", {"x": 1}), ("now", {})], None)


def test_hermes_unterminated_last_call_and_trailing_text() -> None:
    text = 'Sure.\n<tool_call>\n{"name": "f", "arguments": {"a": [1, 2]}}\n'  # EOS before </tool_call>
    check("hermes", text, [("f", {"a": [1, 2]})], "Sure.\n")
    text = '<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>\n\nDone: that was the call.'
    check("hermes", text, [("f", {})], "\n\nDone: that was the call.")


def test_hermes_plain_text_and_marker_lookalikes() -> None:
    check("hermes", "The capital of France is Paris.", [], "The capital of France is Paris.")
    text = "Use <tool> or <tool_calls> tags, and a < b; <tool_cal"
    check("hermes", text, [], text)


@pytest.mark.parametrize("text", [
    '<tool_call>\nget_weather(city="Paris")\n</tool_call>',  # not JSON
    '<tool_call>\n{"arguments": {"city": "Paris"}}\n</tool_call>',  # no name
    '<tool_call>\n{"name": 42, "arguments": {}}\n</tool_call>',  # a name that is not a string
    '<tool_call>\n{"name": "f", "arguments": [1, 2]}\n</tool_call>',  # arguments that are not an object
    "<tool_call>",
])
def test_hermes_malformed_calls_stay_content(text: str) -> None:
    check("hermes", text, [], text)


def test_hermes_malformed_then_valid() -> None:
    text = ('<tool_call>\nnot json\n</tool_call>\n'
            '<tool_call>\n{"name": "f", "arguments": {"x": "y"}}\n</tool_call>')
    check("hermes", text, [("f", {"x": "y"})], "<tool_call>\nnot json\n</tool_call>\n")


def test_hermes_broken_json_after_the_name_is_content_when_whole() -> None:
    # Whole: the call never closes properly, so it is content. (A stream has already sent the name.)
    text = '<tool_call>\n{"name": "f", "arguments": {"a": 1}\n</tool_call>'
    check("hermes", text, [], text, streamed=False)
    for sizes in SPLITS:
        stream(ToolParserManager.get_tool_parser("hermes"), text, sizes)  # does not raise


def test_hermes_content_streams_promptly() -> None:
    parser = ToolParserManager.get_tool_parser("hermes")(None)
    d = parser.extract_tool_calls_streaming("", "Hello wor", "Hello wor")
    assert d is not None and d.content == "Hello wor"
    d = parser.extract_tool_calls_streaming("Hello wor", "Hello world <tool", "ld <tool")
    assert d is not None and d.content == "ld "  # "<tool" is held: it may be a marker
    d = parser.extract_tool_calls_streaming("Hello world <tool", "Hello world <tools>", "s>")
    assert d is not None and d.content == "<tools>"


# ---- llama3_json (Llama 3.1 / 3.2 / 3.3) ------------------------------------------------------------

def test_llama3_json_single_call() -> None:
    text = '{"name": "get_weather", "parameters": {"location": "Paris", "unit": "celsius"}}'
    check("llama3_json", text, [("get_weather", {"location": "Paris", "unit": "celsius"})], None)


def test_llama3_json_python_tag_and_braces_in_strings() -> None:
    text = '<|python_tag|>{"name": "search", "parameters": {"query": "vLLM \\"paged attention\\" {blocks} ;"}}'
    check("llama3_json", text, [("search", {"query": 'vLLM "paged attention" {blocks} ;'})], None)


def test_llama3_json_several_calls() -> None:
    text = ('{"name": "get_weather", "parameters": {"city": "München"}}; '
            '{"type": "function", "name": "convert", "parameters": {"v": [1, 2, {"z": "ü"}], "n": null}}')
    check("llama3_json", text, [("get_weather", {"city": "München"}),
                                ("convert", {"v": [1, 2, {"z": "ü"}], "n": None})], None)


@pytest.mark.parametrize("text", [
    "The weather in Paris is sunny.",
    '{"answer": 42, "name": "x"}',  # JSON that is not a call
    '{"name": "John", "age": 30}',
    '{"name": "f"}',  # no parameters: not read as a call
    "Here is the call: {\"name\": \"f\", \"parameters\": {}}",  # calls must open the output
])
def test_llama3_json_not_calls(text: str) -> None:
    check("llama3_json", text, [], text)


def test_llama3_json_truncated_call_is_content_when_whole() -> None:
    text = '{"name": "get_weather", "parameters": {"location": "Par'
    check("llama3_json", text, [], text, streamed=False)


def test_llama3_json_call_then_text() -> None:
    text = '{"name": "f", "parameters": {"a": 1}}\nI called f.'
    check("llama3_json", text, [("f", {"a": 1})], "\nI called f.")


# ---- mistral -----------------------------------------------------------------------------------------

MISTRAL_ID = re.compile(r"[A-Za-z0-9]{9}")


def test_mistral_list_of_calls() -> None:
    text = ('[TOOL_CALLS] [{"name": "get_current_weather", "arguments": {"location": "Paris, France", '
            '"format": "celsius"}}, {"name": "get_time", "arguments": {"tz": "Asia/Tōkyō", "fmt": "{h}:{m}"}}]')
    r = check("mistral", text, [("get_current_weather", {"location": "Paris, France", "format": "celsius"}),
                                ("get_time", {"tz": "Asia/Tōkyō", "fmt": "{h}:{m}"})], None)
    assert all(MISTRAL_ID.fullmatch(c.id) for c in r.tool_calls)
    _, calls = stream(ToolParserManager.get_tool_parser("mistral"), text, [1])
    assert all(MISTRAL_ID.fullmatch(c["id"]) for c in calls)


def test_mistral_content_before_calls() -> None:
    text = 'Let me check that for you.[TOOL_CALLS][{"name": "lookup", "arguments": {"id": 7, "deep": {"a": [{}]}}}]'
    check("mistral", text, [("lookup", {"id": 7, "deep": {"a": [{}]}})], "Let me check that for you.")


def test_mistral_v11_name_args_format() -> None:
    text = ('[TOOL_CALLS]get_weather[ARGS]{"city": "Paris", "units": "metric"}'
            '[TOOL_CALLS]get_time[ARGS]{"tz": "Europe/Paris"}')
    check("mistral", text, [("get_weather", {"city": "Paris", "units": "metric"}),
                            ("get_time", {"tz": "Europe/Paris"})], None)


@pytest.mark.parametrize("text", [
    "[TOOL_CALLS] not a list",
    '[TOOL_CALLS][{"arguments": {}}]',
    "Plain answer with [brackets] and [TOOL_ in it",
])
def test_mistral_malformed_stay_content(text: str) -> None:
    check("mistral", text, [], text)


def test_mistral_needs_special_tokens() -> None:
    assert ToolParserManager.get_tool_parser("mistral").needs_special_tokens
    assert not ToolParserManager.get_tool_parser("pythonic").needs_special_tokens


# ---- pythonic (Llama 3.2 / Llama 4) ------------------------------------------------------------------

def test_pythonic_single_call() -> None:
    text = '[get_weather(city="San Francisco", metric="celsius")]'
    check("pythonic", text, [("get_weather", {"city": "San Francisco", "metric": "celsius"})], None)


def test_pythonic_several_calls_literals() -> None:
    text = ("[get_weather(city='Paris'), get_time(tz=\"Europe/Paris\", fmt=None, "
            "opts={'a': [1, 2], \"b\": (True, False)}, n=-3, r=1.5e-3), get_date()]")
    check("pythonic", text, [("get_weather", {"city": "Paris"}),
                             ("get_time", {"tz": "Europe/Paris", "fmt": None, "opts": {"a": [1, 2], "b": [True, False]},
                                           "n": -3, "r": 0.0015}),
                             ("get_date", {})], None)


def test_pythonic_strings_with_brackets_quotes_and_unicode() -> None:
    text = '[search(q="f(x), [y] \'z\' \\"q\\"", lang="日本語", note="""multi\nline)"""), noop()]'
    check("pythonic", text, [("search", {"q": "f(x), [y] 'z' \"q\"", "lang": "日本語", "note": "multi\nline)"}),
                             ("noop", {})], None)


def test_pythonic_llama4_wrapper() -> None:
    text = "<|python_start|>[get_weather(city=\"Oslo\")]<|python_end|>"
    check("pythonic", text, [("get_weather", {"city": "Oslo"})], None)


@pytest.mark.parametrize("text", [
    "The answer is [1, 2, 3].",
    "[1, 2, 3] are numbers",
    "[get_weather('Paris')]",  # positional argument
    "[]",
])
def test_pythonic_not_calls(text: str) -> None:
    check("pythonic", text, [], text)


@pytest.mark.parametrize("text", [
    "[get_weather(city=location)]",  # not a literal
    "[f(x=1, x=2)]",  # repeated keyword
    "[f(x=1)",  # unclosed
])
def test_pythonic_malformed_is_content_when_whole(text: str) -> None:
    check("pythonic", text, [], text, streamed=False)


# ---- the partial JSON scanner ------------------------------------------------------------------------

def _random_value(rng: random.Random, depth: int = 0):
    kind = rng.choice(["str", "num", "lit", "obj", "arr"] if depth < 4 else ["str", "num", "lit"])
    if kind == "str":
        return "".join(rng.choice('ab "\\/{}[],:\n\t\u00e9東😀\x01') for _ in range(rng.randint(0, 8)))
    if kind == "num":
        return rng.choice([0, -1, 17, 3.25, -0.5e-7, 1e21, 12345678901234567890])
    if kind == "lit":
        return rng.choice([True, False, None])
    if kind == "obj":
        return {f"k{i}" + rng.choice(["", "é", '"']): _random_value(rng, depth + 1) for i in range(rng.randint(0, 4))}
    return [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]


def test_partial_json_matches_json_dumps_and_prefixes_are_stable() -> None:
    rng = random.Random(0)
    for _ in range(300):
        value = {"v": _random_value(rng)}
        text = json.dumps(value, ensure_ascii=rng.random() < 0.5, indent=rng.choice([None, 0, 2]))
        canon = canonical_object(text)
        assert canon == json.dumps(value, ensure_ascii=False)
        for cut in range(len(text)):
            node = scan_value(text[:cut], 0) if cut else None
            if node is not None:
                assert canon.startswith(node.canon), (text[:cut], node.canon)


@pytest.mark.parametrize("text", ['{"a": tru', '{"a": 1', '{"a": "\\u00', '{"a": -', '{"a": 1.', '{"a": "x\\'])
def test_partial_json_incomplete(text: str) -> None:
    assert not scan_value(text, 0).complete


@pytest.mark.parametrize("text", ['{"a": trux}', '{a: 1}', '{"a" 1}', '{"a": 01}', '{"a": "\\x"}', '{"a": 1,]'])
def test_partial_json_errors(text: str) -> None:
    with pytest.raises(JSONScanError):
        scan_value(text, 0)


# ---- registry and plugins ----------------------------------------------------------------------------

def test_registry_names_and_unknown() -> None:
    assert {"hermes", "llama3_json", "mistral", "pythonic"} <= set(ToolParserManager.names())
    with pytest.raises(ValueError, match="hermes"):
        ToolParserManager.get_tool_parser("nope")


PLUGIN = '''
from vllm_cli.entrypoints.openai.tool_parsers.base import PartialCall, ToolParser, ToolParserManager


@ToolParserManager.register_module("shout_test")
class ShoutParser(ToolParser):
    """A call is the whole output `CALL name`."""

    def scan(self, text, final):
        if text.startswith("CALL "):
            return [PartialCall(text[5:], "{}", complete=True)] if final else []
        return [text]
'''


def test_plugin_file_registers_a_parser(tmp_path: Path) -> None:
    path = tmp_path / "my_parser.py"
    path.write_text(PLUGIN)
    try:
        ToolParserManager.import_tool_parser(str(path))
        cls = ToolParserManager.get_tool_parser("shout_test")
        assert cls.name == "shout_test" and "shout_test" in ToolParserManager.names()
        r = cls(None).extract_tool_calls("CALL ping", None)
        assert r.tools_called and r.tool_calls[0].name == "ping" and r.content is None
    finally:
        ToolParserManager._parsers.pop("shout_test", None)


def test_plugin_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        ToolParserManager.import_tool_parser(str(tmp_path / "missing.py"))
    bad = tmp_path / "bad.py"
    bad.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(ValueError, match="boom"):
        ToolParserManager.import_tool_parser(str(bad))


def test_parser_bug_never_raises() -> None:
    class Broken(ToolParser):
        name = "broken"

        def scan(self, text: str, final: bool) -> list:
            raise RuntimeError("bug")

    r = Broken(None).extract_tool_calls("hello", None)
    assert not r.tools_called and r.content == "hello"
    d = Broken(None).extract_tool_calls_streaming("", "hi", "hi")
    assert d is not None and d.content == "hi"
