"""Issue 18, the server under load, faults, bad input and fuzzing, at CI size.

The phases are the functions of benchmarks/load_and_faults.py, which runs them bigger (figures in
benchmarks/RESULTS.md); here each runs once against one SmolLM2 server (max_model_len 512), whose
last test drains it with SIGTERM. A tensor-parallel server on the tiny Llama loses a worker
mid-stream, and an in-process app shows that tokenizing does not hold up the event loop.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import aiohttp
import pytest

from conftest import launch_server

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import load_and_faults as phases  # noqa: E402

pytestmark = pytest.mark.slow

MAX_MODEL_LEN = 512


@pytest.fixture(scope="module")
def server(smollm2_gguf_path, tmp_path_factory):
    s = launch_server(smollm2_gguf_path, tmp_path_factory.mktemp("hardening") / "log",
                      "--max-model-len", str(MAX_MODEL_LEN))
    yield s
    if s.proc.poll() is None:
        s.stop()


def _check(phase: phases.Phase) -> None:
    print(phase)
    assert phase.ok, str(phase)


def test_burst_of_64_streams(server):
    _check(asyncio.run(phases.burst(server.url, requests=64, max_tokens=8)))


def test_disconnect_storm_leaves_nothing_running(server):
    _check(asyncio.run(phases.disconnect_storm(server.url, streams=48, settle_s=10)))


def test_bad_input_beside_good_traffic(server):
    _check(asyncio.run(phases.bad_input(server.url, MAX_MODEL_LEN, good=8)))


def test_sustained_mixed_traffic_rss_and_health(server):
    _check(asyncio.run(phases.sustained(server.url, requests=60, rate=8, server_pid=server.proc.pid)))


def test_schemathesis_no_5xx_and_conforming_responses(server):
    """Deterministic generation (the same cases every run), fuzzing phase only, at a CI budget (a few
    minutes of 2 cores at most); benchmarks/load_and_faults.py runs the larger one."""
    _check(phases.fuzz(server.url, examples=5, phases="fuzzing", max_time_s=60))


def test_openapi_describes_request_bodies():
    """What the fuzzer generates from: /openapi.json's request bodies carry the protocol models' ranges."""
    from vllm_cli.entrypoints.openai.api_server import openapi_schema

    spec = openapi_schema(api_key_required=False)
    schemas = spec["components"]["schemas"]
    chat = schemas["ChatCompletionRequest"]
    assert "messages" in chat["required"]
    assert chat["properties"]["messages"]["minItems"] == 1
    n = next(s for s in chat["properties"]["n"]["anyOf"] if s.get("type") == "integer")
    assert (n["minimum"], n["maximum"]) == (1, 128)
    assert schemas["ChatMessage"]["properties"]["role"]["enum"] == ["system", "developer", "user", "assistant", "tool"]
    assert {b["required"][0] for b in schemas["TokenizeRequest"]["oneOf"]} == {"prompt", "messages"}
    assert "415" in spec["paths"]["/v1/completions"]["post"]["responses"]


def test_zz_sigterm_drains_in_flight_requests_refuses_new_ones_exits_0(server):
    """Last of the module: it stops the server."""
    _check(asyncio.run(phases.drain(server.url, server.proc, streams=4, max_tokens=16)))
    assert "Server stopped" in server.log_tail()


def test_worker_killed_mid_stream_errors_the_client_and_exits_1(tiny_llama_dir, tmp_path):
    server = launch_server(tiny_llama_dir, tmp_path / "serve.log", "--tensor-parallel-size", "2")
    try:
        workers = subprocess.run(["pgrep", "-P", str(server.proc.pid)], capture_output=True, text=True).stdout.split()
        assert len(workers) == 1

        async def stream_and_kill() -> str:
            body = {"prompt": "Once upon a time", "max_tokens": 480, "ignore_eos": True, "stream": True}
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
                async with session.post(f"{server.url}/v1/completions", json=body) as response:
                    assert response.status == 200
                    text = []
                    async for line in response.content:
                        text.append(line.decode())
                        if len(text) == 2:
                            os.kill(int(workers[0]), signal.SIGKILL)
                    return "".join(text)

        try:
            text = asyncio.run(stream_and_kill())
        except aiohttp.ClientPayloadError:  # the connection dropped: an error too, and no hang
            text = ""
        if text:
            assert '"error"' in text and "worker rank 1" in text, text[-500:]
            assert not re.search(r'"finish_reason":\s*"length"', text)  # it did not run to the end
        assert server.proc.wait(60) == 1
        log = server.log_tail()
        assert re.search(r"Error: the engine stopped: tensor-parallel worker rank 1 \(pid \d+\) died", log), log
        assert "Traceback" not in log
    finally:
        if server.proc.poll() is None:
            server.proc.kill()


def test_tokenizing_runs_off_the_event_loop():
    """A tokenizer call that blocks until released: /health must answer meanwhile (on the event
    loop, it could not until the tokenizer returned)."""
    from aiohttp.test_utils import TestClient, TestServer

    from vllm_cli.config import EngineArgs
    from vllm_cli.engine.async_engine import AsyncEngine
    from vllm_cli.engine.llm_engine import EngineStats, LLMEngine
    from vllm_cli.entrypoints.openai.api_server import build_app

    entered, release, returned = threading.Event(), threading.Event(), threading.Event()

    class BlockingTokenizer:
        chat_template = None

        def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
            entered.set()
            release.wait(10)  # on the event loop, this would hold up everything for 10 s
            returned.set()
            return [1] * len(text.split())

        def decode(self, ids: list[int]) -> str:
            return " ".join("x" for _ in ids)

        def __len__(self) -> int:
            return 100

    class IdleEngine(LLMEngine):
        def __init__(self):
            self.tokenizer, self.args, self.model_name, self.served_model_names = (
                BlockingTokenizer(), EngineArgs(), "idle", ["idle"])
            self.max_model_len, self.vocab_size, self.kv_cache_tokens = 64, 100, 64
            self.requests: dict = {}

        def has_unfinished_requests(self):
            return False

        def check_health(self):
            pass

        def stats(self):
            return EngineStats(0, 0, 0.0, 4, 0, 0, 0, 0, 0)

    async def main():
        async_engine = AsyncEngine(IdleEngine())
        try:
            async with TestClient(TestServer(build_app(async_engine))) as http:
                tokenizing = asyncio.create_task(http.post("/tokenize", json={"prompt": "one two three"}))
                assert await asyncio.to_thread(entered.wait, 10)
                health = await asyncio.wait_for(http.get("/health"), 30)
                answered_while_blocked = not returned.is_set()
                release.set()
                assert health.status == 200 and answered_while_blocked
                tokenized = await tokenizing
                assert (await tokenized.json())["tokens"] == [1, 1, 1]
        finally:
            release.set()
            async_engine.shutdown()

    asyncio.run(main())
