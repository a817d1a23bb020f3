"""`vllm-cli bench`: throughput (the default), latency and serving-load benchmarks.

Workloads and runners live in vllm_cli.benchmarks and are imported when a command runs, so
`vllm-cli --help` stays instant.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperGroup

from vllm_cli.cli.engine_options import with_engine_options
from vllm_cli.cli.errors import user_errors
from vllm_cli.cli.help import SectionedHelpCommand
from vllm_cli.config import EngineArgs

if TYPE_CHECKING:
    from vllm_cli.benchmarks.offline import EngineBench

_WORKLOAD = "Workload"
_MODEL_HELP = "Model: local dir, hub id or .gguf file (default: SmolLM2-135M-Instruct)."


class _ThroughputByDefault(TyperGroup):
    """`vllm-cli bench [MODEL] [OPTIONS]` is `vllm-cli bench throughput [MODEL] [OPTIONS]`."""

    # ctx: Click's Context, which typer vendors (as typer._click) since 0.17, so no public name fits both.
    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        # Not while completing (resilient parsing): `vllm-cli bench <TAB>` should offer the subcommands.
        if not ctx.resilient_parsing and (
            not args or (args[0] not in self.commands and args[0] not in ctx.help_option_names)
        ):
            args = ["throughput", *args]
        return super().parse_args(ctx, args)


bench_app = typer.Typer(
    cls=_ThroughputByDefault, rich_markup_mode=None, help="Benchmark throughput (the default), latency or a server."
)

NumPrompts = Annotated[int, typer.Option(min=1, help="Number of requests.", rich_help_panel=_WORKLOAD)]
InputLen = Annotated[int, typer.Option(min=1, help="Random prompt length in tokens.", rich_help_panel=_WORKLOAD)]
OutputLen = Annotated[
    int | None,
    typer.Option(
        min=1,
        show_default=False,
        rich_help_panel=_WORKLOAD,
        help="Output tokens per request, EOS ignored (default: 64; with --dataset, the file's, else 128).",
    ),
]
PrefixLen = Annotated[
    int,
    typer.Option(
        min=0, rich_help_panel=_WORKLOAD, help="Random tokens shared by every prompt, before its own --input-len."
    ),
]
Dataset = Annotated[
    str | None,
    typer.Option(
        rich_help_panel=_WORKLOAD,
        show_default=False,
        help='Prompts from a file instead of random ones: JSONL ({"prompt": ..., "output_len": ...} per line) '
        "or ShareGPT JSON.",
    ),
]
OutputJson = Annotated[str | None, typer.Option(help="Write the results as JSON to this file.")]


def _settings(engine_args: EngineArgs, bench: EngineBench, **workload: object) -> dict:
    engine = bench.engine
    return {
        **workload,
        "model": engine.model_name,
        "dtype": str(engine.dtype).removeprefix("torch."),
        "max_model_len": engine.max_model_len,
        "engine_args": dataclasses.asdict(engine_args),
    }


@bench_app.command(cls=SectionedHelpCommand)
@with_engine_options()
def throughput(
    *,
    model: Annotated[str | None, typer.Argument(metavar="MODEL", help=_MODEL_HELP)] = None,
    num_prompts: NumPrompts = 32,
    input_len: InputLen = 64,
    output_len: OutputLen = None,
    prefix_len: PrefixLen = 0,
    dataset: Dataset = None,
    baseline: Annotated[
        str | None,
        typer.Option(
            help="Also run the same prompts through 'transformers' (its generate, static batches) and print the ratio.",
            show_default=False,
        ),
    ] = None,
    baseline_batch_size: Annotated[
        int | None,
        typer.Option(
            min=1, show_default=False, help="Static batch size of the baseline (default: --max-num-seqs or all)."
        ),
    ] = None,
    output_json: OutputJson = None,
    engine_args: EngineArgs,
) -> None:
    """Offline throughput: every request submitted to the engine at once, timed to the last finish."""
    if baseline not in (None, "transformers"):
        raise typer.BadParameter("the only baseline is 'transformers'", param_hint="--baseline")
    with user_errors():
        # The runners bring torch and the engine: imported when the command runs, so --help stays instant.
        from vllm_cli.benchmarks import offline, report
        from vllm_cli.benchmarks.datasets import load_dataset, random_requests

        # Random prompts are token ids: no tokenizer to load (a config-only dir works with dummy weights).
        engine_args = dataclasses.replace(engine_args, skip_tokenizer_init=not dataset)
        bench = offline.EngineBench(engine_args)
        engine = bench.engine
        if dataset:
            assert engine.tokenizer is not None  # loaded: skip_tokenizer_init is off with a dataset
            requests = load_dataset(dataset, num_prompts, output_len, engine.tokenizer.encode)
        else:
            requests = random_requests(
                num_prompts, input_len, output_len or 64, engine.vocab_size, engine_args.seed, prefix_len
            )
        settings = _settings(
            engine_args,
            bench,
            num_prompts=len(requests),
            input_len=None if dataset else input_len,
            output_len=None if dataset else output_len or 64,
            prefix_len=prefix_len,
            dataset=dataset,
            sampling="greedy, ignore_eos",
        )
        device, dtype, hf_config = engine.device, engine.dtype, engine.hf_config
        with report.progress("vllm-cli") as bar:
            task = bar.add_task("", total=len(requests))
            result, prepared = offline.run_throughput(bench, requests, engine_args.seed, lambda: bar.advance(task))
        result.update(settings=settings, device=report.device_info(device), versions=report.versions())
        rows = [("vllm-cli", result)]
        if baseline:
            del engine  # the last reference besides bench's: the baseline needs the memory
            bench.close()
            batch = baseline_batch_size or min(len(prepared), engine_args.max_num_seqs)
            with report.progress("transformers") as bar:
                task = bar.add_task("", total=len(prepared))
                theirs = offline.run_transformers(
                    engine_args, hf_config, dtype, device, prepared, batch, lambda n: bar.advance(task, n)
                )
            result["baseline"] = theirs
            result["output_throughput_ratio"] = result["output_throughput"] / theirs["output_throughput"]
            rows.append(("transformers", theirs))
        report.print_throughput(rows, result)
        report.write_json(output_json, result)


@bench_app.command(cls=SectionedHelpCommand)
@with_engine_options()
def latency(
    *,
    model: Annotated[str | None, typer.Argument(metavar="MODEL", help=_MODEL_HELP)] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Requests in the batch.", rich_help_panel=_WORKLOAD)] = 8,
    input_len: InputLen = 32,
    output_len: Annotated[
        int, typer.Option(min=1, help="Output tokens per request (EOS ignored).", rich_help_panel=_WORKLOAD)
    ] = 128,
    num_iters_warmup: Annotated[int, typer.Option(min=0, help="Untimed iterations first.")] = 1,
    num_iters: Annotated[int, typer.Option(min=1, help="Timed iterations.")] = 5,
    output_json: OutputJson = None,
    engine_args: EngineArgs,
) -> None:
    """Latency of one batch end to end (prefill and every decode step), over several iterations."""
    with user_errors():
        # The runners bring torch and the engine: imported when the command runs, so --help stays instant.
        from vllm_cli.benchmarks import offline, report

        bench = offline.EngineBench(dataclasses.replace(engine_args, skip_tokenizer_init=True))
        with report.progress("iterations") as bar:
            task = bar.add_task("", total=num_iters_warmup + num_iters)
            result = offline.run_latency(
                bench,
                batch_size,
                input_len,
                output_len,
                num_iters_warmup,
                num_iters,
                engine_args.seed,
                lambda: bar.advance(task),
            )
        result.update(
            settings=_settings(
                engine_args,
                bench,
                batch_size=batch_size,
                input_len=input_len,
                output_len=output_len,
                num_iters_warmup=num_iters_warmup,
                num_iters=num_iters,
            ),
            device=report.device_info(bench.engine.device),
            versions=report.versions(),
        )
        p = result["percentiles"]
        report.print_table(
            f"Latency: {result['settings']['model']}, batch {batch_size} x {input_len} in / {output_len} out",
            [
                ("mean (ms)", result["avg_latency"] * 1000),
                *((f"p{q} (ms)", p[q] * 1000) for q in ("50", "90", "99")),
                ("output tokens/s", batch_size * output_len / result["avg_latency"]),
            ],
        )
        report.write_json(output_json, result)


@bench_app.command(cls=SectionedHelpCommand)
def serve(
    url: Annotated[str, typer.Option(help="The server's base URL.")] = "http://127.0.0.1:8000",
    endpoint: Annotated[str, typer.Option(help="/v1/completions or /v1/chat/completions.")] = "/v1/completions",
    model: Annotated[
        str | None, typer.Option(show_default=False, help="Model name to request (default: the server's first).")
    ] = None,
    num_prompts: NumPrompts = 64,
    input_len: InputLen = 128,
    output_len: OutputLen = None,
    prefix_len: PrefixLen = 0,
    dataset: Dataset = None,
    vocab_size: Annotated[
        int,
        typer.Option(
            min=1,
            rich_help_panel=_WORKLOAD,
            help="Random token ids are drawn from [0, N): keep it within the model's vocabulary.",
        ),
    ] = 32000,
    request_rate: Annotated[
        float, typer.Option(help="Requests per second (Poisson arrivals); inf sends them all at once.")
    ] = math.inf,
    max_concurrency: Annotated[
        int | None, typer.Option(min=1, show_default=False, help="Most requests in flight at once (default: no limit).")
    ] = None,
    ignore_eos: Annotated[
        bool,
        typer.Option(help="Ask for the full output length (vLLM's ignore_eos); turn off for servers that reject it."),
    ] = True,
    seed: Annotated[int, typer.Option(help="Seeds the prompts and the arrival times.")] = 0,
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar=["VLLM_API_KEY", "OPENAI_API_KEY"], show_default=False, help="Sent as `Authorization: Bearer KEY`."
        ),
    ] = None,
    output_json: OutputJson = None,
) -> None:
    """Load an OpenAI-compatible server (vllm-cli serve, vLLM, llama.cpp, ...) over streaming HTTP."""
    if request_rate <= 0:
        raise typer.BadParameter("must be > 0 (inf: all at once)", param_hint="--request-rate")
    with user_errors():
        # asyncio, aiohttp, rich and numpy: imported when the command runs, so --help stays instant.
        import asyncio

        from vllm_cli.benchmarks import report, serving
        from vllm_cli.benchmarks.datasets import load_dataset, random_requests, random_text_requests

        chat = endpoint.rstrip("/").endswith("chat/completions")
        if dataset:
            requests = load_dataset(dataset, num_prompts, output_len)
            warmup = requests[0]
        else:
            # Token ids give /v1/completions exact input lengths; chat takes text (words, ~1 token each).
            make = (
                (lambda n, s: random_text_requests(n, input_len, output_len or 64, s, prefix_len))
                if chat
                else (lambda n, s: random_requests(n, input_len, output_len or 64, vocab_size, s, prefix_len))
            )
            requests, warmup = make(num_prompts, seed), make(1, seed + 10_000)[0]  # another seed: no cache warmed
        warmup = dataclasses.replace(warmup, output_len=min(warmup.output_len, 4))  # a check, not a load
        with report.progress("requests") as bar:
            task = bar.add_task("", total=len(requests))
            result = asyncio.run(
                serving.benchmark(
                    url,
                    endpoint,
                    model,
                    requests,
                    warmup,
                    request_rate,
                    max_concurrency,
                    seed,
                    api_key,
                    ignore_eos,
                    lambda: bar.advance(task),
                )
            )
        result.update(
            settings={
                "endpoint": endpoint,
                "input_len": None if dataset else input_len,
                "output_len": None if dataset else output_len or 64,
                "prefix_len": prefix_len,
                "dataset": dataset,
                "seed": seed,
                "ignore_eos": ignore_eos,
            },
            versions=report.versions(),
        )
        report.print_serving(result)
        report.write_json(output_json, result)
        if result["failed"]:
            first = next(e for e in result["errors"] if e)
            report.console.print(f"[red]{result['failed']} request(s) failed[/red], the first with: {first}")


def register(app: typer.Typer) -> None:
    app.add_typer(bench_app, name="bench")
