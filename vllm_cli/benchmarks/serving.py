"""`bench serve`: load on any OpenAI-compatible server (ours, vLLM, llama.cpp) over streaming HTTP.

Requests arrive as a seeded Poisson process at `request_rate` (inf: all at once), at most
`max_concurrency` in flight. Per request: TTFT (send -> first output chunk), ITL (gaps between
output chunks), TPOT ((e2e - TTFT) / (output tokens - 1)) and e2e latency; results carry
vLLM's `vllm bench serve` field names so the two can be compared line by line.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp

from vllm_cli.benchmarks.datasets import BenchRequest
from vllm_cli.benchmarks.report import summarize

CHAT_ENDPOINT = "/v1/chat/completions"


@dataclass
class Outcome:
    success: bool = False
    prompt_len: int = 0
    output_tokens: int = 0
    ttft: float = 0.0
    latency: float = 0.0
    itl: list[float] = field(default_factory=list)
    error: str = ""


def request_body(endpoint: str, model: str, request: BenchRequest, ignore_eos: bool) -> dict:
    """A streaming request whose last chunk carries the usage (exact token counts)."""
    body = {"model": model, "temperature": 0.0, "stream": True, "stream_options": {"include_usage": True}}
    if ignore_eos:  # vLLM's extension (also llama.cpp's): every request decodes its full output length
        body["ignore_eos"] = True
    if endpoint.rstrip("/").endswith("chat/completions"):
        if not isinstance(request.prompt, str):
            raise ValueError(f"{CHAT_ENDPOINT} takes text prompts, not token ids")
        body.update(messages=[{"role": "user", "content": request.prompt}], max_completion_tokens=request.output_len)
    else:
        body.update(prompt=request.prompt, max_tokens=request.output_len)
    return body


def _output_in(choice: dict) -> bool:
    """Whether a chunk carries generated output (a chat stream's opening role-only chunk does not)."""
    text = choice.get("text") if "text" in choice else (choice.get("delta") or {}).get("content")
    return bool(text) or choice.get("finish_reason") is not None


async def send_request(session: aiohttp.ClientSession, url: str, body: dict, prompt_len: int | None) -> Outcome:
    out = Outcome(prompt_len=prompt_len or 0)
    usage, chunks, done = None, 0, False
    start = last = time.perf_counter()
    try:
        async with session.post(url, json=body) as response:
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
                if any(_output_in(c) for c in event.get("choices") or []):
                    if chunks == 0:
                        out.ttft = now - start
                    else:
                        out.itl.append(now - last)
                    last, chunks = now, chunks + 1
                usage = event.get("usage") or usage
        out.latency = time.perf_counter() - start
    except Exception as e:  # one failed request is a result, not the end of the benchmark
        out.error = f"{type(e).__name__}: {e}"
        return out
    if usage:
        out.prompt_len = usage.get("prompt_tokens", out.prompt_len)
        out.output_tokens = usage.get("completion_tokens", chunks)
    else:  # a server without usage in streams: one chunk per token is the common case
        out.output_tokens = chunks
    out.success = done and chunks > 0
    if not out.success:
        out.error = "the stream ended without output or without [DONE]"
    return out


def base_url(url: str) -> str:
    url = url.rstrip("/")
    return url[:-3] if url.endswith("/v1") else url


async def first_model(session: aiohttp.ClientSession, url: str) -> str:
    async with session.get(f"{base_url(url)}/v1/models") as response:
        response.raise_for_status()
        return (await response.json())["data"][0]["id"]


async def benchmark(
    url: str,
    endpoint: str,
    model: str | None,
    requests: list[BenchRequest],
    warmup: BenchRequest | None,
    request_rate: float = math.inf,
    max_concurrency: int | None = None,
    seed: int = 0,
    api_key: str | None = None,
    ignore_eos: bool = True,
    advance: Callable[[], None] | None = None,
) -> dict:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    # The semaphore bounds the requests in flight, not the connection pool; runs can last hours.
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=6 * 3600)
    target = base_url(url) + "/" + endpoint.lstrip("/")
    async with aiohttp.ClientSession(headers=headers, connector=connector, timeout=timeout) as session:
        try:
            model = model or await first_model(session, url)
        except aiohttp.ClientError as e:
            raise OSError(f"cannot list the models of {base_url(url)}: {e}") from None
        bodies = [request_body(endpoint, model, r, ignore_eos) for r in requests]
        if warmup is not None:  # fails fast, with the server's own error, on a wrong URL or model
            test = await send_request(session, target, request_body(endpoint, model, warmup, ignore_eos), None)
            if not test.success:
                raise OSError(f"the test request to {target} failed: {test.error}")

        semaphore = asyncio.Semaphore(max_concurrency) if max_concurrency else None

        async def one(body: dict, request: BenchRequest) -> Outcome:
            if semaphore is None:
                outcome = await send_request(session, target, body, request.prompt_len)
            else:
                async with semaphore:
                    outcome = await send_request(session, target, body, request.prompt_len)
            if advance is not None:
                advance()
            return outcome

        rng = random.Random(seed)
        tasks = []
        start = time.perf_counter()
        for i, (body, request) in enumerate(zip(bodies, requests)):
            if i and math.isfinite(request_rate):
                await asyncio.sleep(rng.expovariate(request_rate))  # Poisson arrivals
            tasks.append(asyncio.create_task(one(body, request)))
        outcomes = await asyncio.gather(*tasks)
        duration = time.perf_counter() - start
    result = metrics(outcomes, duration)
    result.update(
        model=model,
        url=target,
        request_rate=request_rate if math.isfinite(request_rate) else "inf",
        max_concurrency=max_concurrency,
        num_prompts=len(requests),
    )
    return result


def metrics(outcomes: list[Outcome], duration: float) -> dict:
    """vLLM's serving metrics over the successful requests; failures are counted, their errors kept."""
    ok = [o for o in outcomes if o.success]
    total_in = sum(o.prompt_len for o in ok)
    total_out = sum(o.output_tokens for o in ok)
    tpots = [(o.latency - o.ttft) / (o.output_tokens - 1) for o in ok if o.output_tokens > 1]
    return {
        "duration": duration,
        "completed": len(ok),
        "failed": len(outcomes) - len(ok),
        "total_input_tokens": total_in,
        "total_output_tokens": total_out,
        "request_throughput": len(ok) / duration,
        "output_throughput": total_out / duration,
        "total_token_throughput": (total_in + total_out) / duration,
        **summarize([o.ttft for o in ok], "ttft"),
        **summarize(tpots, "tpot"),
        **summarize([gap for o in ok for gap in o.itl], "itl"),
        **summarize([o.latency for o in ok], "e2el"),
        "input_lens": [o.prompt_len for o in outcomes],
        "output_lens": [o.output_tokens for o in outcomes],
        "ttfts": [o.ttft for o in outcomes],
        "itls": [o.itl for o in outcomes],
        "errors": [o.error for o in outcomes],
    }
