"""`vllm-cli bench`: throughput (with the transformers baseline), latency and serve, checked
through their JSON: exact token counts (ignore_eos), rates consistent with elapsed time, and
`bench serve` against a real `vllm-cli serve` subprocess with no failed requests. The metrics
maths is checked against a small in-test aiohttp server whose timing and failures we control."""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
from pathlib import Path

import pytest

from conftest import launch_server
from typer.testing import CliRunner

from vllm_cli.benchmarks.datasets import BenchRequest, load_dataset, random_requests
from vllm_cli.cli.main import app

REPO = Path(__file__).resolve().parents[1]
SMALL_KV = ["--kv-cache-memory", "64MiB"]


def bench(tmp_path: Path, *args: str) -> dict:
    """Run `vllm-cli bench ...` in this process; return its --output-json."""
    out = tmp_path / f"result-{time.monotonic_ns()}.json"
    result = CliRunner().invoke(app, ["bench", *args, "--output-json", str(out)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return json.loads(out.read_text())


def assert_rates(r: dict, num: int, input_len: int, output_len: int) -> None:
    assert r["num_requests"] == num
    assert r["total_output_tokens"] == num * output_len
    assert r["total_input_tokens"] == num * input_len
    assert r["total_num_tokens"] == num * (input_len + output_len)
    t = r["elapsed_time"]
    assert t > 0
    assert r["requests_per_second"] == pytest.approx(num / t)
    assert r["tokens_per_second"] == pytest.approx(r["total_num_tokens"] / t)
    assert r["output_throughput"] == pytest.approx(r["total_output_tokens"] / t)


# ----- workloads -----

def test_random_prompts_are_seeded_token_ids_of_exact_length():
    a = random_requests(4, 10, 7, vocab_size=50, seed=3, prefix_len=5)
    assert a == random_requests(4, 10, 7, vocab_size=50, seed=3, prefix_len=5)
    assert a != random_requests(4, 10, 7, vocab_size=50, seed=4, prefix_len=5)
    assert all(len(r.prompt) == r.prompt_len == 15 and r.output_len == 7 for r in a)
    assert all(0 <= t < 50 for r in a for t in r.prompt)
    assert len({tuple(r.prompt[:5]) for r in a}) == 1 and len({tuple(r.prompt) for r in a}) == 4


def test_jsonl_and_sharegpt_datasets(tmp_path):
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('"plain text"\n{"prompt": [1, 2, 3], "output_len": 5}\n{"prompt": "hi", "max_tokens": 9}\n')
    got = load_dataset(str(jsonl), 10)
    assert [(r.prompt, r.prompt_len, r.output_len) for r in got] == [
        ("plain text", None, 128), ([1, 2, 3], 3, 5), ("hi", None, 9)]
    assert [r.output_len for r in load_dataset(str(jsonl), 2, output_len=4)] == [4, 4]

    sharegpt = tmp_path / "sg.json"
    conv = lambda q, a: {"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]}  # noqa: E731
    sharegpt.write_text(json.dumps([conv("q one", "a b c d e"), {"conversations": []}, conv("q", "too short"),
                                    conv("q three", "x y z w")]))
    words = lambda s: list(range(len(s.split())))  # noqa: E731  (a one-token-per-word "tokenizer")
    got = load_dataset(str(sharegpt), 5, encode=words)
    assert [(r.prompt, r.prompt_len, r.output_len) for r in got] == [("q one", 2, 5), ("q three", 2, 4)]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    with pytest.raises(ValueError, match="neither"):
        load_dataset(str(bad), 1)


# ----- offline benchmarks -----

@pytest.fixture(scope="module")
def config_only_dir(tmp_path_factory) -> str:
    """Shapes without weights: a tiny LlamaConfig alone, for --load-format dummy."""
    import transformers

    path = tmp_path_factory.mktemp("config-only")
    transformers.LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256
                             ).save_pretrained(path)
    assert os.listdir(path) == ["config.json"]
    return str(path)


def test_throughput_with_transformers_baseline(tiny_llama_dir, tmp_path):
    r = bench(tmp_path, tiny_llama_dir, "--num-prompts", "6", "--input-len", "12", "--output-len", "5",
              "--baseline", "transformers", *SMALL_KV)  # no subcommand: throughput is the default
    assert_rates(r, 6, 12, 5)
    assert_rates(r["baseline"], 6, 12, 5)
    assert r["baseline"]["name"] == "transformers"
    assert r["output_throughput_ratio"] == pytest.approx(r["output_throughput"] / r["baseline"]["output_throughput"])
    assert r["settings"]["dtype"] == "float32" and r["settings"]["num_prompts"] == 6
    assert r["versions"]["torch"] and r["versions"]["transformers"] and r["versions"]["vllm-cli"]
    assert r["device"]["type"] == "cpu"


def test_throughput_dummy_weights_config_only_with_shared_prefix(config_only_dir, tmp_path):
    r = bench(tmp_path, "throughput", config_only_dir, "--load-format", "dummy", "--num-prompts", "8",
              "--input-len", "8", "--prefix-len", "32", "--output-len", "4", "--max-num-seqs", "4", *SMALL_KV)
    assert_rates(r, 8, 40, 4)
    # At best every prompt after the first finds the 32-token prefix (2 blocks of 16) in the cache.
    assert 0 < r["prefix_cache_hit_rate"] <= 7 * 32 / (8 * 40) + 1e-9


def test_throughput_on_a_jsonl_dataset(tiny_llama_dir, tmp_path, smollm2_tokenizer):
    prompts = ["Hello there", "The capital of France is", "Once upon a time"]
    data = tmp_path / "prompts.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": p, "output_len": 3 + i}) for i, p in enumerate(prompts)))
    r = bench(tmp_path, "throughput", tiny_llama_dir, "--dataset", str(data), "--num-prompts", "10", *SMALL_KV)
    assert r["num_requests"] == 3 and r["total_output_tokens"] == 3 + 4 + 5
    assert r["total_input_tokens"] == sum(len(smollm2_tokenizer.encode(p)) for p in prompts)


def test_latency(config_only_dir, tmp_path):
    r = bench(tmp_path, "latency", config_only_dir, "--load-format", "dummy", "--batch-size", "2",
              "--input-len", "8", "--output-len", "4", "--num-iters-warmup", "1", "--num-iters", "3", *SMALL_KV)
    assert len(r["latencies"]) == 3 and r["avg_latency"] == pytest.approx(sum(r["latencies"]) / 3)
    p = r["percentiles"]
    assert min(r["latencies"]) <= p["50"] <= p["90"] <= p["99"] <= max(r["latencies"])


# ----- serving: the metrics maths against a fake server -----

def test_serve_metrics_against_a_fake_server(tmp_path):
    from aiohttp import web

    from vllm_cli.benchmarks import serving

    gap, state = 0.02, {"in_flight": 0, "peak": 0}

    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if body["prompt"] == [0]:
            return web.json_response({"error": {"message": "boom"}}, status=500)
        state["in_flight"] += 1
        state["peak"] = max(state["peak"], state["in_flight"])
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        n = body["max_tokens"]
        for i in range(n):
            await asyncio.sleep(gap)
            chunk = {"choices": [{"index": 0, "text": f"t{i}", "finish_reason": "length" if i == n - 1 else None}]}
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        usage = {"prompt_tokens": len(body["prompt"]), "completion_tokens": n, "total_tokens": n + len(body["prompt"])}
        await response.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\ndata: [DONE]\n\n".encode())
        state["in_flight"] -= 1
        return response

    async def main() -> dict:
        fake = web.Application()
        fake.router.add_post("/v1/completions", completions)
        runner = web.AppRunner(fake)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        requests = [BenchRequest([1] * 10, 10, 5) for _ in range(5)] + [BenchRequest([0], 1, 5)]
        try:
            return await serving.benchmark(f"http://127.0.0.1:{port}/v1", "/v1/completions", "fake", requests,
                                           warmup=None, request_rate=math.inf, max_concurrency=2)
        finally:
            await runner.cleanup()

    r = asyncio.run(main())
    assert (r["completed"], r["failed"], r["num_prompts"]) == (5, 1, 6)
    assert "HTTP 500" in r["errors"][-1] and "boom" in r["errors"][-1] and r["errors"][:5] == [""] * 5
    assert (r["total_input_tokens"], r["total_output_tokens"]) == (50, 25)
    assert state["peak"] == 2  # --max-concurrency holds
    assert r["request_throughput"] == pytest.approx(5 / r["duration"])
    assert r["output_throughput"] == pytest.approx(25 / r["duration"])
    assert r["duration"] >= 3 * 5 * gap  # 5 requests, 2 at a time: at least 3 rounds of 5 chunks
    assert all(len(itl) == 4 for itl in r["itls"][:5])
    assert r["mean_ttft_ms"] >= gap * 1000 and r["mean_itl_ms"] >= gap * 1000 * 0.9
    # TPOT is (e2e - TTFT) / (output tokens - 1) per request; here the 4 gaps after the first token.
    assert r["mean_tpot_ms"] == pytest.approx(r["mean_itl_ms"], rel=0.2)
    assert r["mean_e2el_ms"] >= r["mean_ttft_ms"] + 4 * gap * 1000 * 0.9


# ----- serving: a real `vllm-cli serve` -----

@pytest.fixture(scope="module")
def server(tiny_llama_dir, tmp_path_factory):
    server = launch_server(tiny_llama_dir, tmp_path_factory.mktemp("serve") / "serve.log", kv_cache_memory="64MiB")
    yield server.url
    server.stop()


def test_serve_against_vllm_cli_serve(server, tmp_path):
    r = bench(tmp_path, "serve", "--url", server, "--num-prompts", "12", "--input-len", "16", "--output-len", "6",
              "--request-rate", "40", "--max-concurrency", "4", "--vocab-size", "40000")
    assert (r["completed"], r["failed"]) == (12, 0), r["errors"]
    assert r["total_input_tokens"] == 12 * 16 and r["total_output_tokens"] == 12 * 6
    assert r["output_lens"] == [6] * 12 and r["input_lens"] == [16] * 12
    assert r["request_throughput"] == pytest.approx(12 / r["duration"])
    assert 0 < r["mean_ttft_ms"] <= r["mean_e2el_ms"] and r["mean_tpot_ms"] > 0 and r["p99_itl_ms"] > 0
    assert r["request_rate"] == 40 and r["max_concurrency"] == 4


def test_serve_chat_endpoint(server, tmp_path):
    r = bench(tmp_path, "serve", "--url", server, "--endpoint", "/v1/chat/completions", "--num-prompts", "4",
              "--input-len", "10", "--output-len", "5")
    assert (r["completed"], r["failed"]) == (4, 0), r["errors"]
    assert r["total_output_tokens"] == 20 and r["total_input_tokens"] > 4 * 10  # the chat template adds tokens
    assert r["request_rate"] == "inf"
