"""Shell completions: the checked-in scripts are what scripts/gen_completions.py writes from
the Typer app today, and they complete subcommands, options and paths in the shells at hand."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
COMPLETIONS = REPO / "completions"


def test_checked_in_scripts_are_current(tmp_path):
    subprocess.run([sys.executable, str(REPO / "scripts" / "gen_completions.py"), str(tmp_path)], check=True,
                   capture_output=True, timeout=60)
    fresh = sorted(p.name for p in tmp_path.iterdir())
    assert fresh == ["vllm-cli.bash", "vllm-cli.fish", "vllm-cli.zsh"]
    stale = [name for name in fresh if not (COMPLETIONS / name).is_file()
             or (COMPLETIONS / name).read_text() != (tmp_path / name).read_text()]
    assert not stale, f"{stale} are stale: run `python scripts/gen_completions.py` and commit completions/"


def _bash_complete(*words: str) -> list[str]:
    script = (f"source {COMPLETIONS / 'vllm-cli.bash'}\n"
              'COMP_WORDS=("$@"); COMP_CWORD=$((${#COMP_WORDS[@]} - 1)); _vllm_cli\n'
              'printf "%s\\n" "${COMPREPLY[@]}"')
    out = subprocess.run(["bash", "-c", script, "bash", "vllm-cli", *words], capture_output=True, text=True,
                         timeout=30, check=True)
    return out.stdout.split()


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_bash_completes_commands_options_and_skips_option_values():
    assert _bash_complete("") == ["bench", "chat", "generate", "serve"]
    assert _bash_complete("chat", "--sys") == ["--system", "--system-prompt"]
    # "bench" is the value of --system here, not a subcommand.
    assert _bash_complete("chat", "--system", "bench", "--ur") == ["--url"]
    assert _bash_complete("bench", "l") == ["latency"]
    assert "--max-model-len" in _bash_complete("serve", "--max")
    assert _bash_complete("chat", "--system", "") == []  # a value: the shell's default (files)
    assert _bash_complete("serve", "--port", "") == []  # a number: nothing, files switched off


@pytest.mark.skipif(shutil.which("fish") is None, reason="no fish")
def test_fish_script_completes():
    out = subprocess.run(["fish", "--no-config", "-c", f"source {COMPLETIONS / 'vllm-cli.fish'}; "
                          "complete -C 'vllm-cli '; complete -C 'vllm-cli chat --system bench --ur'"],
                         capture_output=True, text=True, timeout=30, check=True)
    names = [line.split("\t")[0] for line in out.stdout.splitlines()]
    assert names == ["bench", "chat", "generate", "serve", "--url"]


@pytest.mark.skipif(shutil.which("zsh") is None, reason="no zsh")
def test_zsh_script_parses():
    subprocess.run(["zsh", "-n", str(COMPLETIONS / "vllm-cli.zsh")], check=True, timeout=30)


def test_typer_dynamic_completion_is_instant():
    """What `vllm-cli --install-completion` installs calls back into the CLI on each TAB:
    it must answer without importing the engine."""
    code = ("import atexit, sys\n"
            "atexit.register(lambda: print('HEAVY', [m for m in ('torch', 'transformers', 'prompt_toolkit', 'openai')"
            " if m in sys.modules]))\n"
            "from vllm_cli.cli.main import app\n"
            "app(prog_name='vllm-cli')")
    env = {**os.environ, "_VLLM_CLI_COMPLETE": "complete_bash", "COMP_WORDS": "vllm-cli chat --sys", "COMP_CWORD": "2",
           "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert out.stdout.split() == ["--system", "--system-prompt", "HEAVY", "[]"], out.stdout + out.stderr
