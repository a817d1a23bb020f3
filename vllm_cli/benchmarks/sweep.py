"""`bench sweep`: one `bench serve` run per request rate or concurrency, then one table and the
plots (throughput vs latency; TTFT and TPOT percentiles vs the swept value) as PNG and SVG
(matplotlib, the `plot` extra) and, when asked, in the terminal (plotext).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from vllm_cli.benchmarks.report import print_table
from vllm_cli.benchmarks.serving import percentile_key

SWEEPS = {"request_rate": "request rate (req/s)", "max_concurrency": "max concurrency"}
PLOT_EXTRA = "pip install 'vllm-cli[plot]'"


class MissingPlotLibrary(OSError):
    """matplotlib or plotext is not installed: one line saying how to get it."""


def parse_values(text: str, flag: str, integer: bool) -> list[float]:
    """ "1,2,4,inf" -> [1.0, 2.0, 4.0, inf]; concurrencies are whole numbers >= 1."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or any(not v > 0 or (integer and (not math.isfinite(v) or v != int(v))) for v in values):
        kind = "whole numbers >= 1" if integer else "numbers > 0 (inf: all at once)"
        raise ValueError(f"{flag} takes comma-separated {kind}, e.g. {'1,4,16' if integer else '1,2,4,8'}")
    return [int(v) if integer else v for v in values]


def value_label(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:g}"


def _stat_keys(metric: str, percentiles: Sequence[float]) -> list[tuple[str, str]]:
    """(label, key) of the median and each percentile of a metric, skipping p50 (the median)."""
    keys = [("median", f"median_{metric}_ms")]
    keys += [(key.split("_")[0], key) for key in (percentile_key(metric, q) for q in percentiles if q != 50)]
    return keys


def print_sweep(points: list[tuple[float, dict]], swept: str, percentiles: Sequence[float]) -> None:
    """One column per point (a sweep has a handful; metrics as rows fit a narrow terminal): throughput,
    then median and percentiles of TTFT, TPOT and E2E latency."""
    results = [r for _, r in points]
    rows: list[tuple[Any, ...]] = [
        ("ok / failed", *(f"{r['completed']} / {r['failed']}" for r in results)),
        ("request throughput (req/s)", *(r["request_throughput"] for r in results)),
    ]
    if any(r["request_goodput"] is not None for r in results):
        rows.append(("request goodput (req/s)", *(r["request_goodput"] for r in results)))
    rows.append(("output throughput (tok/s)", *(r["output_throughput"] for r in results)))
    for label in ("TTFT", "TPOT", "E2EL"):
        for name, key in _stat_keys(label.lower(), percentiles):
            rows.append((f"{name} {label} (ms)", *(r[key] for r in results)))
    first = results[0]
    print_table(
        f"Sweep: {first['model_id']} ({first['backend']}), {first['num_prompts']} requests a point",
        rows,
        (SWEEPS[swept], *(value_label(v) for v, _ in points)),
    )


def _matplotlib() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise MissingPlotLibrary(
            f"bench sweep draws its plots with matplotlib: {PLOT_EXTRA} (or pass --no-plot)"
        ) from None
    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    return plt


def require_plot_libraries(files: bool, terminal: bool) -> None:
    """Fail before the first run, not after the last, when a library the plots need is missing."""
    if files:
        _matplotlib()
    if terminal:
        _plotext()


def write_plots(points: list[tuple[float, dict]], swept: str, percentiles: Sequence[float], stem: str) -> list[str]:
    """Three panels: E2E latency vs output throughput (each point labelled with its swept value),
    TTFT and TPOT (median and percentiles) vs the swept value. Written as stem.png and stem.svg."""
    plt = _matplotlib()
    labels = [value_label(v) for v, _ in points]
    results = [r for _, r in points]
    xs = list(range(len(points)))  # evenly spaced: sweeps are usually geometric, and inf has no place on an axis
    fig, (tput, ttft, tpot) = plt.subplots(1, 3, figsize=(15, 4.6))
    throughput = [r["output_throughput"] for r in results]
    for name, key in _stat_keys("e2el", percentiles):
        tput.plot(throughput, [r[key] for r in results], marker="o", label=f"{name} E2E latency")
    for x, y, label in zip(throughput, [r["median_e2el_ms"] for r in results], labels):
        tput.annotate(label, (x, y), textcoords="offset points", xytext=(4, -10), fontsize=8)
    tput.set(title="Latency vs throughput", xlabel="output throughput (tok/s)", ylabel="E2E latency (ms)")
    for ax, metric, title in ((ttft, "ttft", "Time to first token"), (tpot, "tpot", "Time per output token")):
        for name, key in _stat_keys(metric, percentiles):
            ax.plot(xs, [r[key] for r in results], marker="o", label=name)
        ax.set(title=title, xlabel=SWEEPS[swept], ylabel="ms", xticks=xs, xticklabels=labels)
    for ax in (tput, ttft, tpot):
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
    first = results[0]
    model = first["model_id"].rstrip("/").split("/")[-1]  # a path's last part: the title stays one line
    fig.suptitle(f"{model}: {first['num_prompts']} requests a point, {first['backend']}", fontsize=10)
    fig.tight_layout()
    paths = [f"{stem}.png", f"{stem}.svg"]
    fig.savefig(paths[0], dpi=90)
    with plt.rc_context({"svg.fonttype": "none"}):  # text as text: a smaller, searchable SVG
        fig.savefig(paths[1])
    plt.close(fig)
    return paths


def _plotext() -> Any:
    try:
        import plotext
    except ImportError:
        raise MissingPlotLibrary(f"--terminal-plot draws with plotext: {PLOT_EXTRA}") from None
    return plotext


def terminal_plot(points: list[tuple[float, dict]], swept: str, percentiles: Sequence[float], color: bool) -> str:
    """TTFT and TPOT (median and percentiles) vs the swept value, as text for the terminal."""
    figure = _plotext().figure
    figure.clear()
    figure.theme("simple")  # no background colour: reads on dark and light terminals
    figure.subplots(1, 2)
    xs = list(range(1, len(points) + 1))
    for col, (metric, title) in enumerate((("ttft", "TTFT (ms)"), ("tpot", "TPOT (ms)")), start=1):
        panel = figure.subplot(1, col)
        for name, key in _stat_keys(metric, percentiles):
            panel.draw(panel.signal(xs, [r[key] for _, r in points]).lines().label(name))
        panel.title(title)
        panel.label(f"{SWEEPS[swept]}: " + ", ".join(value_label(v) for v, _ in points), "x")
    figure.plot_size(120, 24)
    return figure.build().string(colorless=not color)
