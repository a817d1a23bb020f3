"""`vllm-cli bench`: throughput (with the transformers baseline), latency and serve, checked
through their JSON: exact token counts (ignore_eos), rates consistent with elapsed time, and
`bench serve` against a real `vllm-cli serve` subprocess with no failed requests. The metrics
maths is checked against a small in-test aiohttp server whose timing and failures we control."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
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
            run = await serving.benchmark(f"http://127.0.0.1:{port}/v1/completions", "fake", requests,
                                          serving.LoadSpec(max_concurrency=2))
            return serving.metrics(run)
        finally:
            await runner.cleanup()

    r = asyncio.run(main())
    assert (r["completed"], r["failed"], len(r["errors"])) == (5, 1, 6)
    assert "HTTP 500" in r["errors"][-1] and "boom" in r["errors"][-1] and r["errors"][:5] == [""] * 5
    assert (r["total_input_tokens"], r["total_output_tokens"]) == (50, 25)
    assert state["peak"] == 2 == r["max_concurrent_requests"]  # --max-concurrency holds, and the client saw it
    assert sum(q > gap for q in r["queue_times"]) >= 3  # 3 of the 5 waited for a slot
    assert r["generated_texts"][0] == "t0t1t2t3t4"
    assert r["request_throughput"] == pytest.approx(5 / r["duration"])
    assert r["output_throughput"] == pytest.approx(25 / r["duration"])
    assert r["duration"] >= 3 * 5 * gap  # 5 requests, 2 at a time: at least 3 rounds of 5 chunks
    assert all(len(itl) == 4 for itl in r["itls"][:5])
    assert r["mean_ttft_ms"] >= gap * 1000 and r["mean_itl_ms"] >= gap * 1000 * 0.9
    # TPOT is (e2e - TTFT) / (output tokens - 1) per request; here the 4 gaps after the first token.
    assert r["mean_tpot_ms"] == pytest.approx(r["mean_itl_ms"], rel=0.2)
    assert r["mean_e2el_ms"] >= r["mean_ttft_ms"] + 4 * gap * 1000 * 0.9


# ----- serving: arrivals, goodput and peaks (no server) -----

def _gaps(times: list[float]) -> np.ndarray:
    return np.diff([0.0, *times])


def test_arrival_times_rate_and_burstiness():
    from vllm_cli.benchmarks.serving import LoadSpec, arrival_times

    assert arrival_times(LoadSpec(), 5) == [0.0] * 5  # inf: all at once
    poisson = arrival_times(LoadSpec(request_rate=4, seed=1), 400)
    assert poisson == arrival_times(LoadSpec(request_rate=4, seed=1), 400)
    assert poisson != arrival_times(LoadSpec(request_rate=4, seed=2), 400)
    assert poisson[-1] == pytest.approx(400 / 4) and all(np.diff(poisson) >= 0)  # rescaled to n / rate, as vLLM
    # Gamma gaps of shape k have a coefficient of variation 1 / sqrt(k): burstier below 1, evener above.
    for burstiness, cv in ((1.0, 1.0), (0.25, 2.0), (4.0, 0.5)):
        gaps = _gaps(arrival_times(LoadSpec(request_rate=10, burstiness=burstiness, seed=0), 20000))
        assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.1), burstiness
        assert gaps.mean() == pytest.approx(0.1)
    even = _gaps(arrival_times(LoadSpec(request_rate=5, burstiness=math.inf), 10))
    assert even == pytest.approx([0.2] * 10)


def test_arrival_times_ramp_up():
    from vllm_cli.benchmarks.serving import LoadSpec, arrival_times, request_rates

    linear = LoadSpec(ramp_up_strategy="linear", ramp_up_start_rps=2, ramp_up_end_rps=10, burstiness=math.inf)
    assert request_rates(linear, 5) == pytest.approx([2, 4, 6, 8, 10])
    assert _gaps(arrival_times(linear, 5)) == pytest.approx([1 / 2, 1 / 4, 1 / 6, 1 / 8, 1 / 10])  # not rescaled
    exponential = dataclasses.replace(linear, ramp_up_strategy="exponential", ramp_up_end_rps=32)
    assert request_rates(exponential, 5) == pytest.approx([2, 4, 8, 16, 32])
    assert _gaps(arrival_times(exponential, 5)) == pytest.approx([1 / 2, 1 / 4, 1 / 8, 1 / 16, 1 / 32])
    # Poisson gaps around a ramp: the second half, at higher rates, comes faster.
    gaps = _gaps(arrival_times(dataclasses.replace(linear, burstiness=1.0, ramp_up_end_rps=50), 2000))
    assert gaps[:200].mean() > 4 * gaps[-200:].mean()
    for bad, match in ((dataclasses.replace(linear, request_rate=4), "leave --request-rate out"),
                       (dataclasses.replace(linear, ramp_up_end_rps=None), "needs --ramp-up-start-rps"),
                       (dataclasses.replace(linear, ramp_up_start_rps=20), "ramp-up rates"),
                       (LoadSpec(burstiness=0), "--burstiness"), (LoadSpec(request_rate=0), "--request-rate")):
        with pytest.raises(ValueError, match=match):
            bad.check()
    linear.check()


def test_goodput_and_peaks_from_outcomes():
    from vllm_cli.benchmarks.serving import Outcome, RunOutput, metrics, parse_goodput

    assert parse_goodput(["ttft:500", "tpot:50"]) == parse_goodput(["ttft:500 tpot:50"]) == {"ttft": 500, "tpot": 50}
    for bad in (["ttft=5"], ["itl:5"], ["ttft:-1"]):
        with pytest.raises(ValueError, match="--goodput"):
            parse_goodput(bad)
    # vLLM's one flag with several values, as Click reads it: one value a flag.
    from vllm_cli.cli.bench import goodput_args
    assert goodput_args(["M", "--goodput", "ttft:5", "tpot:6", "--seed", "1"]) == [
        "M", "--goodput", "ttft:5", "--goodput", "tpot:6", "--seed", "1"]
    assert goodput_args(["--goodput", "ttft:5", "M"]) == ["--goodput", "ttft:5", "M"]  # MODEL after it: not an SLO
    assert goodput_args(["--goodput", "--seed", "1"]) == ["--goodput", "--seed", "1"]  # Click reports it

    def done(start: float, ttft: float, latency: float, tokens: int) -> Outcome:
        itl = [(latency - ttft) / (tokens - 1)] * (tokens - 1) if tokens > 1 else []
        return Outcome(True, 4, tokens, ttft, latency, itl, start_time=start)
    # TPOT (e2e - ttft) / (tokens - 1): 0.01, 0.05, 0.01, and 0 for a one-token request.
    outcomes = [done(0.0, 0.1, 0.14, 5), done(0.05, 0.3, 0.5, 5), done(1.2, 0.9, 0.94, 5), done(1.3, 0.2, 0.2, 1),
                Outcome(error="HTTP 500")]
    run = RunOutput(outcomes, duration=2.0, rps_change_events=[])
    assert metrics(run)["request_goodput"] is None
    assert metrics(run, goodput={"ttft": 250})["request_goodput"] == 2 / 2.0  # 0.1 and 0.2 s
    assert metrics(run, goodput={"ttft": 500, "tpot": 20})["request_goodput"] == 2 / 2.0  # the 0.1 and the 1-token one
    assert metrics(run, goodput={"e2el": 100})["request_goodput"] == 0
    r = metrics(run, percentile_metrics=["tpot"], percentiles=[50, 99.9])
    assert r["mean_tpot_ms"] == pytest.approx((10 + 50 + 10) / 3) and "p99.9_tpot_ms" in r and "mean_ttft_ms" not in r
    assert r["max_concurrent_requests"] == 2  # [0, 0.14) and [0.05, 0.55) overlap; [1.2, 2.14) and [1.3, 1.5) too
    assert r["max_output_tokens_per_s"] == 10  # the first second holds the first two requests' 5 tokens each
    assert r["output_lens"] == [5, 5, 5, 1, 0] and r["errors"][-1] == "HTTP 500"


def test_custom_jsonl_and_sonnet_datasets(tmp_path):
    from vllm_cli.benchmarks.datasets import SONNET_BASE_PROMPT, sonnet_requests

    custom = tmp_path / "c.jsonl"
    custom.write_text('{"prompt": "a b", "output_tokens": 7}\n{"prompt": "c"}\n')
    assert [(r.prompt, r.output_len) for r in load_dataset(str(custom), 5, default_output_len=256)] == [
        ("a b", 7), ("c", 256)]

    class Words:  # one token a word; the chat template adds 3 tokens
        def encode(self, text: str) -> list[int]:
            return [len(w) for w in text.split()]

        def chat_ids(self, text: str) -> list[int]:
            return [0, 0, *self.encode(text), 0]

    poem = tmp_path / "sonnet.txt"
    poem.write_text("".join(f"line {i} of the poem\n" for i in range(40)))  # 5 tokens a line
    base = len(Words().chat_ids(SONNET_BASE_PROMPT))
    got = sonnet_requests(str(poem), 6, input_len=base + 50, output_len=9, prefix_len=base + 20, tokenizer=Words(),
                          chat_format=False, seed=1)
    assert len(got) == 6 and all(r.output_len == 9 and r.prompt_len == base + 50 for r in got)
    assert all(r.prompt.startswith(SONNET_BASE_PROMPT + "line 0 of the poem\nline 1 of the poem\n"
                                   "line 2 of the poem\nline 3 of the poem\n") for r in got)  # 20 tokens: 4 lines
    assert len({r.prompt for r in got}) > 1  # the rest drawn at random
    ids = sonnet_requests(str(poem), 2, base + 50, 9, base + 20, Words(), chat_format=True, seed=1)
    assert ids[0].prompt == Words().chat_ids(got[0].prompt)  # the same draw, as templated token ids
    with pytest.raises(ValueError, match="above the base prompt"):
        sonnet_requests(str(poem), 1, base, 9, 0, Words(), chat_format=False)


def test_missing_plot_library_is_one_line(monkeypatch):
    from vllm_cli.benchmarks import sweep

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(OSError, match=r"matplotlib: pip install 'vllm-cli\[plot\]' \(or pass --no-plot\)"):
        sweep.require_plot_libraries(files=True, terminal=False)
    monkeypatch.setitem(sys.modules, "plotext", None)
    with pytest.raises(OSError, match="--terminal-plot draws with plotext"):
        sweep.require_plot_libraries(files=False, terminal=True)


# ----- serving: a real `vllm-cli serve` (SmolLM2) -----

API_KEY = "bench-secret"

# The keys of `vllm bench serve --save-result --save-detailed` (vllm/benchmarks/serve.py) with
# --percentile-metrics ttft,tpot,itl,e2el --metric-percentiles 50,99, no ramp-up.
VLLM_SERVE_KEYS = [
    "date", "endpoint_type", "backend", "label", "model_id", "tokenizer_id", "num_prompts", "request_rate",
    "burstiness", "max_concurrency", "duration", "completed", "failed", "total_input_tokens", "total_output_tokens",
    "request_throughput", "request_goodput", "output_throughput", "total_token_throughput", "input_lens",
    "output_lens", "ttfts", "itls", "latencies", "start_times", "queue_times", "generated_texts", "errors",
    "max_output_tokens_per_s", "max_concurrent_requests", "rtfx",
    *(f"{stat}_{metric}_ms" for metric in ("ttft", "tpot", "itl", "e2el")
      for stat in ("mean", "median", "std", "p50", "p99")),
]


@pytest.fixture(scope="module")
def server(smollm2_gguf_path, tmp_path_factory):
    # timeout: a busy machine can take minutes to import torch and load the model.
    server = launch_server(smollm2_gguf_path, tmp_path_factory.mktemp("serve") / "serve.log", "--max-model-len",
                           "1024", "--api-key", API_KEY, kv_cache_memory="64MiB", timeout=600)
    yield server.url
    server.stop()


def serve_bench(tmp_path: Path, server: str, *args: str, command: str = "serve") -> dict:
    return bench(tmp_path, command, "--base-url", server, "--api-key", API_KEY, *args)


def test_serve_vllm_keys_goodput_and_saved_file(server, tmp_path):
    r = serve_bench(tmp_path, server, "--num-prompts", "3", "--input-len", "12", "--output-len", "3",
                    "--vocab-size", "40000", "--request-rate", "50", "--burstiness", "0.5",
                    "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,99",
                    "--goodput", "ttft:1e9", "tpot:1e9")  # vLLM's space-separated form
    assert list(r) == VLLM_SERVE_KEYS
    assert (r["completed"], r["failed"]) == (3, 0), r["errors"]
    assert r["input_lens"] == [12] * 3 and r["output_lens"] == [3] * 3 and r["total_output_tokens"] == 9
    assert r["request_goodput"] == r["request_throughput"] == pytest.approx(3 / r["duration"])  # every request meets it
    assert (r["request_rate"], r["burstiness"], r["max_concurrency"], r["backend"]) == (50, 0.5, None, "openai")
    assert r["model_id"] == r["tokenizer_id"] and r["model_id"].endswith(".gguf")
    assert all(t for t in r["generated_texts"]) and all(len(itl) >= 1 for itl in r["itls"])
    assert 0 < r["p50_ttft_ms"] <= r["p99_ttft_ms"] <= r["mean_e2el_ms"] * 3

    # vLLM's --save-result names the file after label, rate and model, in --result-dir.
    out = tmp_path / "results"
    result = CliRunner().invoke(app, ["bench", "serve", "--base-url", server, "--api-key", API_KEY, "--num-prompts",
                                      "1", "--input-len", "4", "--output-len", "2", "--save-result", "--result-dir",
                                      str(out), "--label", "mine"])
    assert result.exit_code == 0, result.output
    (saved,) = out.iterdir()
    assert saved.name.startswith("mine-infqps-SmolLM2-135M-Instruct.Q4_1.gguf-") and saved.suffix == ".json"
    assert json.loads(saved.read_text())["label"] == "mine"


def test_serve_max_concurrency_and_ramp_up(server, tmp_path):
    r = serve_bench(tmp_path, server, "--num-prompts", "6", "--input-len", "8", "--output-len", "3",
                    "--max-concurrency", "2")
    assert (r["completed"], r["failed"]) == (6, 0), r["errors"]
    assert r["max_concurrent_requests"] == 2 and r["max_concurrency"] == 2
    assert sum(q > 0.01 for q in r["queue_times"]) >= 3  # the rest waited for a slot

    r = serve_bench(tmp_path, server, "--num-prompts", "4", "--input-len", "8", "--output-len", "2",
                    "--ramp-up-strategy", "linear", "--ramp-up-start-rps", "4", "--ramp-up-end-rps", "10")
    assert (r["completed"], r["ramp_up_strategy"], r["ramp_up_start_rps"], r["ramp_up_end_rps"]) == (4, "linear", 4, 10)
    assert [e["rps"] for e in r["rps_change_events"]] == [4, 5, 6, 7, 8, 9, 10]  # rates 4, 6, 8, 10
    # Sent at the ramp's gaps (Poisson, seeded): the last no sooner than the sum of the smallest gaps allows.
    assert r["start_times"] == sorted(r["start_times"]) and r["start_times"][-1] > 0

    bad = CliRunner().invoke(app, ["bench", "serve", "--base-url", server, "--api-key", API_KEY, "--request-rate", "2",
                                   "--ramp-up-strategy", "linear", "--ramp-up-start-rps", "1",
                                   "--ramp-up-end-rps", "2"])
    assert bad.exit_code == 1 and "leave --request-rate out" in bad.output


def test_serve_asks_for_the_api_key(server, tmp_path):
    result = CliRunner().invoke(app, ["bench", "serve", "--base-url", server, "--num-prompts", "1"],
                                env={"OPENAI_API_KEY": None, "VLLM_API_KEY": None})
    assert result.exit_code == 1
    assert "401 Unauthorized: pass --api-key KEY (or set OPENAI_API_KEY)" in result.output
    result = CliRunner().invoke(app, ["bench", "serve", "--base-url", server, "--num-prompts", "1", "--input-len", "4",
                                      "--output-len", "1"], env={"OPENAI_API_KEY": API_KEY})
    assert result.exit_code == 0, result.output


def test_serve_datasets(server, tmp_path, smollm2_tokenizer, smollm2_gguf_path):
    from vllm_cli.tokenizer import apply_chat_template, resolve_chat_template

    def conv(q: str, a: str) -> dict:
        return {"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]}

    replies = ["Paris is the capital.", "Two plus two is four."]
    sharegpt = tmp_path / "sg.json"
    sharegpt.write_text(json.dumps([conv("Capital of France?", replies[0]), conv("2+2?", replies[1])]))
    r = serve_bench(tmp_path, server, "--dataset-name", "sharegpt", "--dataset-path", str(sharegpt),
                    "--num-prompts", "5", "--ignore-eos")
    # The reply's length in tokens (counted by the server's /tokenize) is the output length.
    assert r["output_lens"] == [len(smollm2_tokenizer.encode(a, add_special_tokens=False)) for a in replies]

    prompts = ["Name a colour.", "Say hi."]
    custom = tmp_path / "custom.jsonl"
    custom.write_text("\n".join(json.dumps({"prompt": p, "output_tokens": n}) for p, n in zip(prompts, (2, 3))))
    r = serve_bench(tmp_path, server, "--dataset-path", str(custom), "--ignore-eos")  # custom: inferred from the file
    template = resolve_chat_template(smollm2_tokenizer, None)[0]
    chat_lens = [len(apply_chat_template(smollm2_tokenizer, [{"role": "user", "content": p}], template))
                 for p in prompts]
    assert r["output_lens"] == [2, 3] and r["input_lens"] == chat_lens  # through the chat template, as vLLM
    r = serve_bench(tmp_path, server, "--dataset-name", "custom", "--dataset-path", str(custom), "--ignore-eos",
                    "--skip-chat-template")
    assert all(raw < chat for raw, chat in zip(r["input_lens"], chat_lens))

    poem = tmp_path / "sonnet.txt"
    poem.write_text("".join(f"Shall I compare thee to a summer's day, line {i}?\n" for i in range(30)))
    r = serve_bench(tmp_path, server, "--dataset-name", "sonnet", "--dataset-path", str(poem), "--num-prompts", "2",
                    "--sonnet-input-len", "130", "--sonnet-prefix-len", "70", "--sonnet-output-len", "2",
                    "--ignore-eos", "--tokenizer", smollm2_gguf_path)  # counted here, not by /tokenize
    assert r["output_lens"] == [2, 2], r["errors"]
    assert all(90 < n <= 130 for n in r["input_lens"]), r["input_lens"]

    with_bad = CliRunner().invoke(app, ["bench", "serve", "--base-url", server, "--api-key", API_KEY,
                                        "--dataset-name", "sharegpt", "--dataset-path", str(custom)])
    assert with_bad.exit_code == 1 and "not ShareGPT JSON" in with_bad.output


def test_serve_chat_backend(server, tmp_path):
    r = serve_bench(tmp_path, server, "--backend", "openai-chat", "--num-prompts", "2", "--input-len", "6",
                    "--output-len", "3")
    assert (r["completed"], r["failed"], r["backend"]) == (2, 0, "openai-chat"), r["errors"]
    assert r["total_output_tokens"] == 6 and r["total_input_tokens"] > 2 * 6  # the chat template adds tokens
    bad = CliRunner().invoke(app, ["bench", "serve", "--base-url", server, "--api-key", API_KEY,
                                   "--backend", "openai-chat", "--endpoint", "/v1/completions"])
    assert bad.exit_code == 1 and "does not speak /v1/completions" in bad.output


def test_sweep_writes_table_json_and_plots(server, tmp_path):
    result = CliRunner().invoke(app, [
        "bench", "sweep", "--base-url", server, "--api-key", API_KEY, "--request-rates", "20,inf", "--num-prompts", "2",
        "--input-len", "6", "--output-len", "2", "--metric-percentiles", "50,90", "--result-dir", str(tmp_path),
        "--result-filename", "sweep.json", "--terminal-plot"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "Sweep:" in result.output and "median TTFT (ms)" in result.output  # the table
    assert "request rate (req/s): 20, inf" in result.output and "│" in result.output  # the terminal plot
    summary = json.loads((tmp_path / "sweep.json").read_text())
    assert summary["swept"] == "request_rate" and summary["values"] == ["20", "inf"]
    assert [r["request_rate"] for r in summary["results"]] == [20, "inf"]
    assert all((r["completed"], r["failed"]) == (2, 0) for r in summary["results"])
    assert (tmp_path / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = (tmp_path / "sweep.svg").read_text()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg and "Time to first token" in svg

    bad = CliRunner().invoke(app, ["bench", "sweep", "--base-url", server, "--max-concurrencies", "1,0.5"])
    assert bad.exit_code == 1 and "--max-concurrencies takes comma-separated whole numbers" in bad.output
