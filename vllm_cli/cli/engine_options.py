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
from typing import Annotated, Any, Optional

import typer

from vllm_cli.config import EngineArgs

_PANEL = "Engine options"

# name -> (annotation, help)
_ENGINE_OPTIONS: dict[str, tuple[object, str]] = {
    "tokenizer": (Optional[str], "Tokenizer dir or hub id (default: the model's own)."),
    "revision": (Optional[str], "Model revision (branch, tag or commit) on the hub."),
    "trust_remote_code": (bool, "Allow configs/tokenizers that need remote code."),
    "dtype": (str, "auto | float32 | bfloat16 | float16 (auto: float32 on CPU, the checkpoint's 16-bit type on CUDA)."),
    "device": (str, "auto | cpu | cuda."),
    "load_format": (str, "auto | dummy (random weights from config.json alone, for benchmarks)."),
    "model_impl": (
        str,
        "auto | native | transformers (auto: our implementation if there is one, else "
        "transformers' modeling code on the paged KV cache).",
    ),
    "attention_backend": (
        str,
        "auto | torch | triton (auto: the VLLM_CLI_ATTENTION_BACKEND environment variable "
        "if set, else torch; triton kernels are opt-in until verified on a GPU, and need "
        "TRITON_INTERPRET=1 on CPU).",
    ),
    "structured_outputs_backend": (
        str,
        "auto | xgrammar | guidance: the constrained-decoding backend (auto: "
        "xgrammar, llguidance for what xgrammar cannot compile).",
    ),
    "runner": (
        str,
        "auto | generate | pooling: generate text, or serve embeddings (/v1/embeddings; auto: pooling "
        "for a sentence-transformers model directory).",
    ),
    "seed": (int, "Random seed."),
    "max_model_len": (Optional[int], "Context length (default: the model's)."),
    "block_size": (int, "Tokens per KV-cache block."),
    "kv_cache_memory": (Optional[str], "KV-cache size on CPU, e.g. 4GiB (default: 4 GiB or a third of free RAM)."),
    "gpu_memory_utilization": (float, "Share of GPU memory the engine may use."),
    "max_num_seqs": (int, "Most sequences running at once."),
    "max_num_batched_tokens": (Optional[int], "Token budget of one step (default 2048)."),
    "enable_prefix_caching": (bool, "Reuse the KV cache of shared prompt prefixes."),
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


def with_engine_options(*exclude: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a command taking `model` and `engine_args`; `exclude` drops flags it sets itself."""

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

        @functools.wraps(func)
        def wrapper(**kwargs: Any) -> Any:
            values = {n: kwargs.pop(n) for n in added_names}
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
