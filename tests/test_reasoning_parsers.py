"""Reasoning parsers on recorded-style outputs, whole and streamed in deltas of many sizes (tags split
across deltas, and deltas carrying both the end tag and the answer)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vllm_cli.entrypoints.openai.reasoning_parsers import ReasoningParser, ReasoningParserManager
from vllm_cli.entrypoints.openai.tool_parsers import ToolParserManager

SPLITS = [[1], [2], [3], [1, 4, 2, 7], [5, 1, 1, 13, 2], [9], [40]]

R1 = ("Okay, the user asks for 17 * 23. Let me compute: 17 * 20 = 340, 17 * 3 = 51, so 391.\n"
      "Check: 391 / 17 = 23. Yes.\n</think>\n\n17 × 23 = **391**.")
R1_REASONING = ("Okay, the user asks for 17 * 23. Let me compute: 17 * 20 = 340, 17 * 3 = 51, so 391.\n"
                "Check: 391 / 17 = 23. Yes.\n")
QWEN3 = ("<think>\nThe user wants the capital of France. That's Paris — no tools needed.\n</think>\n\n"
         "The capital of France is Paris.")


def stream(parser: ReasoningParser, text: str, sizes: list[int], finish: bool = True) -> tuple[str, str]:
    reasoning, content = [], []
    previous, pos, k = "", 0, 0
    while pos < len(text):
        pos = min(len(text), pos + sizes[k % len(sizes)])
        k += 1
        current = text[:pos]
        delta = parser.extract_reasoning_streaming(previous, current, current[len(previous):])
        previous = current
        if delta is not None:
            assert delta.reasoning_content or delta.content
            assert not delta.tool_calls
            reasoning.append(delta.reasoning_content or "")
            content.append(delta.content or "")
    if finish:
        delta = parser.finish_streaming(text)
        if delta is not None:
            reasoning.append(delta.reasoning_content or "")
            content.append(delta.content or "")
    return "".join(reasoning), "".join(content)


def check(name: str, text: str, reasoning: str | None, content: str | None, prompt: str | None = None,
          streamed: bool = True) -> None:
    cls = ReasoningParserManager.get_reasoning_parser(name)
    parser = cls(None)
    if prompt is not None:
        parser.observe_prompt(prompt)
    assert parser.extract_reasoning(text) == (reasoning, content)
    if streamed:
        for sizes in SPLITS:
            parser = cls(None)
            if prompt is not None:
                parser.observe_prompt(prompt)
            assert stream(parser, text, sizes) == (reasoning or "", content or ""), sizes


# ---- deepseek_r1 ----------------------------------------------------------------------------------------

def test_r1_without_start_tag() -> None:
    check("deepseek_r1", R1, R1_REASONING, "17 × 23 = **391**.")


def test_r1_with_start_tag() -> None:
    check("deepseek_r1", "<think>\n" + R1, R1_REASONING, "17 × 23 = **391**.")


def test_r1_no_end_tag_is_all_reasoning() -> None:
    text = "Hmm, let me think about this step by step. First, the integral of x^2 is"
    check("deepseek_r1", text, text, None)
    check("deepseek_r1", "<think>" + text, text, None)


def test_r1_split_end_tag_and_combined_delta() -> None:
    parser = ReasoningParserManager.get_reasoning_parser("deepseek_r1")(None)
    d = parser.extract_reasoning_streaming("", "Think hard.</thi", "Think hard.</thi")
    assert d is not None and d.reasoning_content == "Think hard." and d.content is None
    d = parser.extract_reasoning_streaming("Think hard.</thi", "Think hard.</think>\n\nAns", "nk>\n\nAns")
    assert d is not None and d.reasoning_content is None and d.content == "Ans"
    assert parser.is_reasoning_end("Think hard.</think>")
    # one delta with the end of the reasoning, the tag and the answer
    parser = ReasoningParserManager.get_reasoning_parser("deepseek_r1")(None)
    d = parser.extract_reasoning_streaming("", "Think", "Think")
    assert d is not None and d.reasoning_content == "Think"
    d = parser.extract_reasoning_streaming("Think", "Think more.</think>Yes.", " more.</think>Yes.")
    assert d is not None and d.reasoning_content == " more." and d.content == "Yes."


def test_r1_is_reasoning_end() -> None:
    parser = ReasoningParserManager.get_reasoning_parser("deepseek_r1")(None)
    assert not parser.is_reasoning_end("")
    assert not parser.is_reasoning_end("Still thinking</thi")
    assert not parser.is_reasoning_end("Answer without tags")  # R1 starts inside the reasoning
    assert parser.is_reasoning_end("a</think>b")


def test_r1_tag_lookalikes_inside_reasoning() -> None:
    text = "Is <b> a tag? And </th is not </think>. Done: use </thin>. </think>Final."
    check("deepseek_r1", text, "Is <b> a tag? And </th is not ", ". Done: use </thin>. </think>Final.")


# ---- qwen3 ------------------------------------------------------------------------------------------------

def test_qwen3_think_then_answer() -> None:
    check("qwen3", QWEN3, "The user wants the capital of France. That's Paris — no tools needed.\n",
          "The capital of France is Paris.")


def test_qwen3_thinking_disabled_is_all_content() -> None:
    text = "The capital of France is Paris."
    check("qwen3", text, None, text)
    # the template of enable_thinking=False closes an empty think block in the prompt
    prompt = "<|im_start|>user\nCapital?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    check("qwen3", text, None, text, prompt=prompt)
    parser = ReasoningParserManager.get_reasoning_parser("qwen3")(None)
    assert parser.is_reasoning_end("The")
    assert not parser.is_reasoning_end("<thi")
    assert not parser.is_reasoning_end("<think>abc")


def test_qwen3_empty_think_block() -> None:
    check("qwen3", "<think>\n\n</think>\n\nHello!", None, "Hello!")


def test_qwen3_truncated_thinking() -> None:
    check("qwen3", "<think>\nLet me consider the options: A, B", "Let me consider the options: A, B", None)


def test_qwen3_end_tag_without_start_tag() -> None:
    # Qwen3-2507 thinking models: the template opens <think> in the prompt
    text = "I should greet back politely.\n</think>\n\nHello! How can I help?"
    check("qwen3", text, "I should greet back politely.\n", "Hello! How can I help?", streamed=False)
    prompt = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n"
    check("qwen3", text, "I should greet back politely.\n", "Hello! How can I help?", prompt=prompt)
    # without the prompt, a stream cannot know: it all streams as content, minus the tag
    for sizes in SPLITS:
        parser = ReasoningParserManager.get_reasoning_parser("qwen3")(None)
        assert stream(parser, text, sizes) == ("", "I should greet back politely.\n\n\nHello! How can I help?")


def test_qwen3_reasoning_then_tool_call() -> None:
    text = ('<think>\nThe user wants the weather; call get_weather.\n</think>\n\n'
            '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>')
    reasoning, content = ReasoningParserManager.get_reasoning_parser("qwen3")(None).extract_reasoning(text)
    assert reasoning == "The user wants the weather; call get_weather.\n"
    assert content is not None
    calls = ToolParserManager.get_tool_parser("hermes")(None).extract_tool_calls(content, None)
    assert calls.tools_called and calls.content is None
    assert (calls.tool_calls[0].name, calls.tool_calls[0].arguments) == ("get_weather", '{"city": "Paris"}')


def test_finish_streaming_releases_a_held_tag_prefix() -> None:
    parser = ReasoningParserManager.get_reasoning_parser("deepseek_r1")(None)
    assert stream(parser, "Thinking about </thi", [1], finish=False) == ("Thinking about ", "")
    parser = ReasoningParserManager.get_reasoning_parser("deepseek_r1")(None)
    assert stream(parser, "Thinking about </thi", [1]) == ("Thinking about </thi", "")


# ---- registry ----------------------------------------------------------------------------------------------

def test_registry_and_plugin(tmp_path: Path) -> None:
    assert {"deepseek_r1", "qwen3"} <= set(ReasoningParserManager.names())
    with pytest.raises(ValueError, match="qwen3"):
        ReasoningParserManager.get_reasoning_parser("nope")
    path = tmp_path / "my_reasoning.py"
    path.write_text(
        "from vllm_cli.entrypoints.openai.reasoning_parsers.base import ReasoningParserManager, "
        "ThinkTagReasoningParser\n\n\n"
        "@ReasoningParserManager.register_module('seed_test')\n"
        "class SeedParser(ThinkTagReasoningParser):\n"
        "    start_tag, end_tag = '<seed:think>', '</seed:think>'\n")
    try:
        ReasoningParserManager.import_reasoning_parser(str(path))
        parser = ReasoningParserManager.get_reasoning_parser("seed_test")(None)
        assert parser.extract_reasoning("<seed:think>hmm</seed:think>ok") == ("hmm", "ok")
    finally:
        ReasoningParserManager._parsers.pop("seed_test", None)
