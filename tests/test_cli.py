"""The CLI a new user meets first: instant --help/--version without torch, readable errors."""

from __future__ import annotations

import os
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
    (["generate", "--dtype", "float64"], "dtype must be one of"),
])
def test_errors_are_one_readable_line(args, message):
    out = _run(*args, env={"HF_HUB_OFFLINE": "1"})
    assert out.returncode != 0
    assert message in out.stderr
    assert "Traceback" not in out.stderr
