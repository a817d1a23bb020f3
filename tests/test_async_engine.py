"""AsyncEngine: streamed deltas add up to the offline result, cancellation frees blocks,
bad input fails before queueing, an engine failure fails only the requests in flight."""

from __future__ import annotations

import asyncio

import pytest

from vllm_cli import SamplingParams
from vllm_cli.config import EngineArgs
from vllm_cli.engine.async_engine import AsyncEngine
from vllm_cli.engine.llm_engine import LLMEngine


@pytest.fixture(scope="module")
def engine(tiny_llama_dir):
    engine = AsyncEngine.from_engine_args(EngineArgs(model=tiny_llama_dir, num_kv_blocks=256))
    yield engine
    engine.shutdown()


def test_engine_is_built_on_the_step_loop_thread_and_start_errors_reach_the_caller(engine, tmp_path):
    import threading

    built_on = {}
    original = LLMEngine.__init__

    def recording_init(self, args):
        built_on["thread"] = threading.current_thread().name
        original(self, args)

    try:
        LLMEngine.__init__ = recording_init
        with pytest.raises(OSError):  # as the engine raised it, on the caller's thread
            AsyncEngine.from_engine_args(EngineArgs(model=str(tmp_path / "missing")))
    finally:
        LLMEngine.__init__ = original
    assert built_on["thread"] == "vllm-cli-engine"
    with pytest.raises(TypeError):
        AsyncEngine()


async def _collect(engine, prompt, params, request_id=None):
    text, tokens, finish = "", [], None
    async for out in engine.generate(prompt, params, request_id):
        choice = out.outputs[0]
        text += choice.text
        tokens += choice.token_ids
        finish = choice.finish_reason or finish
    return text, tokens, finish


def test_concurrent_streams_match_offline_results(engine):
    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    prompts = ["Hello", "The weather today", "Numbers: 1 2 3", "Once upon"]

    async def run():
        return await asyncio.gather(*(_collect(engine, p, params) for p in prompts))

    results = asyncio.run(run())
    tok = engine.tokenizer
    for (text, tokens, finish) in results:
        assert len(tokens) == 16 and finish == "length"
        assert text == tok.decode(tokens, skip_special_tokens=True)
    # Same as one at a time.
    alone = asyncio.run(_collect(engine, prompts[2], params))
    assert alone[1] == results[2][1]


def test_cancelled_stream_aborts_and_frees_blocks(engine):
    params = SamplingParams(temperature=0, max_tokens=200, ignore_eos=True)

    async def run():
        received = 0
        async for _ in engine.generate("A long story:", params, "cancel-me"):
            received += 1
            if received == 3:
                break  # closing the async generator aborts the request
        for _ in range(100):
            if not engine.engine.has_unfinished_requests():
                break
            await asyncio.sleep(0.02)

    asyncio.run(run())
    bm = engine.engine.block_manager
    assert not engine.engine.has_unfinished_requests()
    assert bm.num_free_blocks == bm.num_usable_blocks


def test_bad_input_raises_before_queueing(engine):
    async def run(prompt, params):
        async for _ in engine.generate(prompt, params):
            pass

    with pytest.raises(ValueError, match="maximum context length"):
        asyncio.run(run({"prompt_token_ids": [5] * 1000}, SamplingParams()))
    with pytest.raises(ValueError, match="logprobs"):
        asyncio.run(run("hi", SamplingParams(logprobs=50)))


def test_engine_failure_fails_requests_in_flight_and_keeps_serving(engine, monkeypatch):
    runner = engine.engine.runner
    original = runner.execute
    calls = {"n": 0}

    def failing_once(scheduled):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("simulated kernel failure")
        return original(scheduled)

    monkeypatch.setattr(runner, "execute", failing_once)
    params = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    with pytest.raises(RuntimeError, match="simulated kernel failure"):
        asyncio.run(_collect(engine, "Hello", params))
    text, tokens, finish = asyncio.run(_collect(engine, "Hello", params))
    assert len(tokens) == 4 and finish == "length"
    bm = engine.engine.block_manager
    assert bm.num_free_blocks == bm.num_usable_blocks
