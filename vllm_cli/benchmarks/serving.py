"""`bench serve` / `bench sweep`: load on any OpenAI-compatible server (ours, vLLM, llama.cpp)
over streaming HTTP, measured and saved as vLLM's `vllm bench serve` does.

Requests arrive at `request_rate` with gamma-distributed gaps (`burstiness` 1: a Poisson
process; inf rate: all at once), or at a rate ramped from one value to another, at most
`max_concurrency` in flight. Per request: TTFT (send -> first output chunk), ITL (gaps between
output chunks), TPOT ((e2e - TTFT) / (output tokens - 1)) and e2e latency; the result has
vLLM's keys (`vllm_result`), so tools that read vLLM's files read ours.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aiohttp
import numpy as np

from vllm_cli.benchmarks.datasets import BenchRequest

CHAT_ENDPOINT = "/v1/chat/completions"
BACKENDS = ("openai", "openai-chat", "vllm")  # vLLM's names: vllm and openai both speak /v1/completions
PERCENTILE_METRICS = ("ttft", "tpot", "itl", "e2el")
GOODPUT_METRICS = ("ttft", "tpot", "e2el")
RAMP_UP_STRATEGIES = ("linear", "exponential")


class ServerError(OSError):
    """The server refused or could not be reached: one line for the CLI."""


class Unauthorized(ServerError):
    """HTTP 401: the server wants an API key (or another one)."""


def unauthorized(url: str) -> Unauthorized:
    return Unauthorized(f"{url} answered 401 Unauthorized: pass --api-key KEY (or set OPENAI_API_KEY)")


def is_chat(endpoint: str) -> bool:
    return endpoint.rstrip("/").endswith("chat/completions")


def base_url(url: str) -> str:
    url = url.rstrip("/")
    return url[:-3] if url.endswith("/v1") else url


# ----- the server, before the clock starts (plain blocking HTTP) -----


def get_json(url: str, body: dict | None = None, api_key: str | None = None, timeout: float = 120) -> Any:
    """GET (or POST `body`) `url` and return its JSON; errors become one ServerError line."""
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.load(response)
    except urllib.error.HTTPError as e:
        if e.code == 401:
            raise unauthorized(url) from None
        text = e.read().decode("utf-8", errors="replace")[:300]
        raise ServerError(f"{url} answered HTTP {e.code}: {text}") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise ServerError(f"cannot reach {url}: {getattr(e, 'reason', e)}") from None


def first_model(url: str, api_key: str | None = None) -> str:
    """The first model the server lists (vLLM's default for --model)."""
    models = get_json(f"{base_url(url)}/v1/models", api_key=api_key).get("data") or []
    if not models:
        raise ServerError(f"{base_url(url)}/v1/models lists no model")
    return models[0]["id"]


class ServerTokenizer:
    """A PromptTokenizer on the server's /tokenize (vLLM's and ours: `prompt` or `messages`)."""

    def __init__(self, url: str, model: str, api_key: str | None = None) -> None:
        self._url, self._model, self._api_key = f"{base_url(url)}/tokenize", model, api_key

    def _tokens(self, body: dict) -> list[int]:
        try:
            return list(get_json(self._url, {"model": self._model, **body}, self._api_key)["tokens"])
        except Unauthorized:
            raise
        except ServerError as e:
            raise ServerError(f"{e}; pass --tokenizer to count tokens here instead") from None

    def encode(self, text: str) -> list[int]:
        return self._tokens({"prompt": text, "add_special_tokens": False})

    def chat_ids(self, text: str) -> list[int]:
        return self._tokens({"messages": [{"role": "user", "content": text}], "add_generation_prompt": True})


# ----- arrivals -----


@dataclass
class LoadSpec:
    """How requests arrive: vLLM's --request-rate, --burstiness, --max-concurrency and ramp-up."""

    request_rate: float = math.inf
    burstiness: float = 1.0
    max_concurrency: int | None = None
    ramp_up_strategy: str | None = None
    ramp_up_start_rps: int | None = None
    ramp_up_end_rps: int | None = None
    seed: int = 0

    def check(self) -> None:
        """vLLM's rules, as ValueErrors naming the flag."""
        if not self.request_rate > 0:
            raise ValueError("--request-rate must be > 0 (inf: all at once)")
        if not self.burstiness > 0:
            raise ValueError("--burstiness must be > 0")
        if self.ramp_up_strategy is None:
            return
        if self.ramp_up_strategy not in RAMP_UP_STRATEGIES:
            raise ValueError(f"--ramp-up-strategy must be one of {', '.join(RAMP_UP_STRATEGIES)}")
        if math.isfinite(self.request_rate):
            raise ValueError("--ramp-up-strategy sets the rate: leave --request-rate out")
        start, end = self.ramp_up_start_rps, self.ramp_up_end_rps
        if start is None or end is None:
            raise ValueError("--ramp-up-strategy needs --ramp-up-start-rps and --ramp-up-end-rps")
        if not 0 < start <= end:  # vLLM takes 0 but then fails on the first request's rate
            raise ValueError("the ramp-up rates must satisfy 0 < --ramp-up-start-rps <= --ramp-up-end-rps")


def request_rates(load: LoadSpec, num_requests: int) -> list[float]:
    """The rate each request's gap is drawn at: constant, or ramped linearly / exponentially from
    the start rate (first request) to the end rate (last), as vLLM's _get_current_request_rate."""
    if load.ramp_up_strategy is None:
        return [load.request_rate] * num_requests
    start, end = float(load.ramp_up_start_rps or 0), float(load.ramp_up_end_rps or 0)
    progress = [i / max(num_requests - 1, 1) for i in range(num_requests)]
    if load.ramp_up_strategy == "linear":
        return [start + (end - start) * p for p in progress]
    return [start * (end / start) ** p for p in progress]


def arrival_times(load: LoadSpec, num_requests: int) -> list[float]:
    """When each request is sent, in seconds from the start (vLLM's get_request): cumulative gaps
    drawn from a gamma distribution of shape `burstiness` and mean 1 / rate (burstiness 1: Poisson
    arrivals; < 1 burstier; inf: evenly spaced). At a constant rate the gaps are rescaled so the
    last request goes out at num_requests / rate exactly, as vLLM does to steady the throughput."""
    rng = np.random.default_rng(load.seed)
    gaps = []
    for rate in request_rates(load, num_requests):
        if math.isinf(rate):
            gaps.append(0.0)
        elif math.isinf(load.burstiness):
            gaps.append(1.0 / rate)
        else:
            gaps.append(float(rng.gamma(shape=load.burstiness, scale=1.0 / (rate * load.burstiness))))
    times = np.cumsum(gaps).tolist() if gaps else []
    if load.ramp_up_strategy is None and times and times[-1] > 0:
        scale = num_requests / load.request_rate / times[-1]
        times = [t * scale for t in times]
    return times


# ----- one request -----


@dataclass
class Outcome:
    success: bool = False
    prompt_len: int = 0
    output_tokens: int = 0
    ttft: float = 0.0
    latency: float = 0.0
    itl: list[float] = field(default_factory=list)
    start_time: float = 0.0  # seconds from the benchmark's start, when the request was sent
    queue_time: float = 0.0  # seconds it waited for a --max-concurrency slot
    generated_text: str = ""
    error: str = ""


def request_body(endpoint: str, model: str, request: BenchRequest, ignore_eos: bool) -> dict:
    """A greedy streaming request whose last chunk carries the usage (exact token counts)."""
    body = {"model": model, "temperature": 0.0, "stream": True, "stream_options": {"include_usage": True}}
    if ignore_eos:  # vLLM's extension (also llama.cpp's): every request decodes its full output length
        body["ignore_eos"] = True
    if is_chat(endpoint):
        if not isinstance(request.prompt, str):
            raise ValueError(f"{CHAT_ENDPOINT} takes text prompts, not token ids")
        body.update(messages=[{"role": "user", "content": request.prompt}], max_completion_tokens=request.output_len)
    else:
        body.update(prompt=request.prompt, max_tokens=request.output_len)
    return body


def _text_in(choice: dict) -> str | None:
    """The output text of a chunk's choice; None when it carries none (a chat stream's role-only opening)."""
    text = choice.get("text") if "text" in choice else (choice.get("delta") or {}).get("content")
    if text:
        return text
    return "" if choice.get("finish_reason") is not None else None


async def send_request(session: aiohttp.ClientSession, url: str, body: dict, prompt_len: int | None) -> Outcome:
    out = Outcome(prompt_len=prompt_len or 0)
    usage, chunks, done, texts = None, 0, False, []
    start = last = time.perf_counter()
    try:
        async with session.post(url, json=body) as response:
            if response.status == 401:
                out.error = str(unauthorized(url))
                return out
            if response.status != 200:
                out.error = f"HTTP {response.status}: {(await response.text())[:500]}"
                return out
            async for raw in response.content:  # SSE: one `data: ...` line per event
                line = raw.decode("utf-8", errors="replace").strip()
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    done = True
                    break
                event = json.loads(data)
                if "error" in event:
                    out.error = json.dumps(event["error"])[:500]
                    return out
                now = time.perf_counter()
                pieces = [t for t in map(_text_in, event.get("choices") or []) if t is not None]
                if pieces:
                    if chunks == 0:
                        out.ttft = now - start
                    else:
                        out.itl.append(now - last)
                    last, chunks = now, chunks + 1
                    texts += pieces
                usage = event.get("usage") or usage
        out.latency = time.perf_counter() - start
    except Exception as e:  # one failed request is a result, not the end of the benchmark
        out.error = f"{type(e).__name__}: {e}"
        return out
    out.generated_text = "".join(texts)
    if usage:
        out.prompt_len = usage.get("prompt_tokens", out.prompt_len)
        out.output_tokens = usage.get("completion_tokens", chunks)
    else:  # a server without usage in streams: one chunk per token is the common case
        out.output_tokens = chunks
    out.success = done and chunks > 0
    if not out.success:
        out.error = "the stream ended without output or without [DONE]"
    return out


# ----- the run -----


@dataclass
class RunOutput:
    outcomes: list[Outcome]
    duration: float
    rps_change_events: list[dict]


async def benchmark(
    url: str,
    model: str,
    requests: list[BenchRequest],
    load: LoadSpec,
    ignore_eos: bool = True,
    api_key: str | None = None,
    warmup: BenchRequest | None = None,
    advance: Callable[[], None] | None = None,
) -> RunOutput:
    """Send `requests` to `url` (the endpoint's full URL) as `load` says; `advance` is called as each finishes."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    # The semaphore bounds the requests in flight, not the connection pool; runs can last hours.
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=6 * 3600)
    endpoint = url.split("://", 1)[-1].partition("/")[2]
    bodies = [request_body(endpoint, model, r, ignore_eos) for r in requests]
    times = arrival_times(load, len(requests))
    rates = request_rates(load, len(requests))
    async with aiohttp.ClientSession(headers=headers, connector=connector, timeout=timeout) as session:
        if warmup is not None:  # fails fast, with the server's own error, on a wrong URL or model
            test = await send_request(session, url, request_body(endpoint, model, warmup, ignore_eos), None)
            if not test.success:
                if test.error == str(unauthorized(url)):
                    raise unauthorized(url)
                raise ServerError(f"the test request to {url} failed: {test.error}")

        semaphore = asyncio.Semaphore(load.max_concurrency) if load.max_concurrency else None
        start = time.perf_counter()

        async def one(body: dict, request: BenchRequest) -> Outcome:
            arrived = time.perf_counter()
            if semaphore is None:
                sent = arrived
                outcome = await send_request(session, url, body, request.prompt_len)
            else:
                async with semaphore:
                    sent = time.perf_counter()
                    outcome = await send_request(session, url, body, request.prompt_len)
            outcome.start_time, outcome.queue_time = sent - start, sent - arrived
            if advance is not None:
                advance()
            return outcome

        # vLLM's rps_change_events: a stamp each time the ramp passes a whole number of req/s.
        tasks, events, last_rps = [], [], -1
        if load.ramp_up_strategy is not None and load.ramp_up_start_rps is not None:
            last_rps = load.ramp_up_start_rps
            events.append({"rps": last_rps, "timestamp": datetime.now().isoformat()})
        for body, request, at, rate in zip(bodies, requests, times, rates):
            wait = start + at - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            if load.ramp_up_strategy is not None and int(rate) > last_rps:
                stamp = datetime.now().isoformat()
                events += [{"rps": r, "timestamp": stamp} for r in range(last_rps + 1, int(rate) + 1)]
                last_rps = int(rate)
            tasks.append(asyncio.create_task(one(body, request)))
        outcomes = list(await asyncio.gather(*tasks))
        duration = time.perf_counter() - start
    return RunOutput(outcomes, duration, events)


# ----- metrics, with vLLM's names -----


def parse_goodput(values: list[str] | None) -> dict[str, float]:
    """vLLM's --goodput "ttft:500 tpot:50" (milliseconds) -> {"ttft": 500.0, "tpot": 50.0}."""
    slos: dict[str, float] = {}
    for item in (part for value in values or [] for part in value.replace(",", " ").split()):
        name, sep, number = item.partition(":")
        try:
            slos[name] = float(number)
        except ValueError:
            sep = ""
        if not sep:
            raise ValueError(f'--goodput takes "KEY:VALUE" pairs in milliseconds, e.g. ttft:500 tpot:50; got {item!r}')
        if name not in GOODPUT_METRICS:
            raise ValueError(f"--goodput metric {name!r} is not one of {', '.join(GOODPUT_METRICS)}")
        if slos[name] < 0:
            raise ValueError(f"--goodput {name} must be >= 0 ms")
    return slos


def parse_percentile_metrics(value: str) -> list[str]:
    names = [n.strip() for n in value.split(",") if n.strip()]
    bad = [n for n in names if n not in PERCENTILE_METRICS]
    if bad or not names:
        raise ValueError(f"--percentile-metrics takes a comma-separated subset of {','.join(PERCENTILE_METRICS)}")
    return names


def parse_metric_percentiles(value: str) -> list[float]:
    try:
        qs = [float(q) for q in value.split(",") if q.strip()]
    except ValueError:
        qs = []
    if not qs or any(not 0 < q <= 100 for q in qs):
        raise ValueError("--metric-percentiles takes comma-separated percentiles in (0, 100], e.g. 50,90,99")
    return qs


def percentile_key(metric: str, q: float) -> str:
    """vLLM's key of a percentile: p99_ttft_ms, p99.9_ttft_ms."""
    word = str(int(q)) if int(q) == q else str(q)
    return f"p{word}_{metric}_ms"


def _stats(metric: str, seconds: list[float], qs: Sequence[float]) -> dict[str, float]:
    arr = np.asarray(seconds or [0.0], dtype=float) * 1000
    out = {
        f"mean_{metric}_ms": float(arr.mean()),
        f"median_{metric}_ms": float(np.median(arr)),
        f"std_{metric}_ms": float(arr.std()),
    }
    out.update({percentile_key(metric, q): float(np.percentile(arr, q)) for q in qs})
    return out


def _peaks(ok: list[Outcome]) -> tuple[float, int]:
    """vLLM's max_output_tokens_per_s (tokens in the busiest 1-second bucket) and
    max_concurrent_requests (the most requests in flight at once, over [start, end) intervals)."""
    if not ok:
        return 0.0, 0
    t0 = min(o.start_time for o in ok)
    buckets = np.zeros(int(math.ceil(max(o.start_time + o.latency for o in ok) - t0)) + 1)
    for o in ok:  # each output chunk's time: the first at TTFT, then one ITL after another
        for stamp in itertools.accumulate(o.itl, initial=o.start_time + o.ttft):
            buckets[int(stamp - t0)] += 1
    events = sorted([(o.start_time, 1) for o in ok] + [(o.start_time + o.latency, -1) for o in ok])
    peak = now = 0
    for _, delta in events:
        now += delta
        peak = max(peak, now)
    return float(buckets.max()), peak


def metrics(
    run: RunOutput,
    percentile_metrics: Sequence[str] = PERCENTILE_METRICS,
    percentiles: Sequence[float] = (99.0,),
    goodput: dict[str, float] | None = None,
) -> dict[str, Any]:
    """vLLM's serving metrics over the successful requests (failures counted, their errors kept),
    in the order `vllm bench serve` writes them."""
    outcomes, duration = run.outcomes, run.duration
    ok = [o for o in outcomes if o.success]
    total_in = sum(o.prompt_len for o in ok)
    output_lens = [o.output_tokens if o.success else 0 for o in outcomes]
    total_out = sum(output_lens)
    # As vLLM: TPOT over requests with more than one output token; for goodput a one-token request's TPOT is 0.
    tpot = {id(o): (o.latency - o.ttft) / (o.output_tokens - 1) if o.output_tokens > 1 else 0.0 for o in ok}
    good = None
    if goodput:
        slo = {"ttft": lambda o: o.ttft, "tpot": lambda o: tpot[id(o)], "e2el": lambda o: o.latency}
        good = sum(all(slo[name](o) * 1000 <= limit for name, limit in goodput.items()) for o in ok)
    max_tokens_per_s, max_concurrent = _peaks(ok)
    result: dict[str, Any] = {
        "duration": duration,
        "completed": len(ok),
        "failed": len(outcomes) - len(ok),
        "total_input_tokens": total_in,
        "total_output_tokens": total_out,
        "request_throughput": len(ok) / duration,
        "request_goodput": None if good is None else good / duration,
        "output_throughput": total_out / duration,
        "total_token_throughput": (total_in + total_out) / duration,
        "input_lens": [o.prompt_len for o in outcomes],
        "output_lens": output_lens,
        "ttfts": [o.ttft for o in outcomes],
        "itls": [o.itl for o in outcomes],
        "latencies": [o.latency for o in outcomes],
        "start_times": [o.start_time for o in outcomes],
        "queue_times": [o.queue_time for o in outcomes],
        "generated_texts": [o.generated_text for o in outcomes],
        "errors": [o.error for o in outcomes],
        "max_output_tokens_per_s": max_tokens_per_s,
        "max_concurrent_requests": max_concurrent,
        "rtfx": 0.0,  # vLLM's inverse real-time factor of audio inputs: none here
    }
    if run.rps_change_events:
        result["rps_change_events"] = run.rps_change_events
    values = {
        "ttft": [o.ttft for o in ok],
        "tpot": [tpot[id(o)] for o in ok if o.output_tokens > 1],
        "itl": [gap for o in ok for gap in o.itl],
        "e2el": [o.latency for o in ok],
    }
    for name in percentile_metrics:
        result.update(_stats(name, values[name], percentiles))
    return result


def vllm_result(
    run: RunOutput,
    *,
    backend: str,
    label: str | None,
    model_id: str,
    tokenizer_id: str,
    load: LoadSpec,
    percentile_metrics: Sequence[str],
    percentiles: Sequence[float],
    goodput: dict[str, float] | None,
) -> dict[str, Any]:
    """The JSON `vllm bench serve --save-result --save-detailed` writes, key for key."""
    result: dict[str, Any] = {
        "date": datetime.now().strftime("%Y%m%d-%H%M%S"),
        "endpoint_type": backend,  # vLLM keeps both names
        "backend": backend,
        "label": label,
        "model_id": model_id,
        "tokenizer_id": tokenizer_id,
        "num_prompts": len(run.outcomes),
        "request_rate": load.request_rate if math.isfinite(load.request_rate) else "inf",
        "burstiness": load.burstiness,
        "max_concurrency": load.max_concurrency,
    }
    if load.ramp_up_strategy is not None:
        result.update(
            ramp_up_strategy=load.ramp_up_strategy,
            ramp_up_start_rps=load.ramp_up_start_rps,
            ramp_up_end_rps=load.ramp_up_end_rps,
        )
    result.update(metrics(run, percentile_metrics, percentiles, goodput))
    return result


def result_filename(result: dict, label: str | None, backend: str) -> str:
    """vLLM's default file name: {label}-{rate}qps[-concurrency{N}]-{model}-{date}.json."""
    concurrency = f"-concurrency{result['max_concurrency']}" if result["max_concurrency"] is not None else ""
    model = result["model_id"].rstrip("/").split("/")[-1]
    if result.get("ramp_up_strategy"):
        rate = f"ramp-up-{result['ramp_up_strategy']}-{result['ramp_up_start_rps']}qps-{result['ramp_up_end_rps']}qps"
    else:
        rate = f"{float(result['request_rate'])}qps"
    return f"{label or backend}-{rate}{concurrency}-{model}-{result['date']}.json"
