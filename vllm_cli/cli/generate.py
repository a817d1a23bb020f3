"""`vllm-cli generate`: one-shot offline generation with the in-process engine."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from vllm_cli.cli.engine_options import with_engine_options
from vllm_cli.cli.errors import user_errors
from vllm_cli.cli.help import SectionedHelpCommand
from vllm_cli.config import EngineArgs


@with_engine_options()
def generate(
    *,
    model: Annotated[
        str | None,
        typer.Argument(
            metavar="MODEL", help="Model: local dir, hub id or .gguf file (default: SmolLM2-135M-Instruct)."
        ),
    ] = None,
    prompt: Annotated[
        list[str] | None,
        typer.Option(
            "--prompt", "-p", help="A prompt (repeat for a batch; '-' reads stdin); default 'Hello, my name is'."
        ),
    ] = None,
    chat: Annotated[bool, typer.Option(help="Send each prompt as a user message through the chat template.")] = False,
    max_tokens: Annotated[int, typer.Option(help="Tokens to generate per prompt.")] = 64,
    temperature: Annotated[float, typer.Option(help="0 = greedy.")] = 0.0,
    top_p: Annotated[float, typer.Option()] = 1.0,
    engine_args: EngineArgs,
) -> None:
    """Generate completions for prompts with the offline engine (no server)."""
    prompt = prompt or ["Hello, my name is"]
    with user_errors():
        # The engine brings torch: imported when the command runs, so --help stays instant.
        from vllm_cli.engine.llm import LLM
        from vllm_cli.sampling_params import SamplingParams

        prompts = [sys.stdin.read() if p == "-" else p for p in prompt]
        params = SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p)
        llm = LLM(**vars(engine_args))
        if chat:
            outputs = llm.chat([[{"role": "user", "content": p}] for p in prompts], params)
        else:
            outputs = llm.generate(prompts, params)
        for p, out in zip(prompts, outputs):
            completion = out.outputs[0]
            typer.secho(p if not chat else f"[user] {p}", bold=True, nl=chat, err=False)
            typer.echo(completion.text)
            typer.secho(f"({len(completion.token_ids)} tokens, finish_reason={completion.finish_reason})", dim=True)


def register(app: typer.Typer) -> None:
    app.command("generate", cls=SectionedHelpCommand)(generate)
