"""`vllm-cli serve`: the OpenAI-compatible HTTP server (aiohttp) on the in-process engine."""

from __future__ import annotations

import dataclasses
import json
from typing import Annotated, Any

import typer

from vllm_cli.cli.engine_options import choices, with_engine_options
from vllm_cli.cli.errors import user_errors
from vllm_cli.cli.help import SectionedHelpCommand
from vllm_cli.config import EngineArgs
from vllm_cli.logger import LOG_LEVELS

_SERVER = "Server options"
_TOOLS = "Tool calling and reasoning"


class _ServeCommand(SectionedHelpCommand):
    """Lets `--served-model-name a b c` take several values after one flag, as vLLM's argparse
    nargs='+' does (Click options take one value each; repeating the flag works too)."""

    def make_parser(self, ctx: Any) -> Any:
        parser = super().make_parser(ctx)
        option = getattr(parser, "_long_opt", {}).get("--served-model-name")
        if option is not None:  # Click internals; without them only the repeated form works
            store = option.process

            def greedy(value: Any, state: Any) -> None:
                store(value, state)
                while state.rargs and not state.rargs[0].startswith("-"):
                    store(state.rargs.pop(0), state)

            option.process = greedy
        return parser


def _origins(values: list[str] | None) -> list[str]:
    """--allowed-origins as vLLM spells it ('["*"]', a JSON list), comma-separated, or repeated."""
    out: list[str] = []
    for value in values or []:
        value = value.strip()
        if value.startswith("["):
            try:
                items = json.loads(value)
            except json.JSONDecodeError as e:
                raise typer.BadParameter(f"not a JSON list: {value}", param_hint="--allowed-origins") from e
            out.extend(str(v) for v in items)
        else:
            out.extend(v.strip() for v in value.split(",") if v.strip())
    return out


@with_engine_options()
def serve(
    *,
    model: Annotated[
        str | None,
        typer.Argument(
            metavar="MODEL", help="Model: local dir, hub id or .gguf file (default: SmolLM2-135M-Instruct)."
        ),
    ] = None,
    host: Annotated[
        str | None, typer.Option(help="Interface to listen on (default: all interfaces).", rich_help_panel=_SERVER)
    ] = None,
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port).", rich_help_panel=_SERVER)] = 8000,
    served_model_name: Annotated[
        list[str] | None,
        typer.Option(
            "--served-model-name",
            metavar="NAME...",
            rich_help_panel=_SERVER,
            help="Name(s) clients use in `model` (default: the model's). The first is used in responses "
            "that do not name one.",
        ),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="VLLM_API_KEY",
            show_default=False,
            rich_help_panel=_SERVER,
            help="Require `Authorization: Bearer KEY` (all paths but /health, /metrics, /version).",
        ),
    ] = None,
    chat_template: Annotated[
        str | None,
        typer.Option(
            help="Jinja chat template (a file or inline); default: the tokenizer's, else ChatML.",
            rich_help_panel=_SERVER,
        ),
    ] = None,
    allowed_origins: Annotated[
        list[str] | None,
        typer.Option(
            metavar="ORIGINS",
            help="CORS origins allowed to call the API: '*', a list like '[\"https://a.example\"]' or "
            "comma-separated (default: none, CORS off).",
            rich_help_panel=_SERVER,
        ),
    ] = None,
    log_level: Annotated[
        choices(LOG_LEVELS),  # type: ignore[valid-type]
        typer.Option(case_sensitive=False, help="Server log level.", rich_help_panel=_SERVER),
    ] = "info",
    shutdown_timeout: Annotated[
        float,
        typer.Option(
            help="On SIGINT/SIGTERM, seconds in-flight requests get to finish before they are aborted.",
            rich_help_panel=_SERVER,
        ),
    ] = 30.0,
    responses_store_size: Annotated[
        int,
        typer.Option(
            min=0,
            metavar="N",
            rich_help_panel=_SERVER,
            help="How many /v1/responses results the server keeps in memory (least recently used dropped "
            "first) for GET /v1/responses/{id} and previous_response_id; 0: none (store is ignored). Per "
            "process: lost on restart.",
        ),
    ] = 1000,
    enable_auto_tool_choice: Annotated[
        bool,
        typer.Option(
            "--enable-auto-tool-choice",
            rich_help_panel=_TOOLS,
            help="Serve tool_choice 'auto' (and tools without tool_choice) by parsing calls out of the model's text "
            "with --tool-call-parser.",
        ),
    ] = False,
    tool_call_parser: Annotated[
        str | None,
        typer.Option(
            metavar="NAME",
            rich_help_panel=_TOOLS,
            help="How the model writes tool calls: hermes, llama3_json, mistral, pythonic, or one a "
            "--tool-parser-plugin registers.",
        ),
    ] = None,
    tool_parser_plugin: Annotated[
        str | None,
        typer.Option(
            metavar="PATH",
            rich_help_panel=_TOOLS,
            help="A Python file that registers a tool parser (ToolParserManager.register_module).",
        ),
    ] = None,
    reasoning_parser: Annotated[
        str | None,
        typer.Option(
            metavar="NAME",
            rich_help_panel=_TOOLS,
            help="Split the model's thinking into reasoning_content: deepseek_r1, qwen3.",
        ),
    ] = None,
    engine_args: EngineArgs,
) -> None:
    """Serve a model over OpenAI's HTTP API (/v1/chat/completions, /v1/completions, /v1/models, ...)."""
    origins = _origins(allowed_origins)
    with user_errors():
        import asyncio

        from vllm_cli.entrypoints.openai.api_server import ParserOptions, run_server
        from vllm_cli.logger import set_log_level

        parsers = ParserOptions(enable_auto_tool_choice, tool_call_parser, tool_parser_plugin, reasoning_parser)
        parsers.resolve()  # an unknown parser name: one line, before the model loads
        set_log_level(log_level)
        engine_args = dataclasses.replace(
            engine_args, served_model_name=list(served_model_name or []), chat_template=chat_template
        )
        asyncio.run(
            run_server(
                engine_args,
                host=host,
                port=port,
                api_key=api_key or None,
                allowed_origins=origins,
                shutdown_timeout=shutdown_timeout,
                parsers=parsers,
                responses_store_size=responses_store_size,
            )
        )


def register(app: typer.Typer) -> None:
    app.command("serve", cls=_ServeCommand)(serve)
