#!/usr/bin/env python
"""Write completions/vllm-cli.{bash,zsh,fish} from the Typer app.

The scripts are static: each subcommand's options, what takes a value and where files fit
come from the app's Click tree, so TAB runs no Python. tests/test_completions.py fails when
the checked-in scripts differ from what this writes: rerun it after changing a flag.

    python scripts/gen_completions.py [OUT_DIR]     (default: completions/)
"""

from __future__ import annotations

import enum
import re
import sys
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer.main

REPO = Path(__file__).resolve().parents[1]
PROG = "vllm-cli"
HEADER = f"{PROG} completion, generated from the Typer app by scripts/gen_completions.py: do not edit"


@dataclass
class Option:
    names: list[str]  # every spelling: --system, --system-prompt, -s; --stats and --no-stats for flags
    help: str
    takes_value: bool
    choices: list[str] = field(default_factory=list)
    files: bool = False  # a value that may be a path (not a number, not a choice)


@dataclass
class Command:
    path: list[str]  # [] for the root, ["bench", "latency"] for a nested one
    help: str
    options: list[Option]
    has_args: bool  # positionals (a model path, ...): complete files
    commands: dict[str, Command] = field(default_factory=dict)

    def walk(self) -> Iterator[Command]:
        yield self
        for sub in self.commands.values():
            yield from sub.walk()

    @property
    def key(self) -> str:
        return "/".join(self.path)


def _help(text: str | None) -> str:
    first = " ".join((text or "").strip().split("\n\n")[0].split())
    return first if len(first) <= 90 else first[:87].rstrip() + "..."


# Click's Parameter and Command are typed Any: typer vendors its own copy of Click since 0.17 (typer._click).
def _value(param: Any) -> tuple[list[str], bool]:
    """(choices, may be a file) of an option's value, from Click's param type (Typer before it
    vendored Click) or the annotation (Typer's type_descriptor since)."""
    kind = getattr(param, "type", None)
    if choices := getattr(kind, "choices", None):
        return [str(c) for c in choices], False
    annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    while args and typing.get_origin(annotation) is not typing.Literal:  # Optional[int], list[str]: the item
        annotation, args = args[0], [a for a in typing.get_args(args[0]) if a is not type(None)]
    if typing.get_origin(annotation) is typing.Literal:  # Literal["auto", "cpu", ...]: a fixed set of values
        return [str(v) for v in typing.get_args(annotation)], False
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return [str(m.value) for m in annotation], False
    numeric = annotation in (int, float) or getattr(kind, "name", "") in ("integer", "float", "integer range",
                                                                          "float range")
    return [], not numeric


def describe(cmd: Any, path: list[str], help_names: list[str]) -> Command:
    options: list[Option] = []
    has_args = False
    for p in cmd.params:
        if getattr(p, "hidden", False):
            continue
        if p.param_type_name == "argument":
            has_args = True
        elif p.param_type_name == "option":
            names, flag = list(p.opts) + list(p.secondary_opts), bool(p.is_flag or p.count)
            options.append(Option(names, _help(p.help), False) if flag
                           else Option(names, _help(p.help), True, *_value(p)))
    # Subcommands inherit the group's help_option_names (-h, --help) through Click's context.
    help_names = (getattr(cmd, "context_settings", None) or {}).get("help_option_names") or help_names
    options.append(Option(list(help_names), "Show this message and exit.", False))
    node = Command(path, _help(cmd.help), options, has_args)
    for name, sub in sorted(getattr(cmd, "commands", {}).items()):
        if not getattr(sub, "hidden", False):
            node.commands[name] = describe(sub, [*path, name], help_names)
    return node


def load_app() -> Command:
    sys.path.insert(0, str(REPO))
    from vllm_cli.cli.main import app  # after the line above: the checkout's package, installed or not

    return describe(typer.main.get_command(app), [], ["--help"])


# ---------------------------------------------------------------- bash

def _sq(text: str) -> str:
    """Single-quoted for any POSIX shell."""
    return "'" + text.replace("'", "'\\''") + "'"


def bash(root: Command) -> str:
    out = [f"# bash {HEADER}.", f"# Install: source this file from ~/.bashrc, or (with the bash-completion package) "
           f"mkdir -p ~/.local/share/bash-completion/completions && cp {PROG}.bash "
           f"~/.local/share/bash-completion/completions/{PROG}", "",
           "_vllm_cli() {",
           '    local cur="${COMP_WORDS[COMP_CWORD]}" prev="${COMP_WORDS[COMP_CWORD-1]}"',
           '    local path="" skip=0 i word',
           "    # Which (sub)command the words so far name; an option's value is not a subcommand.",
           "    for ((i = 1; i < COMP_CWORD; i++)); do",
           '        word="${COMP_WORDS[i]}"',
           "        if ((skip)); then skip=0; continue; fi",
           '        case "$path:$word" in']
    for node in root.walk():
        for name, sub in node.commands.items():
            out.append(f'            {_sq(node.key + ":" + name)}) path={_sq(sub.key)} ;;')
        valued = [n for o in node.options if o.takes_value for n in o.names]
        if valued:
            out.append(f"            {'|'.join(_sq(f'{node.key}:{n}') for n in valued)}) skip=1 ;;")
    out += ["        esac", "    done",
            "    # The value of an option: its choices, file names (the shell's default), or nothing for a number.",
            '    case "$path:$prev" in']
    for node in root.walk():
        for o in node.options:
            if o.choices:
                arms = "|".join(_sq(f"{node.key}:{n}") for n in o.names)
                words = _sq(" ".join(o.choices))
                out.append(f"        {arms}) COMPREPLY=($(compgen -W {words} -- \"$cur\")); return ;;")
        files = [n for o in node.options if o.files for n in o.names]
        if files:
            out.append(f"        {'|'.join(_sq(f'{node.key}:{n}') for n in files)}) COMPREPLY=(); return ;;")
        numbers = [n for o in node.options if o.takes_value and not (o.files or o.choices) for n in o.names]
        if numbers:  # nothing to offer: no file names either
            arms = "|".join(_sq(f"{node.key}:{n}") for n in numbers)
            out.append(f"        {arms}) compopt +o default 2>/dev/null; COMPREPLY=(); return ;;")
    out += ["    esac", '    local opts="" cmds=""', '    case "$path" in']
    for node in root.walk():
        opts = " ".join(n for o in node.options for n in o.names)
        out.append(f'        {_sq(node.key)}) opts={_sq(opts)}; cmds={_sq(" ".join(node.commands))} ;;')
    out += ["    esac",
            '    if [[ "$cur" == -* ]]; then',
            '        COMPREPLY=($(compgen -W "$opts" -- "$cur"))',
            '    elif [[ -n "$cmds" ]]; then',
            '        COMPREPLY=($(compgen -W "$cmds" -- "$cur"))',
            "    else",
            "        COMPREPLY=()  # a positional (model path): file names, from -o default",
            "    fi",
            "}",
            f"complete -o default -F _vllm_cli {PROG}", ""]
    return "\n".join(out)


# ---------------------------------------------------------------- zsh

def _zsh_desc(text: str) -> str:
    return text.replace("\\", "\\\\").replace("[", "(").replace("]", ")")


def _zsh_func(node: Command) -> str:
    return "_vllm_cli" + "".join("_" + re.sub(r"\W", "_", p) for p in node.path)


def zsh(root: Command) -> str:
    out = [f"#compdef {PROG}", f"# zsh {HEADER}.",
           f"# Install: mkdir -p ~/.zfunc && cp {PROG}.zsh ~/.zfunc/_{PROG}, then in ~/.zshrc before compinit "
           "(add `autoload -Uz compinit && compinit` if it has none): fpath=(~/.zfunc $fpath)", ""]
    for node in root.walk():
        specs = []
        for o in node.options:
            if o.takes_value:
                action = f"({' '.join(o.choices)})" if o.choices else "_files" if o.files else " "
                tail = f":{o.names[0].lstrip('-')}:{action}"
            else:
                tail = ""
            for n in o.names:
                specs.append(_sq(f"{n}[{_zsh_desc(o.help)}]{tail}"))
        if node.commands:
            specs += [_sq("1: :->command"), _sq("*:: :->args")]
        elif node.has_args:
            specs.append(_sq("*:file:_files"))
        out.append(f"{_zsh_func(node)}() {{")
        if node.commands:
            out.append("    local curcontext=$curcontext state line ret=1")
        out.append("    _arguments -s -S" + (" -C" if node.commands else "") + " \\")
        last = f"        {specs[-1]}" + (" && ret=0" if node.commands else "")
        out += [f"        {s} \\" for s in specs[:-1]] + [last]
        if node.commands:
            described = " ".join(_sq(f"{name}:{sub.help}") for name, sub in node.commands.items())
            out += ["    case $state in",
                    f"        command) local -a commands=({described})",
                    "            _describe -t commands command commands && ret=0 ;;",
                    "        args) case $words[1] in"]
            out += [f"            {name}) {_zsh_func(sub)} && ret=0 ;;" for name, sub in node.commands.items()]
            out += ["        esac ;;", "    esac", "    return ret"]
        out += ["}", ""]
    out += ['_vllm_cli "$@"', ""]
    return "\n".join(out)


# ---------------------------------------------------------------- fish

def _fq(text: str) -> str:
    """Single-quoted for fish, where \\ and \\' are escapes inside the quotes."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def fish(root: Command) -> str:
    out = [f"# fish {HEADER}.", f"# Install: mkdir -p ~/.config/fish/completions && cp {PROG}.fish ~/.config/fish/completions/", "",
           "# Which (sub)command the words so far name, e.g. bench/latency; an option's value is not one.",
           "function __vllm_cli_path",
           "    set -l path ''",
           "    set -l skip 0",
           "    set -l words (commandline -opc)",
           "    set -e words[1]",
           "    for word in $words",
           "        if test $skip = 1",
           "            set skip 0",
           "            continue",
           "        end",
           '        switch "$path:$word"']
    for node in root.walk():
        for name, sub in node.commands.items():
            out.append(f"            case {_fq(node.key + ':' + name)}\n                set path {_fq(sub.key)}")
        valued = [_fq(f"{node.key}:{n}") for o in node.options if o.takes_value for n in o.names]
        if valued:
            out.append(f"            case {' '.join(valued)}\n                set skip 1")
    out += ["        end", "    end", "    echo $path", "end", "",
            "function __vllm_cli_at", '    test (__vllm_cli_path) = "$argv[1]"', "end", "",
            f"complete -c {PROG} -f"]
    for node in root.walk():
        cond = f'-n "__vllm_cli_at \'{node.key}\'"'
        for name, sub in node.commands.items():
            out.append(f"complete -c {PROG} {cond} -a {name} -d {_fq(sub.help)}")
        for o in node.options:
            names = " ".join(f"-l {n[2:]}" if n.startswith("--") else f"-s {n[1:]}" for n in o.names)
            value = (f" -x -a {_fq(' '.join(o.choices))}" if o.choices else " -r -F" if o.files else " -x"
                     ) if o.takes_value else ""
            out.append(f"complete -c {PROG} {cond} {names}{value} -d {_fq(o.help)}")
        if node.has_args and not node.commands:
            out.append(f"complete -c {PROG} {cond} -F")
    return "\n".join(out) + "\n"


SHELLS = {"bash": bash, "zsh": zsh, "fish": fish}


def generate(out_dir: Path) -> list[Path]:
    root = load_app()
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for shell, render in SHELLS.items():
        path = out_dir / f"{PROG}.{shell}"
        path.write_text(render(root), encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":
    for p in generate(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "completions"):
        print(p)
