"""Prometheus metrics with vLLM's names, one CollectorRegistry per app.

Engine-wide values (queues, KV-cache usage, token counters, preemptions, prefix cache) are
read from `async_engine.stats()` at scrape time; per-request latencies are observed by the
server as outputs arrive.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from vllm_cli.outputs import RequestOutput

if TYPE_CHECKING:
    from vllm_cli.engine.async_engine import AsyncEngine

_LATENCY_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
    640.0,
    2560.0,
)
_TPOT_BUCKETS = (
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
)


class _EngineCollector:
    """Gauges and counters the engine keeps itself, sampled when /metrics is scraped."""

    def __init__(self, async_engine: AsyncEngine, model_name: str):
        self.async_engine = async_engine
        self.model_name = model_name

    def collect(self) -> Iterator[Metric]:
        s = self.async_engine.stats()
        labels = ["model_name"]
        for name, doc, value in (
            ("vllm:num_requests_running", "Sequences being generated (in the running batch).", s.num_running),
            ("vllm:num_requests_waiting", "Sequences waiting to be scheduled.", s.num_waiting),
            ("vllm:kv_cache_usage_perc", "KV-cache usage: 1 means every block is in use.", s.kv_cache_usage),
        ):
            gauge = GaugeMetricFamily(name, doc, labels=labels)
            gauge.add_metric([self.model_name], value)
            yield gauge
        for name, doc, value in (
            ("vllm:prompt_tokens", "Prompt tokens prefilled.", s.prompt_tokens_total),
            ("vllm:generation_tokens", "Tokens generated.", s.generation_tokens_total),
            ("vllm:num_preemptions", "Sequences preempted for lack of KV-cache blocks.", s.num_preemptions),
            ("vllm:prefix_cache_queries", "Prompt tokens looked up in the prefix cache.", s.prefix_cache_queries),
            ("vllm:prefix_cache_hits", "Prompt tokens served from the prefix cache.", s.prefix_cache_hits),
        ):
            counter = CounterMetricFamily(name, doc, labels=labels)
            counter.add_metric([self.model_name], value)
            yield counter


class Metrics:
    def __init__(self, async_engine: AsyncEngine, model_name: str):
        disable_created_metrics()  # no *_created series, as vLLM (process-wide setting)
        self.registry = CollectorRegistry()
        self.registry.register(_EngineCollector(async_engine, model_name))
        kw: dict[str, Any] = dict(labelnames=["model_name"], registry=self.registry)
        self.ttft = Histogram(
            "vllm:time_to_first_token_seconds", "Time to first token.", buckets=_LATENCY_BUCKETS, **kw
        ).labels(model_name)
        self.tpot = Histogram(
            "vllm:time_per_output_token_seconds",
            "Mean time per output token after the first.",
            buckets=_TPOT_BUCKETS,
            **kw,
        ).labels(model_name)
        self.e2e = Histogram(
            "vllm:e2e_request_latency_seconds", "End-to-end request latency.", buckets=_LATENCY_BUCKETS, **kw
        ).labels(model_name)
        self._success = Counter(
            "vllm:request_success",
            "Choices (sequences) finished, by finish reason.",
            labelnames=["model_name", "finished_reason"],
            registry=self.registry,
        )
        self.model_name = model_name

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def track(self, n: int) -> RequestTimer:
        return RequestTimer(self, n)

    def count_finished(self, reason: str) -> None:
        self._success.labels(self.model_name, reason).inc()


class RequestTimer:
    """Latencies of one engine request (n choices), observed as its delta outputs arrive."""

    def __init__(self, metrics: Metrics, n: int):
        self.metrics = metrics
        self.n = n
        self.finished: set[int] = set()
        self.start = time.monotonic()
        self.first_token: float | None = None
        self.num_tokens: dict[int, int] = {}  # per choice: choices are generated side by side

    def observe(self, output: RequestOutput) -> None:
        for c in output.outputs:
            self.num_tokens[c.index] = self.num_tokens.get(c.index, 0) + len(c.token_ids)
            if c.finish_reason is not None and c.index not in self.finished:
                self.finished.add(c.index)
                self.metrics.count_finished(c.finish_reason)
        if self.first_token is None and any(c.token_ids for c in output.outputs):
            self.first_token = time.monotonic()
            self.metrics.ttft.observe(self.first_token - self.start)
        if output.finished:
            end = time.monotonic()
            self.metrics.e2e.observe(end - self.start)
            longest = max(self.num_tokens.values(), default=0)
            if self.first_token is not None and longest > 1:
                self.metrics.tpot.observe((end - self.first_token) / (longest - 1))

    def aborted(self) -> None:
        """The client went away: its unfinished choices count as aborted."""
        for _ in range(self.n - len(self.finished)):
            self.metrics.count_finished("abort")
