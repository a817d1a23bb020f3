"""The CLI a new user meets first: instant --help/--version without torch, readable errors."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

CLI = [sys.executable, "-m", "vllm_cli.cli.main"]


def _run(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def test_help_and_version_import_no_heavy_modules():
    code = ("import sys, runpy; sys.argv = ['vllm-cli', '--help']\n"
            "try:\n    runpy.run_module('vllm_cli.cli.main', run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'transformers', 'vllm_cli.engine.llm_engine') if m in sys.modules]\n"
            "print('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "HEAVY []" in out.stdout, out.stdout + out.stderr
    version = _run("--version")
    assert version.returncode == 0 and version.stdout.startswith("vllm-cli ")


def test_generate_runs_offline_on_a_tiny_model(tiny_llama_dir):
    out = _run("generate", tiny_llama_dir, "-p", "Hello", "-p", "World", "--max-tokens", "5",
               "--kv-cache-memory", "64MiB")
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("(5 tokens, finish_reason=length)") == 2


@pytest.mark.parametrize("args, message", [
    (["generate", "/nonexistent/model.gguf"], "Error: "),
    (["generate", "--dtype", "float64"], "'float64' is not one of 'auto', 'float32'"),
    (["serve", "a-model", "--model", "another-model"], "name different models"),
    (["chat", "a-model", "--model", "another-model"], "name different models"),
    (["bench", "throughput", "a-model", "--model", "another-model"], "name different models"),
    (["bench", "latency", "a-model", "--model", "another-model"], "name different models"),
])
def test_errors_are_one_readable_line(args, message):
    out = _run(*args, env={"HF_HUB_OFFLINE": "1"})
    assert out.returncode != 0
    assert message in out.stderr
    assert "Traceback" not in out.stderr


def _commands(cmd, path=()):
    """(path, Click command) of every command of the app, the root included."""
    yield list(path), cmd
    for name, sub in sorted(getattr(cmd, "commands", {}).items()):
        yield from _commands(sub, (*path, name))


def test_help_at_80_columns_shows_every_option_name_whole_and_switches_without_a_value():
    import typer.main

    from vllm_cli.cli.main import app

    for path, cmd in _commands(typer.main.get_command(app)):
        out = _run(*path, "--help", env={"COLUMNS": "80"}, timeout=60)
        assert out.returncode == 0, out.stderr
        where = f"`vllm-cli {' '.join(path)} --help`"
        assert max(map(len, out.stdout.splitlines())) <= 80, where
        assert "…" not in out.stdout and "<bool>" not in out.stdout, where
        for param in cmd.params:
            if param.param_type_name != "option" or param.hidden:
                continue
            for name in [*param.opts, *param.secondary_opts]:
                # The name whole, as a word of its own: not cut, not run into the next word.
                line = re.search(rf"(?m)^.*(?<![\w-]){re.escape(name)}(?![\w-]).*$", out.stdout)
                assert line, f"{name} is not whole in {where}:\n{out.stdout}"
            if param.is_flag:  # a switch takes no value: nothing like <bool> or BOOLEAN after it
                line = re.search(rf"(?m)^ +(?:\S+, )*{re.escape(param.opts[0])}\b(.*)$", out.stdout)
                assert line and not re.match(r"\s*(<|[A-Z]{2,})", line.group(1)), (param.opts[0], where)


def test_bench_takes_vllms_model_flag(tiny_llama_dir, tmp_path):
    from typer.testing import CliRunner

    from vllm_cli.cli.main import app

    for command, extra in (("throughput", ["--num-prompts", "2"]), ("latency", ["--num-iters", "1", "--batch-size", "1"])):
        result_file = tmp_path / f"{command}.json"
        out = CliRunner().invoke(app, ["bench", command, "--model", tiny_llama_dir,
                                       "--input-len", "4", "--output-len", "2", "--kv-cache-memory", "64MiB", *extra,
                                       "--output-json", str(result_file)])
        assert out.exit_code == 0, out.output + repr(out.exception)
        assert json.loads(result_file.read_text())["settings"]["engine_args"]["model"] == tiny_llama_dir


def test_generate_takes_vllms_model_flag_and_the_same_name_twice(tiny_llama_dir):
    out = _run("generate", tiny_llama_dir, "--model", tiny_llama_dir, "-p", "Hello", "--max-tokens", "3",
               "--kv-cache-memory", "64MiB")
    assert out.returncode == 0, out.stderr
    assert "(3 tokens, finish_reason=length)" in out.stdout
