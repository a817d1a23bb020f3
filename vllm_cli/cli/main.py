"""The `vllm-cli` Typer app. Subcommands live in their own modules and import the engine
(torch, transformers) only when they run, so --help, --version and completion are instant."""

from __future__ import annotations

from typing import Annotated

import typer

from vllm_cli.cli import bench, chat, generate, serve
from vllm_cli.version import __version__

app = typer.Typer(
    name="vllm-cli",
    help="Serve, chat with and benchmark large language models from one command.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain --help: see cli/help.py
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"vllm-cli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool | None,
        typer.Option("--version", "-V", callback=_version_callback, is_eager=True, help="Show the version and exit."),
    ] = None,
) -> None:
    """Serve, chat with and benchmark large language models from one command."""


for command in (generate, serve, chat, bench):
    command.register(app)


def main() -> None:
    """The `vllm-cli` console script."""
    app()


if __name__ == "__main__":
    main()
