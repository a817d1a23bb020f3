"""`--help` as plain text in sections (Typer's rich_help_panel names), laid out by Click's formatter.

Typer's rich tables squeeze the option column to fit 80 columns and cut long names
(`--gpu-memory-utiliz…`), and show `<bool>` after switches as if they took a value. Click's
formatter never cuts a name (a long one gets its help on the next line) and prints a switch
as `--flag / --no-flag` alone, so every command's help is rendered by it, grouped as the rich
panels were. The app sets `rich_markup_mode=None`; commands take `cls=SectionedHelpCommand`.
"""

from __future__ import annotations

from typing import Any

from typer.core import TyperCommand

GENERAL_SECTION = "Options"


def format_sections(params: list[Any], ctx: Any, formatter: Any) -> None:
    """Arguments first, then the options of each rich_help_panel, in the order they first appear."""
    arguments: list[tuple[str, str]] = []
    sections: dict[str, list[tuple[str, str]]] = {GENERAL_SECTION: []}
    for param in params:
        record = param.get_help_record(ctx)
        if record is None:
            continue
        if param.param_type_name == "argument":
            arguments.append(record)
        else:
            sections.setdefault(getattr(param, "rich_help_panel", None) or GENERAL_SECTION, []).append(record)
    if arguments:
        with formatter.section("Arguments"):
            formatter.write_dl(arguments)
    for title, records in sections.items():
        if records:
            with formatter.section(title):
                formatter.write_dl(records)


class SectionedHelpCommand(TyperCommand):
    """A Typer command whose --help lists its options by section, names whole at any width."""

    # ctx, formatter: Click's, which typer vendors (typer._click) since 0.17, so no public name fits both.
    def format_options(self, ctx: Any, formatter: Any) -> None:
        format_sections(self.get_params(ctx), ctx, formatter)
