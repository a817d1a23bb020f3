"""`vllm-cli bench`: throughput (the default), latency and serving-load benchmarks.

Workloads and runners live in vllm_cli.benchmarks and are imported when a command runs, so
`vllm-cli --help` stays instant.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import os
import typing
from collections.abc import Callable
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


# ----- bench serve / bench sweep: vLLM's `vllm bench serve` flags, declared once for both -----

_SERVER, _LOAD, _RESULTS = "Server", "Load", "Results"


@dataclasses.dataclass
class ServeOptions:
    """The flags `bench serve` and `bench sweep` share (see `with_serve_options`)."""

    model: str | None
    base_url: str | None
    host: str
    port: int
    endpoint: str | None
    backend: str | None
    tokenizer: str | None
    api_key: str | None
    dataset_name: str | None
    dataset_path: str | None
    num_prompts: int
    random_input_len: int
    random_output_len: int | None
    random_prefix_len: int
    random_range_ratio: float
    sonnet_input_len: int
    sonnet_output_len: int
    sonnet_prefix_len: int
    skip_chat_template: bool
    vocab_size: int
    request_rate: float
    burstiness: float
    max_concurrency: int | None
    ramp_up_strategy: str | None
    ramp_up_start_rps: int | None
    ramp_up_end_rps: int | None
    ignore_eos: bool | None
    seed: int
    percentile_metrics: str
    metric_percentiles: str
    goodput: list[str] | None
    label: str | None
    save_result: bool
    result_dir: str | None
    result_filename: str | None
    output_json: str | None


def _opt(*names: str, panel: str = _WORKLOAD, **kwargs: Any) -> Any:
    return typer.Option(*names, rich_help_panel=panel, show_default=kwargs.pop("show_default", True), **kwargs)


# name -> (annotation, default, typer.Option); the first name is vLLM's, the others the older spellings.
_SERVE_OPTIONS: dict[str, tuple[Any, Any, Any]] = {
    "base_url": (
        str | None,
        None,
        _opt(
            "--base-url",
            "--url",
            panel=_SERVER,
            show_default=False,
            help="The server's URL (default: http://HOST:PORT).",
        ),
    ),
    "host": (str, "127.0.0.1", _opt("--host", panel=_SERVER, help="Server host, when --base-url is not given.")),
    "port": (int, 8000, _opt("--port", panel=_SERVER, help="Server port, when --base-url is not given.")),
    "endpoint": (
        str | None,
        None,
        _opt(
            "--endpoint",
            panel=_SERVER,
            show_default=False,
            help="API path (default: /v1/completions; /v1/chat/completions with --backend openai-chat).",
        ),
    ),
    "backend": (
        str | None,
        None,
        _opt(
            "--backend",
            panel=_SERVER,
            show_default=False,
            help="openai | vllm (both /v1/completions) | openai-chat "
            "(/v1/chat/completions). Default: from --endpoint, else openai.",
        ),
    ),
    "tokenizer": (
        str | None,
        None,
        _opt(
            "--tokenizer",
            panel=_SERVER,
            show_default=False,
            help="Count dataset tokens with this tokenizer (dir, hub id or .gguf) instead of the server's /tokenize.",
        ),
    ),
    "api_key": (
        str | None,
        None,
        _opt(
            "--api-key",
            panel=_SERVER,
            envvar=["VLLM_API_KEY", "OPENAI_API_KEY"],
            show_default=False,
            help="Sent as `Authorization: Bearer KEY`.",
        ),
    ),
    "dataset_name": (
        str | None,
        None,
        _opt(
            "--dataset-name",
            show_default=False,
            help="random | sharegpt | sonnet | custom (default: random; with "
            "--dataset-path, sharegpt for ShareGPT JSON, else custom).",
        ),
    ),
    "dataset_path": (
        str | None,
        None,
        _opt(
            "--dataset-path",
            "--dataset",
            show_default=False,
            help="The dataset file: ShareGPT JSON, a text file of "
            'lines (sonnet), or JSONL with "prompt" and optionally "output_tokens" (custom).',
        ),
    ),
    "num_prompts": (int, 64, _opt("--num-prompts", min=1, help="Number of requests.")),
    "random_input_len": (
        int,
        128,
        _opt("--random-input-len", "--input-len", min=1, help="Random prompt length in tokens."),
    ),
    "random_output_len": (
        int | None,
        None,
        _opt(
            "--random-output-len",
            "--output-len",
            min=1,
            show_default=False,
            help="Output tokens per request (default 64; sharegpt: the reply's length; "
            "custom: the file's output_tokens or 256; given: every dataset).",
        ),
    ),
    "random_prefix_len": (
        int,
        0,
        _opt(
            "--random-prefix-len", "--prefix-len", min=0, help="Random tokens shared by every prompt, before its own."
        ),
    ),
    "random_range_ratio": (
        float,
        0.0,
        _opt("--random-range-ratio", min=0.0, max=0.999, help="Random lengths drawn from [L*(1-r), L*(1+r)]."),
    ),
    "sonnet_input_len": (int, 550, _opt("--sonnet-input-len", min=1, help="Sonnet prompt length in tokens.")),
    "sonnet_output_len": (int, 150, _opt("--sonnet-output-len", min=1, help="Sonnet output tokens per request.")),
    "sonnet_prefix_len": (int, 200, _opt("--sonnet-prefix-len", min=0, help="Sonnet tokens shared by every prompt.")),
    "skip_chat_template": (
        bool,
        False,
        _opt("--skip-chat-template", help="custom: send the prompts as they are, not through the chat template."),
    ),
    "vocab_size": (
        int,
        32000,
        _opt(
            "--vocab-size", min=1, help="Random token ids are drawn from [0, N): keep it within the model's vocabulary."
        ),
    ),
    "request_rate": (
        float,
        math.inf,
        _opt("--request-rate", panel=_LOAD, help="Requests per second; inf sends them all at once."),
    ),
    "burstiness": (
        float,
        1.0,
        _opt(
            "--burstiness",
            panel=_LOAD,
            help="Gamma shape of the gaps between requests: 1 Poisson, < 1 burstier, "
            "> 1 more even (inf: evenly spaced).",
        ),
    ),
    "max_concurrency": (
        int | None,
        None,
        _opt(
            "--max-concurrency",
            panel=_LOAD,
            min=1,
            show_default=False,
            help="Most requests in flight at once (default: no limit).",
        ),
    ),
    "ramp_up_strategy": (
        str | None,
        None,
        _opt(
            "--ramp-up-strategy",
            panel=_LOAD,
            show_default=False,
            help="linear | exponential: the rate goes from "
            "--ramp-up-start-rps (first request) to --ramp-up-end-rps (last).",
        ),
    ),
    "ramp_up_start_rps": (int | None, None, _opt("--ramp-up-start-rps", panel=_LOAD, show_default=False)),
    "ramp_up_end_rps": (int | None, None, _opt("--ramp-up-end-rps", panel=_LOAD, show_default=False)),
    "ignore_eos": (
        bool | None,
        None,
        _opt(
            "--ignore-eos/--no-ignore-eos",
            panel=_LOAD,
            show_default=False,
            help="Decode the full output length (vLLM's ignore_eos; default: on for random prompts, off for datasets).",
        ),
    ),
    "seed": (int, 0, _opt("--seed", panel=_LOAD, help="Seeds the prompts and the arrival times.")),
    "percentile_metrics": (
        str,
        "ttft,tpot,itl,e2el",
        _opt("--percentile-metrics", panel=_RESULTS, help="Metrics to report statistics of: ttft,tpot,itl,e2el."),
    ),
    "metric_percentiles": (
        str,
        "99",
        _opt("--metric-percentiles", panel=_RESULTS, help="Percentiles to report, e.g. 50,90,99."),
    ),
    "goodput": (
        list[str] | None,
        None,
        _opt(
            "--goodput",
            panel=_RESULTS,
            show_default=False,
            help="SLOs in ms, e.g. --goodput ttft:500 tpot:50: request_goodput counts the requests that meet them all.",
        ),
    ),
    "label": (
        str | None,
        None,
        _opt("--label", panel=_RESULTS, show_default=False, help="Names the result (default: the backend)."),
    ),
    "save_result": (bool, False, _opt("--save-result", panel=_RESULTS, help="Write the result JSON.")),
    "result_dir": (
        str | None,
        None,
        _opt("--result-dir", panel=_RESULTS, show_default=False, help="Where results go (default: here)."),
    ),
    "result_filename": (
        str | None,
        None,
        _opt(
            "--result-filename",
            panel=_RESULTS,
            show_default=False,
            help="Result file name (default: vLLM's {label}-{rate}qps-{model}-{date}.json).",
        ),
    ),
    "output_json": (
        str | None,
        None,
        _opt("--output-json", panel=_RESULTS, show_default=False, help="Write the result JSON to this path."),
    ),
}

_MODEL_ARG = "Model name to request (default: the server's first)."


def with_serve_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Append the shared serving flags (and MODEL / --model) to a command taking `opts: ServeOptions`."""
    sig = inspect.signature(func)
    hints = typing.get_type_hints(func, include_extras=True)
    own = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in sig.parameters.values() if p.name != "opts"]
    kw = inspect.Parameter.KEYWORD_ONLY
    added = [
        inspect.Parameter(
            "model",
            kw,
            default=None,
            annotation=Annotated[str | None, typer.Argument(show_default=False, help=_MODEL_ARG)],
        ),
        inspect.Parameter(
            "model_option",
            kw,
            default=None,
            annotation=Annotated[str | None, _opt("--model", panel=_SERVER, show_default=False, help=_MODEL_ARG)],
        ),
    ]
    added += [
        inspect.Parameter(n, kw, default=d, annotation=Annotated[a, o]) for n, (a, d, o) in _SERVE_OPTIONS.items()
    ]

    @functools.wraps(func)
    def wrapper(**kwargs: Any) -> Any:
        model, model_option = kwargs.pop("model"), kwargs.pop("model_option")
        if model and model_option and model != model_option:
            raise typer.BadParameter(
                f"MODEL {model!r} and --model {model_option!r} differ: give one", param_hint="--model"
            )
        values = {n: kwargs.pop(n) for n in _SERVE_OPTIONS}
        return func(opts=ServeOptions(model=model or model_option, **values), **kwargs)

    wrapper.__signature__ = sig.replace(parameters=own + added, return_annotation=None)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in own + added}
    return wrapper


def goodput_args(args: list[str]) -> list[str]:
    """vLLM's `--goodput ttft:500 tpot:50` (one flag, several values) -> `--goodput ttft:500 --goodput
    tpot:50`, the form Click parses (one value a flag)."""
    out: list[str] = []
    taken: int | None = None  # values read after the last bare --goodput; None: not in one
    for arg in args:
        if taken is not None and arg != "--goodput" and not arg.startswith("-") and ":" in arg:
            out += ["--goodput", arg]
            taken += 1
            continue
        if taken == 0:  # a --goodput with no value: Click takes the next token and --goodput's parse says why
            out.append("--goodput")
        taken = 0 if arg == "--goodput" else None
        if taken is None:
            out.append(arg)
    if taken == 0:
        out.append("--goodput")
    return out


class _SpaceSeparatedGoodput(SectionedHelpCommand):
    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        return super().parse_args(ctx, goodput_args(args))


@dataclasses.dataclass
class _Prepared:
    """What a serving run needs, resolved once (a sweep reuses it for every point)."""

    url: str
    backend: str
    model: str
    tokenizer_id: str
    requests: list
    warmup: Any
    ignore_eos: bool
    percentile_metrics: list[str]
    percentiles: list[float]
    goodput: dict[str, float]


def _prepare(opts: ServeOptions, seed: int) -> _Prepared:
    """Flags -> URL, backend, model, prompts (before any clock starts); bad flags are ValueErrors."""
    from vllm_cli.benchmarks import datasets, serving

    backend = opts.backend
    if backend is not None and backend not in serving.BACKENDS:
        raise ValueError(f"--backend must be one of {', '.join(serving.BACKENDS)}")
    endpoint = opts.endpoint or (serving.CHAT_ENDPOINT if backend == "openai-chat" else "/v1/completions")
    chat = serving.is_chat(endpoint)
    backend = backend or ("openai-chat" if chat else "openai")
    if chat != (backend == "openai-chat"):
        raise ValueError(f"--backend {backend} does not speak {endpoint} (openai-chat: /v1/chat/completions)")
    root = serving.base_url(opts.base_url or f"http://{opts.host}:{opts.port}")
    url = root + "/" + endpoint.lstrip("/")
    model = opts.model or serving.first_model(root, opts.api_key)

    name = opts.dataset_name
    if name is None:
        name = (
            "random" if not opts.dataset_path else "sharegpt" if datasets.is_sharegpt(opts.dataset_path) else "custom"
        )
    if name not in ("random", "sharegpt", "sonnet", "custom"):
        raise ValueError("--dataset-name must be one of random, sharegpt, sonnet, custom")
    if (name == "random") == bool(opts.dataset_path):
        raise ValueError(
            f"--dataset-name {name} " + ("takes no --dataset-path" if opts.dataset_path else "needs --dataset-path")
        )
    # Token counts (ShareGPT replies, sonnet lines, custom prompts through the chat template) come from
    # --tokenizer, else from the server's /tokenize; the prompt lengths themselves from each response's usage.
    tokenizer: Any = None
    if name != "random":
        local = opts.tokenizer
        tokenizer = datasets.LocalTokenizer(local) if local else serving.ServerTokenizer(root, model, opts.api_key)
    out_len = opts.random_output_len
    if name == "random":

        def make(n: int, s: int) -> list:
            # Token ids give /v1/completions exact input lengths; chat takes text (words, ~1 token each).
            if chat:
                return datasets.random_text_requests(
                    n, opts.random_input_len, out_len or 64, s, opts.random_prefix_len, opts.random_range_ratio
                )
            return datasets.random_requests(
                n,
                opts.random_input_len,
                out_len or 64,
                opts.vocab_size,
                s,
                opts.random_prefix_len,
                opts.random_range_ratio,
            )

        requests, warmup = make(opts.num_prompts, seed), make(1, seed + 10_000)[0]  # another seed: no cache warmed
    elif name == "sonnet":
        assert opts.dataset_path is not None
        requests = datasets.sonnet_requests(
            opts.dataset_path,
            opts.num_prompts,
            opts.sonnet_input_len,
            out_len or opts.sonnet_output_len,
            opts.sonnet_prefix_len,
            tokenizer,
            chat_format=not chat,
            seed=seed,
        )
        warmup = requests[0]
    else:
        assert opts.dataset_path is not None
        if name == "sharegpt" and not datasets.is_sharegpt(opts.dataset_path):
            raise ValueError(f'{opts.dataset_path}: not ShareGPT JSON (a list of {{"conversations": [...]}})')
        encode = tokenizer.encode if name == "sharegpt" and out_len is None else None  # the replies' lengths
        requests = datasets.load_dataset(opts.dataset_path, opts.num_prompts, out_len, encode, default_output_len=256)
        if name == "custom" and not chat and not opts.skip_chat_template:  # as vLLM: templated here for /v1/completions
            requests = [_templated(r, tokenizer) for r in requests]
        warmup = requests[0]
    warmup = dataclasses.replace(warmup, output_len=min(warmup.output_len, 4))  # a check, not a load
    return _Prepared(
        url=url,
        backend=backend,
        model=model,
        tokenizer_id=opts.tokenizer or model,
        requests=requests,
        warmup=warmup,
        ignore_eos=opts.ignore_eos if opts.ignore_eos is not None else name == "random",
        percentile_metrics=serving.parse_percentile_metrics(opts.percentile_metrics),
        percentiles=serving.parse_metric_percentiles(opts.metric_percentiles),
        goodput=serving.parse_goodput(opts.goodput),
    )


def _templated(request: Any, tokenizer: Any) -> Any:
    """A text prompt as the token ids of one user message through the chat template (token ids stay)."""
    if not isinstance(request.prompt, str):
        return request
    ids = tokenizer.chat_ids(request.prompt)
    return dataclasses.replace(request, prompt=ids, prompt_len=len(ids))


def _load(opts: ServeOptions, **changes: Any) -> Any:
    from vllm_cli.benchmarks.serving import LoadSpec

    load = LoadSpec(
        request_rate=opts.request_rate,
        burstiness=opts.burstiness,
        max_concurrency=opts.max_concurrency,
        ramp_up_strategy=opts.ramp_up_strategy,
        ramp_up_start_rps=opts.ramp_up_start_rps,
        ramp_up_end_rps=opts.ramp_up_end_rps,
        seed=opts.seed,
    )
    load = dataclasses.replace(load, **changes)
    load.check()
    return load


def _run(opts: ServeOptions, prep: _Prepared, load: Any, description: str) -> dict:
    """One serving run under a progress bar that moves as each request finishes; vLLM's result dict."""
    import asyncio

    from vllm_cli.benchmarks import report, serving

    with report.progress(description) as bar:
        task = bar.add_task("", total=len(prep.requests))
        run = asyncio.run(
            serving.benchmark(
                prep.url,
                prep.model,
                prep.requests,
                load,
                prep.ignore_eos,
                opts.api_key,
                prep.warmup,
                lambda: bar.advance(task),
            )
        )
    return serving.vllm_result(
        run,
        backend=prep.backend,
        label=opts.label,
        model_id=prep.model,
        tokenizer_id=prep.tokenizer_id,
        load=load,
        percentile_metrics=prep.percentile_metrics,
        percentiles=prep.percentiles,
        goodput=prep.goodput or None,
    )


def _result_path(opts: ServeOptions, default_name: str) -> str | None:
    if opts.output_json:
        return opts.output_json
    if not opts.save_result:
        return None
    directory = opts.result_dir or "."
    os.makedirs(directory, exist_ok=True)
    return os.path.join(directory, opts.result_filename or default_name)


def _report_failures(result: dict) -> None:
    from vllm_cli.benchmarks import report

    if result["failed"]:
        first = next(e for e in result["errors"] if e)
        report.console.print(f"[red]{result['failed']} request(s) failed[/red], the first with: {first}")


@bench_app.command(cls=_SpaceSeparatedGoodput)
@with_serve_options
def serve(*, opts: ServeOptions) -> None:
    """Load an OpenAI-compatible server (vllm-cli serve, vLLM, llama.cpp, ...) over streaming HTTP, as
    `vllm bench serve` does, with its flags and its result JSON."""
    with user_errors():
        # asyncio, aiohttp, rich and numpy: imported when the command runs, so --help stays instant.
        from vllm_cli.benchmarks import report, serving

        load = _load(opts)
        prep = _prepare(opts, opts.seed)
        result = _run(opts, prep, load, "requests")
        report.print_serving(result, prep.url)
        report.write_json(_result_path(opts, serving.result_filename(result, opts.label, prep.backend)), result)
        _report_failures(result)


@bench_app.command(cls=_SpaceSeparatedGoodput)
@with_serve_options
def sweep(
    *,
    request_rates: Annotated[
        str | None,
        typer.Option(
            show_default=False, rich_help_panel=_LOAD, help="Request rates to run one after another, e.g. 1,2,4,8."
        ),
    ] = None,
    max_concurrencies: Annotated[
        str | None,
        typer.Option(
            show_default=False, rich_help_panel=_LOAD, help="Concurrency limits to run one after another, e.g. 1,4,16."
        ),
    ] = None,
    plot: Annotated[
        bool, typer.Option(rich_help_panel=_RESULTS, help="Write the plots as PNG and SVG (needs matplotlib).")
    ] = True,
    terminal_plot: Annotated[
        bool,
        typer.Option(rich_help_panel=_RESULTS, help="Also draw TTFT/TPOT vs the swept value here (needs plotext)."),
    ] = False,
    opts: ServeOptions,
) -> None:
    """`bench serve` at a series of request rates or concurrencies: one table, the plots (latency vs
    throughput, TTFT and TPOT percentiles vs the swept value) and one JSON with every point's result."""
    if (request_rates is None) == (max_concurrencies is None):
        raise typer.BadParameter("give one of --request-rates or --max-concurrencies", param_hint="--request-rates")
    with user_errors():
        from datetime import datetime

        from vllm_cli.benchmarks import report
        from vllm_cli.benchmarks import sweep as sweeping

        swept = "request_rate" if request_rates is not None else "max_concurrency"
        if swept == "request_rate" and opts.ramp_up_strategy:
            raise ValueError("a sweep of --request-rates takes no --ramp-up-strategy")
        values = (
            sweeping.parse_values(request_rates, "--request-rates", integer=False)
            if request_rates is not None
            else sweeping.parse_values(max_concurrencies or "", "--max-concurrencies", integer=True)
        )
        sweeping.require_plot_libraries(plot, terminal_plot)
        # The plots need these whatever --percentile-metrics says.
        opts = dataclasses.replace(
            opts,
            percentile_metrics=",".join(dict.fromkeys([*opts.percentile_metrics.split(","), "ttft", "tpot", "e2el"])),
        )
        points = []
        for i, value in enumerate(values):
            load = _load(opts, **{swept: value})
            # Random prompts: a new seed a point, so no point finds the last one's prompts in the prefix cache.
            prep = _prepare(opts, opts.seed + i)
            result = _run(opts, prep, load, f"{sweeping.SWEEPS[swept]} {sweeping.value_label(value)}")
            _report_failures(result)
            points.append((value, result))
        sweeping.print_sweep(points, swept, prep.percentiles)
        directory = opts.result_dir or "."
        os.makedirs(directory, exist_ok=True)
        model = prep.model.rstrip("/").split("/")[-1]
        stem = os.path.join(
            directory,
            os.path.splitext(opts.result_filename or "")[0]
            or f"{opts.label or prep.backend}-sweep-{swept.replace('_', '-')}-{model}-{datetime.now():%Y%m%d-%H%M%S}",
        )
        summary = {
            "swept": swept,
            "values": [sweeping.value_label(v) for v in values],
            "results": [r for _, r in points],
        }
        report.write_json(opts.output_json or f"{stem}.json", summary)
        if plot:
            for path in sweeping.write_plots(points, swept, prep.percentiles, stem):
                report.console.print(f"plot written to {path}")
        if terminal_plot:
            # print(), not the rich console: the plot is already laid out, colours included.
            print(sweeping.terminal_plot(points, swept, prep.percentiles, color=report.console.is_terminal))


def register(app: typer.Typer) -> None:
    app.add_typer(bench_app, name="bench")
