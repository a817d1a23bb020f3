"""`vllm-cli chat`: talk to a model in the terminal, in-process or through a server (--url).

Only Typer is imported here; the engine, prompt_toolkit and openai load inside the command,
so `vllm-cli --help` and shell completion stay instant.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import TYPE_CHECKING, Annotated

import typer

from vllm_cli.cli.engine_options import choices, with_engine_options
from vllm_cli.cli.errors import one_line, user_errors
from vllm_cli.cli.help import SectionedHelpCommand
from vllm_cli.config import EngineArgs
from vllm_cli.logger import LOG_LEVELS, set_log_level

if TYPE_CHECKING:
    from vllm_cli.cli.chat_backends import Backend
    from vllm_cli.cli.chat_session import Conversation

_CHAT = "Chat options"
_REMOTE = "Remote server (--url)"
_SAMPLING = "Sampling (change later with /params)"


@with_engine_options()
def chat(
    *,
    model: Annotated[
        str | None,
        typer.Argument(
            metavar="MODEL",
            help="Model: local dir, hub id or .gguf file (default: SmolLM2-135M-Instruct). With --url: the served "
            "model's name.",
        ),
    ] = None,
    system: Annotated[
        str | None,
        typer.Option(
            "--system",
            "--system-prompt",
            "-s",
            help="System message, e.g. 'translate to Italian'.",
            rich_help_panel=_CHAT,
        ),
    ] = None,
    quick: Annotated[
        str | None,
        typer.Option(
            "--quick", "-q", metavar="MESSAGE", help="Send one message, print the reply, exit.", rich_help_panel=_CHAT
        ),
    ] = None,
    whole_input: Annotated[
        bool,
        typer.Option(
            "--whole-input",
            help="With piped stdin: all of it is one message (default: each line is one).",
            rich_help_panel=_CHAT,
        ),
    ] = False,
    stats: Annotated[
        bool,
        typer.Option(
            "--stats/--no-stats", help="Print tokens and tokens/s after each reply (on stderr).", rich_help_panel=_CHAT
        ),
    ] = True,
    markdown: Annotated[
        bool,
        typer.Option(
            "--markdown/--no-markdown",
            help="Render replies as Markdown on a terminal (/markdown switches it later).",
            rich_help_panel=_CHAT,
        ),
    ] = True,
    chat_template: Annotated[
        str | None,
        typer.Option(
            help="Jinja chat template (a file or inline); default: the tokenizer's, else ChatML.", rich_help_panel=_CHAT
        ),
    ] = None,
    log_level: Annotated[
        choices(LOG_LEVELS) | None,  # type: ignore[valid-type]
        typer.Option(
            case_sensitive=False,
            show_default=False,
            help="Log level (default: warning, so that the chat stays readable).",
            rich_help_panel=_CHAT,
        ),
    ] = None,
    url: Annotated[
        str | None,
        typer.Option(
            help="Chat with an OpenAI-compatible server instead, e.g. http://localhost:8000/v1.",
            rich_help_panel=_REMOTE,
        ),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar=["VLLM_API_KEY", "OPENAI_API_KEY"],
            show_default=False,
            help="The server's API key.",
            rich_help_panel=_REMOTE,
        ),
    ] = None,
    model_name: Annotated[
        str | None,
        typer.Option(help="The served model to use (default: the first the server lists).", rich_help_panel=_REMOTE),
    ] = None,
    temperature: Annotated[float, typer.Option(help="0 = greedy.", rich_help_panel=_SAMPLING)] = 0.7,
    top_p: Annotated[float, typer.Option(rich_help_panel=_SAMPLING)] = 0.95,
    max_tokens: Annotated[
        int | None,
        typer.Option(help="Longest reply (default: up to the end of the context).", rich_help_panel=_SAMPLING),
    ] = None,
    engine_args: EngineArgs,
) -> None:
    """Chat with a model in the terminal: a REPL that keeps the conversation (/help lists its commands).

    Piped stdin: each line is a message and only the replies reach stdout.
    """
    with user_errors():
        # asyncio and what the chat needs (SamplingParams here; prompt_toolkit, the engine or openai in
        # _main) load when the command runs, so that --help and shell completion stay instant.
        import asyncio

        from vllm_cli.cli.chat_session import CommandError, Conversation

        conv = Conversation(system=system)
        try:
            conv.update_params({"temperature": temperature, "top_p": top_p, "max_tokens": max_tokens})
        except CommandError as e:
            raise typer.BadParameter(str(e)) from None
        interactive = quick is None and sys.stdin.isatty()
        engine_args = dataclasses.replace(engine_args, chat_template=chat_template)
        ok = asyncio.run(
            _main(
                conv,
                engine_args,
                url=url,
                api_key=api_key,
                model_name=model_name or model,
                quick=quick,
                whole_input=whole_input,
                interactive=interactive,
                stats=stats,
                markdown=markdown,
                log_level=log_level,
            )
        )
    if not ok:
        raise typer.Exit(1)


async def _main(
    conv: Conversation,
    engine_args: EngineArgs,
    *,
    url: str | None,
    api_key: str | None,
    model_name: str | None,
    quick: str | None,
    whole_input: bool,
    interactive: bool,
    stats: bool,
    markdown: bool,
    log_level: str | None,
) -> bool:
    # Lazy: see chat() (chat_repl brings prompt_toolkit).
    from vllm_cli.cli.chat_backends import BackendError, EngineBackend, OpenAIBackend
    from vllm_cli.cli.chat_repl import ChatRunner, make_prompt_session, scripted
    from vllm_cli.cli.chat_repl import interactive as repl

    # INFO lines would interleave with the conversation: quiet unless asked for.
    set_log_level(log_level or os.environ.get("VLLM_CLI_LOG_LEVEL") or "warning")
    backend: Backend
    try:
        if url:
            backend = await OpenAIBackend.connect(url, api_key, model_name)
        else:
            if interactive:
                print(f"Loading {engine_args.model or 'the default model'}...", file=sys.stderr, flush=True)
            backend = EngineBackend(engine_args)
    except BackendError as e:
        print(f"Error: {one_line(e)}", file=sys.stderr)
        return False
    runner = ChatRunner(backend, conv, sys.stdout, sys.stderr, show_stats=stats, markdown=markdown)
    try:
        if quick is not None:
            return await scripted(runner, [quick], commands=False)
        if not interactive:
            inputs = [sys.stdin.read().rstrip("\n")] if whole_input else (line.rstrip("\r\n") for line in sys.stdin)
            return await scripted(runner, inputs, commands=not whole_input)
        runner.note(f"Chatting with {backend.description}. /help lists commands; Ctrl-D leaves.")
        await repl(runner, make_prompt_session())
        return True
    finally:
        await backend.aclose()


def register(app: typer.Typer) -> None:
    app.command("chat", cls=SectionedHelpCommand)(chat)
