"""The engine flags every subcommand that builds an engine shares (serve, chat, bench).

`@with_engine_options` appends these options to a Typer command's signature and hands the
command one `engine_args: EngineArgs` built from them, so each flag is declared once, named
as vLLM names it, with its default coming from EngineArgs. Importing this module imports no
torch: `vllm-cli --help` stays instant.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from typing import Annotated, Any, Literal, Optional

import typer

from vllm_cli.config import (
    ATTENTION_BACKENDS,
    DEVICES,
    DTYPES,
    LOAD_FORMATS,
    MODEL_IMPLS,
    PREFIX_CACHING_HASH_ALGOS,
    QUANTIZATION_METHODS,
    RUNNERS,
    STRUCTURED_OUTPUTS_BACKENDS,
    EngineArgs,
)

_PANEL = "Engine options"


def choices(values: tuple[str, ...]) -> object:
    """The annotation of an option whose value is one of `values`: Typer makes it a Click Choice
    (checked, shown as <a|b|c> in --help, offered by the shell completions)."""
    return Literal.__getitem__(values)  # Literal[values]: values are only known at run time


# name -> (annotation, help)
_ENGINE_OPTIONS: dict[str, tuple[object, str]] = {
    "tokenizer": (Optional[str], "Tokenizer dir or hub id (default: the model's own)."),
    "revision": (Optional[str], "Model revision (branch, tag or commit) on the hub."),
    "trust_remote_code": (bool, "Allow configs/tokenizers that need remote code."),
    "dtype": (
        choices(DTYPES),
        "auto: float32 on CPU, the checkpoint's 16-bit type on CUDA.",
    ),
    "device": (choices(DEVICES), "Where the model runs (auto: cuda when there is a GPU)."),
    "load_format": (choices(LOAD_FORMATS), "dummy: random weights from config.json alone, for benchmarks."),
    "quantization": (
        choices(QUANTIZATION_METHODS),
        "Weight-only quantization, CPU (auto: a .gguf keeps its quantized tensors, a float checkpoint stays "
        "float; none: dequantize a .gguf at load; int8 / int4: pack a float checkpoint's linears at load "
        "into Q8_0 / Q4_1 groups of 32).",
    ),
    "quantize_lm_head": (
        bool,
        "With --quantization int8 / int4: the LM head too, in Q8_0 whatever the linears' format (a tied "
        "embedding shares its blocks); off, it stays float as in vLLM.",
    ),
    "model_impl": (
        choices(MODEL_IMPLS),
        "auto: our implementation if there is one, else transformers' modeling code on the paged KV cache.",
    ),
    "attention_backend": (
        choices(ATTENTION_BACKENDS),
        "auto: the VLLM_CLI_ATTENTION_BACKEND environment variable if set, else torch; triton kernels are "
        "opt-in until verified on a GPU, and need TRITON_INTERPRET=1 on CPU.",
    ),
    "structured_outputs_backend": (
        choices(STRUCTURED_OUTPUTS_BACKENDS),
        "The constrained-decoding backend (auto: xgrammar, llguidance for what xgrammar cannot compile).",
    ),
    "runner": (
        choices(RUNNERS),
        "Generate text, or serve embeddings (/v1/embeddings; auto: pooling for a sentence-transformers "
        "model directory).",
    ),
    "seed": (int, "Random seed."),
    "max_model_len": (Optional[int], "Context length (default: the model's)."),
    "block_size": (int, "Tokens per KV-cache block."),
    "kv_cache_memory": (
        Optional[str],
        "KV-cache size on CPU, e.g. 4GiB (default: $VLLM_CPU_KVCACHE_SPACE GiB if set, else 4 GiB or a third of "
        "free RAM).",
    ),
    "gpu_memory_utilization": (
        Optional[float],
        "Share of GPU memory the engine may use (default 0.9); on CPU, see --kv-cache-memory.",
    ),
    "max_num_seqs": (int, "Most sequences running at once."),
    "max_num_batched_tokens": (Optional[int], "Token budget of one step (default 2048)."),
    "enable_prefix_caching": (bool, "Reuse the KV cache of shared prompt prefixes."),
    "prefix_caching_hash_algo": (
        choices(PREFIX_CACHING_HASH_ALGOS),
        "The prefix cache's block hash (SHA-256 of a compact byte encoding, or of canonical CBOR).",
    ),
    "enable_chunked_prefill": (bool, "Split long prompts into chunks that share steps with decodes."),
    "tensor_parallel_size": (int, "Ranks to shard the model over (processes; one GPU each on CUDA)."),
    "nnodes": (int, "Machines the tensor-parallel ranks span (run the same command on each)."),
    "node_rank": (int, "This machine's index among --nnodes (0 runs the engine and the API)."),
    "master_addr": (Optional[str], "Rendezvous host of a multi-node group (default: $MASTER_ADDR, else 127.0.0.1)."),
    "master_port": (Optional[int], "Rendezvous port (default: $MASTER_PORT; one machine: any free port)."),
}


def _option(name: str, annotation: object, help_text: str) -> inspect.Parameter:
    default = EngineArgs.__dataclass_fields__[name].default
    flag = "--" + name.replace("_", "-")
    decls = [f"{flag}/--no-{flag[2:]}"] if annotation is bool else [flag]
    return inspect.Parameter(
        name,
        inspect.Parameter.KEYWORD_ONLY,
        default=default,
        annotation=Annotated[
            annotation, typer.Option(*decls, help=help_text, rich_help_panel=_PANEL, show_default=default is not None)
        ],
    )


# vLLM's `--model NAME`, beside the positional MODEL, so a vLLM command line works unchanged.
_MODEL_FLAG = inspect.Parameter(
    "model_flag",
    inspect.Parameter.KEYWORD_ONLY,
    default=None,
    annotation=Annotated[
        Optional[str],
        typer.Option(
            "--model", metavar="MODEL", show_default=False, help="The same as the MODEL argument (vLLM's flag)."
        ),
    ],
)


def resolve_model(positional: str | None, flag: str | None) -> str | None:
    """MODEL or --model; both naming different models is a usage error."""
    if positional is not None and flag is not None and positional != flag:
        raise typer.BadParameter(
            f"MODEL ({positional!r}) and --model ({flag!r}) name different models: give one", param_hint="--model"
        )
    return positional if positional is not None else flag


def with_engine_options(*exclude: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a command taking `model` and `engine_args`; `exclude` drops flags it sets itself.
    A command whose `model` is a positional argument also gets vLLM's `--model` for it."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        sig = inspect.signature(func)
        hints = typing.get_type_hints(func, include_extras=True)  # real objects, not strings
        own = [
            p.replace(annotation=hints.get(p.name, p.annotation))
            for p in sig.parameters.values()
            if p.name != "engine_args"
        ]
        added = [
            _option(n, a, h) for n, (a, h) in _ENGINE_OPTIONS.items() if n not in exclude and n not in sig.parameters
        ]
        added_names = [p.name for p in added]
        if "model" in sig.parameters:
            own.append(_MODEL_FLAG)

        @functools.wraps(func)
        def wrapper(**kwargs: Any) -> Any:
            values = {n: kwargs.pop(n) for n in added_names}
            if "model_flag" in kwargs:
                kwargs["model"] = resolve_model(kwargs.get("model"), kwargs.pop("model_flag"))
            try:
                engine_args = EngineArgs(model=kwargs.get("model"), **values)
            except ValueError as e:
                raise typer.BadParameter(str(e)) from None
            return func(engine_args=engine_args, **kwargs)

        # typer reads the signature; functools.wraps types the wrapper without this attribute
        wrapper.__signature__ = sig.replace(parameters=own + added, return_annotation=None)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in own + added}
        return wrapper

    return decorate
