"""Structured outputs (constrained decoding) on the real SmolLM2: JSON schema, any JSON object,
regex, choice and EBNF grammar on both backends (xgrammar, llguidance); n=2 with a seed; a
batch mixing constrained and unconstrained requests; recompute preemption; logprobs of the
constrained distribution; clear ValueErrors for bad specs (and the engine keeps serving); the
compile cache; a request whose grammar is still compiling waits without holding others up."""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import pytest

from vllm_cli.engine.llm import LLM
from vllm_cli.outputs import CompletionOutput
from vllm_cli.sampling_params import SamplingParams, StructuredOutputsParams
from vllm_cli.structured_output import StructuredOutputManager

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "city": {"type": "string", "enum": ["Paris", "Rome", "Oslo"]},
    },
    "required": ["name", "age", "city"],
    "additionalProperties": False,
}
GRAMMAR = 'root ::= "The answer is " ("A" | "B" | "C") "."'


@pytest.fixture(scope="module")
def llm(smollm2_gguf_path: str) -> LLM:
    return LLM(smollm2_gguf_path, dtype="float32", max_model_len=512, kv_cache_memory="64MiB")


@pytest.fixture(params=["xgrammar", "guidance"])
def backend_llm(request: pytest.FixtureRequest, llm: LLM) -> Iterator[LLM]:
    """The shared engine with a fresh manager on the given backend (restored afterwards)."""
    engine = llm.engine
    saved = engine.structured_output
    engine.structured_output = StructuredOutputManager(engine.tokenizer, engine.vocab_size, request.param,
                                                       engine.eos_token_ids)
    yield llm
    engine.structured_output.shutdown()
    engine.structured_output = saved


def _chat(llm: LLM, text: str) -> dict:
    ids = llm.get_tokenizer().apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                                  tokenize=True, return_dict=True)["input_ids"]
    return {"prompt_token_ids": ids}


def _check_person(text: str) -> None:
    value = json.loads(text)
    try:
        import jsonschema
    except ImportError:
        jsonschema = None
    if jsonschema is not None:
        jsonschema.validate(value, SCHEMA)
    else:
        assert set(value) == {"name", "age", "city"}, value
        assert isinstance(value["name"], str) and len(value["name"]) <= 24
        assert isinstance(value["age"], int) and 0 <= value["age"] <= 150
        assert value["city"] in ("Paris", "Rome", "Oslo")


def _gen(llm: LLM, prompt: str | dict, max_tokens: int = 48, **so: Any) -> CompletionOutput:
    params = SamplingParams(temperature=0, max_tokens=max_tokens, structured_outputs=StructuredOutputsParams(**so))
    return llm.generate([prompt], params, use_tqdm=False)[0].outputs[0]


def test_every_kind_on_both_backends(backend_llm: LLM) -> None:
    llm = backend_llm
    person = _chat(llm, "Describe a person as JSON with name, age and city.")
    out = _gen(llm, person, json=SCHEMA, disable_any_whitespace=True)
    assert out.finish_reason == "stop", out
    _check_person(out.text)
    assert llm.get_tokenizer().eos_token_id not in out.token_ids[:-1]

    out = _gen(llm, person, json_object=True, disable_any_whitespace=True)
    assert out.finish_reason == "stop" and isinstance(json.loads(out.text), dict), out

    out = _gen(llm, _chat(llm, "Give me a phone number."), regex=r"\d{3}-\d{4}")
    assert re.fullmatch(r"\d{3}-\d{4}", out.text), out
    assert out.finish_reason == "stop"

    out = _gen(llm, _chat(llm, "Is the sky blue? Answer yes or no."), choice=["yes", "no", "maybe so"])
    assert out.text in ("yes", "no", "maybe so") and out.finish_reason == "stop", out

    out = _gen(llm, _chat(llm, "Pick A, B or C."), grammar=GRAMMAR)
    assert re.fullmatch(r"The answer is [ABC]\.", out.text) and out.finish_reason == "stop", out


def test_batch_mixes_constrained_unconstrained_n2_and_logprobs(llm: LLM) -> None:
    person = _chat(llm, "Describe a person as JSON with name, age and city.")
    free = SamplingParams(temperature=0, max_tokens=12)
    seeded = SamplingParams(n=2, temperature=1.0, seed=7, max_tokens=48,
                            structured_outputs=StructuredOutputsParams(json=SCHEMA, disable_any_whitespace=True))
    digits = SamplingParams(temperature=0, max_tokens=4, logprobs=5,
                            structured_outputs=StructuredOutputsParams(regex=r"[0-9]{4}"))
    prompts: list[str | dict] = [person, person, _chat(llm, "Pick a year."), "The capital of France is"]
    outs = llm.generate(prompts, [free, seeded, digits, free], use_tqdm=False)
    pair: list[str | dict] = [person, "The capital of France is"]
    alone = llm.generate(pair, free, use_tqdm=False)
    # Unconstrained rows are untouched by their constrained neighbours.
    assert outs[0].outputs[0].token_ids == alone[0].outputs[0].token_ids
    assert outs[3].outputs[0].token_ids == alone[1].outputs[0].token_ids
    # n=2 with a seed: both choices valid, and the same again with the same seed.
    assert len(outs[1].outputs) == 2
    for choice in outs[1].outputs:
        assert choice.finish_reason == "stop", choice
        _check_person(choice.text)
    again = llm.generate([person], seeded, use_tqdm=False)[0]
    assert [c.token_ids for c in again.outputs] == [c.token_ids for c in outs[1].outputs]
    # Logprobs are those of the constrained distribution: every finite entry is a digit.
    out = outs[2].outputs[0]
    assert out.logprobs is not None
    assert re.fullmatch(r"[0-9]{4}", out.text) and len(out.logprobs) == len(out.token_ids)
    tok = llm.get_tokenizer()
    for token, entry in zip(out.token_ids, out.logprobs):
        assert entry[token].logprob > float("-inf")
        for token_id, lp in entry.items():
            if lp.logprob > float("-inf"):
                assert tok.decode([token_id]).strip().isdigit(), (token_id, lp)
        assert sum(2.718281828 ** lp.logprob for lp in entry.values()) <= 1.0 + 1e-4


def test_invalid_specs_raise_clear_errors_and_engine_keeps_serving(llm: LLM) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"json": {"type": "objekt"}}, "invalid JSON schema"), ({"json": "{not json"}, "invalid JSON schema"),
        ({"regex": "a(b"}, "invalid regex"), ({"grammar": 'root ::= "a" ('}, "invalid grammar")]
    for so, message in cases:
        with pytest.raises(ValueError, match=message):
            llm.generate(["Hi"], SamplingParams(max_tokens=4, structured_outputs=StructuredOutputsParams(**so)),
                         use_tqdm=False)
    assert not llm.engine.has_unfinished_requests()
    out = _gen(llm, _chat(llm, "Yes or no?"), choice=["yes", "no"])
    assert out.text in ("yes", "no")


def test_compile_cache_and_auto_fallback(llm: LLM) -> None:
    manager = llm.engine.structured_output
    params = StructuredOutputsParams(json=dict(SCHEMA, title="cache-test"))
    hits = manager.cache_hits
    first = manager.compile(params)
    second = manager.compile(StructuredOutputsParams(json=json.dumps(dict(SCHEMA, title="cache-test"))))
    assert second is not first  # dict and text are different specs ...
    assert manager.compile(StructuredOutputsParams(json=dict(SCHEMA, title="cache-test"))) is first  # ... a hit
    assert manager.cache_hits == hits + 1
    # auto: a Lark grammar xgrammar cannot parse compiles on llguidance.
    compiled = manager.compile(StructuredOutputsParams(grammar='start: "yes" | "no"'))
    assert compiled.backend == "guidance"


def test_grammar_still_compiling_waits_without_blocking(llm: LLM, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = llm.engine
    manager = engine.structured_output
    pending: Future = Future()
    failing: Future = Future()
    futures = iter([pending, failing])
    monkeypatch.setattr(manager, "compile_future", lambda params: next(futures))
    so = StructuredOutputsParams(choice=["yes", "no"])
    engine.add_request("slow", _chat(llm, "Yes or no?"), SamplingParams(temperature=0, structured_outputs=so))
    engine.add_request("bad", "Hi", SamplingParams(structured_outputs=so))
    engine.add_request("free", "The capital of France is", SamplingParams(temperature=0, max_tokens=3))
    finished = {}
    for _ in range(5):
        for out in engine.step():
            if out.finished:
                finished[out.request_id] = out
    assert set(finished) == {"free"}  # the others wait in the queue, in order
    failing.set_exception(ValueError("invalid JSON schema: test"))
    pending.set_result(manager._compile_now(so))
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                finished[out.request_id] = out
    assert finished["bad"].outputs[0].finish_reason == "abort"
    assert finished["slow"].outputs[0].text in ("yes", "no")


def test_preemption_keeps_the_grammar_valid(smollm2_gguf_path: str) -> None:
    # 5 blocks of 16 tokens for four short prompts whose JSON grows past 16 tokens: preemption is certain.
    llm = LLM(smollm2_gguf_path, dtype="float32", max_model_len=80, num_kv_blocks=6, enable_prefix_caching=False)
    person = "A person as JSON:"
    params = SamplingParams(temperature=0, max_tokens=70,
                            structured_outputs=StructuredOutputsParams(json=SCHEMA, disable_any_whitespace=True))
    outs = llm.generate([person] * 4, params, use_tqdm=False)
    assert llm.engine.scheduler.num_preemptions > 0
    for out in outs:
        assert out.outputs[0].finish_reason == "stop"
        _check_person(out.outputs[0].text)


def test_async_engine_raises_before_the_stream(llm: LLM) -> None:
    from vllm_cli.engine.async_engine import AsyncEngine

    async def run(engine: AsyncEngine) -> str:
        bad = SamplingParams(structured_outputs=StructuredOutputsParams(regex="(("))
        with pytest.raises(ValueError, match="invalid regex"):
            async for _ in engine.generate("Hi", bad):
                pass
        good = SamplingParams(temperature=0, structured_outputs=StructuredOutputsParams(choice=["red", "blue"]))
        text = ""
        async for out in engine.generate(_chat(llm, "Red or blue?")["prompt_token_ids"], good):
            text += out.outputs[0].text
        return text

    engine = AsyncEngine(llm.engine)
    try:
        assert asyncio.run(run(engine)) in ("red", "blue")
    finally:
        engine.shutdown()


@pytest.mark.skipif(os.environ.get("VLLM_CLI_TEST_CLI_HELP") == "0", reason="disabled")
def test_cli_flag_and_lazy_import() -> None:
    import subprocess
    import sys

    from vllm_cli.config import EngineArgs

    with pytest.raises(ValueError, match="structured_outputs_backend"):
        EngineArgs(structured_outputs_backend="outlines")
    code = ("import sys, vllm_cli.structured_output, vllm_cli.engine.llm_engine; "
            "assert 'xgrammar' not in sys.modules and 'llguidance' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
