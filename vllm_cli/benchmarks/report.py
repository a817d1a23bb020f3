"""What every benchmark reports: versions, device, summary statistics, a rich table, JSON."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from importlib import metadata
from typing import TYPE_CHECKING

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from vllm_cli.version import __version__

if TYPE_CHECKING:
    import torch

console = Console()


def versions() -> dict[str, str | None]:
    """Package versions from their metadata: no import of torch just to name it."""
    out: dict[str, str | None] = {"python": platform.python_version(), "vllm-cli": __version__}
    for dist in ("torch", "transformers"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def device_info(device: torch.device | None = None) -> dict:
    """The device the engine ran on (CPU model and threads, or the GPU's name)."""
    info: dict = {
        "type": getattr(device, "type", str(device)) if device is not None else None,
        "cpu": cpu_description(),
        "cpu_count": os.cpu_count(),
    }
    torch = sys.modules.get("torch")  # only when the benchmark already imported it
    if torch is not None:
        info["torch_threads"] = torch.get_num_threads()
        if info["type"] == "cuda":
            info["gpu"] = torch.cuda.get_device_name(device)
    return info


def cpu_description() -> str:
    """E.g. "AMD EPYC (family 25), 2 CPUs": the model and the family `lscpu` shows, named beside every figure."""
    model, family = platform.processor() or platform.machine(), "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "cpu family":
                    family = value.strip()
                elif key.strip() == "model name":
                    model = value.strip()
                    break  # after "cpu family" in the first processor's entry
    except OSError:
        pass
    return f"{model} (family {family}), {os.cpu_count()} CPUs"


def read_bandwidth_gbs(nbytes: int = 2**30, repeats: int = 5) -> float:
    """GB/s of reading a buffer far larger than the caches (a sum over it: reads only), best of `repeats`,
    on torch's threads: the floor a memory-bound decode step is measured against."""
    import torch  # here: the report's other helpers serve benchmarks that never import it

    buf = torch.ones(nbytes // 4, dtype=torch.float32)
    buf.sum()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        buf.sum()
        best = min(best, time.perf_counter() - start)
    return nbytes / best / 1e9


def summarize(values: list[float], name: str, scale: float = 1000.0, unit: str = "ms") -> dict[str, float]:
    """vLLM's mean/median/std/p99 fields (`mean_ttft_ms`, ...) of seconds scaled to `unit`."""
    arr = np.asarray(values or [0.0], dtype=float) * scale
    return {
        f"mean_{name}_{unit}": float(arr.mean()),
        f"median_{name}_{unit}": float(np.median(arr)),
        f"std_{name}_{unit}": float(arr.std()),
        f"p99_{name}_{unit}": float(np.percentile(arr, 99)),
    }


def percentiles(values: list[float], qs: tuple[int, ...] = (10, 25, 50, 75, 90, 99)) -> dict[str, float]:
    return {str(q): float(np.percentile(values, q)) for q in qs}


def print_table(title: str, rows: list[tuple], columns: tuple[str, ...] = ("metric", "value")) -> None:
    console.print(f"[bold]{title}[/bold]")  # a title above, not inside: it would wrap to the table's width
    table = Table()
    for i, name in enumerate(columns):
        table.add_column(name, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*(_fmt(v) for v in row))
    console.print(table)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return "" if value is None else str(value)


def print_throughput(rows: list[tuple[str, dict]], result: dict) -> None:
    """The throughput table: one column per engine (vllm-cli, and the baseline if it ran)."""
    s = result["settings"]
    prefix = f"{s['prefix_len']} shared + " if s["prefix_len"] else ""
    workload = (
        f"{s['num_prompts']} prompts x {prefix}{s['input_len']} in / {s['output_len']} out"
        if s["input_len"]
        else f"{s['num_prompts']} prompts from {s['dataset']}"
    )
    fields = [
        ("elapsed (s)", "elapsed_time"),
        ("requests/s", "requests_per_second"),
        ("total tokens/s", "tokens_per_second"),
        ("output tokens/s", "output_throughput"),
        ("input tokens", "total_input_tokens"),
        ("output tokens", "total_output_tokens"),
    ]
    table = [(label, *(r[key] for _, r in rows)) for label, key in fields]
    table.append(("prefix cache hit rate", f"{result['prefix_cache_hit_rate']:.1%}", *([""] * (len(rows) - 1))))
    if "output_throughput_ratio" in result:
        table.append(("ratio (output tok/s)", f"{result['output_throughput_ratio']:.2f}x", "1.00x"))
    print_table(f"Throughput: {s['model']}, {s['dtype']}, {workload}", table, ("", *(name for name, _ in rows)))


_METRIC_LABELS = {"ttft": "TTFT", "tpot": "TPOT", "itl": "ITL", "e2el": "E2E latency"}


def print_serving(r: dict, url: str) -> None:
    """The `bench serve` table: throughput, then the statistics of each metric the result has
    (vLLM's --percentile-metrics and --metric-percentiles chose them)."""
    rows = [
        ("successful requests", r["completed"]),
        ("failed requests", r["failed"]),
        ("duration (s)", r["duration"]),
        ("total input tokens", r["total_input_tokens"]),
        ("total output tokens", r["total_output_tokens"]),
        ("request throughput (req/s)", r["request_throughput"]),
    ]
    if r["request_goodput"] is not None:
        rows.append(("request goodput (req/s)", r["request_goodput"]))
    rows += [
        ("output throughput (tok/s)", r["output_throughput"]),
        ("peak output throughput (tok/s)", r["max_output_tokens_per_s"]),
        ("peak concurrent requests", r["max_concurrent_requests"]),
        ("total token throughput (tok/s)", r["total_token_throughput"]),
    ]
    for name, label in _METRIC_LABELS.items():
        suffix = f"_{name}_ms"
        stats = [k[: -len(suffix)] for k in r if k.endswith(suffix)]  # mean, median, std, p99, ...
        rows += [(f"{stat} {label} (ms)", r[f"{stat}{suffix}"]) for stat in stats if stat != "std"]
    if r.get("ramp_up_strategy"):
        load = f"{r['ramp_up_strategy']} ramp-up {r['ramp_up_start_rps']} -> {r['ramp_up_end_rps']} req/s"
    else:
        load = f"rate {r['request_rate']} req/s, burstiness {r['burstiness']}"
    print_table(
        f"Serving: {r['model_id']} at {url}, {load}, concurrency {r['max_concurrency'] or 'unlimited'}",
        rows,
    )


def write_json(path: str | None, result: dict) -> None:
    if path:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
        console.print(f"results written to {path}")


def progress(description: str) -> Progress:
    """A bar over requests; transient, and rich draws nothing when stdout is not a terminal."""
    return Progress(
        TextColumn(description), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console, transient=True
    )
