"""Shell completions: the checked-in scripts are what scripts/gen_completions.py writes from
the Typer app today, and they complete subcommands, options and paths in the shells at hand."""

from __future__ import annotations

import os
import re
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


def _readme_install(home: Path) -> None:
    """Run the README's three install lines as written, in a fresh home."""
    readme = (REPO / "README.md").read_text()
    block = readme[readme.index("### Shell completions"):].split("```bash\n", 1)[1].split("```", 1)[0]
    lines = [line for line in block.splitlines() if line.strip() and not line.startswith("#")]
    assert len(lines) == 3 and all(line.startswith("mkdir -p ") for line in lines), lines
    for line in lines:
        subprocess.run(["bash", "-c", line], cwd=REPO, env={**os.environ, "HOME": str(home)}, check=True, timeout=30)


def test_readme_install_lines_work_in_a_fresh_home(tmp_path):
    _readme_install(tmp_path)
    for installed, source in ((".local/share/bash-completion/completions/vllm-cli", "vllm-cli.bash"),
                              (".zfunc/_vllm-cli", "vllm-cli.zsh"),
                              (".config/fish/completions/vllm-cli.fish", "vllm-cli.fish")):
        assert (tmp_path / installed).read_text() == (COMPLETIONS / source).read_text()


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_bash_completes_choices():
    assert _bash_complete("serve", "--dtype", "b") == ["bfloat16"]
    assert _bash_complete("chat", "--log-level", "") == ["debug", "info", "warning", "error", "critical"]
    assert _bash_complete("bench", "latency", "--device", "") == ["auto", "cpu", "cuda"]


@pytest.mark.skipif(shutil.which("fish") is None, reason="no fish (.ci/run installs it with apt-get as root)")
def test_fish_completes_subcommands_choices_and_paths_once_installed(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    _readme_install(home)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "tiny.gguf").write_text("")
    # No --no-config: fish autoloads vllm-cli's completion from ~/.config/fish/completions, as installed.
    lines = ["vllm-cli ", "vllm-cli chat --system bench --ur", "vllm-cli serve --dtype ",
             f"vllm-cli serve {tmp_path}/models/", "vllm-cli bench l"]
    script = "; ".join(f"complete -C '{line}'; echo ---" for line in lines)
    out = subprocess.run(["fish", "-c", script], capture_output=True, text=True, timeout=60, check=True,
                         env={**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
                              "XDG_DATA_HOME": str(home / ".local/share")})
    answers = [[row.split("\t")[0] for row in part.strip().splitlines()] for part in out.stdout.split("---")[:-1]]
    assert answers == [["bench", "chat", "generate", "serve"], ["--url"], ["auto", "bfloat16", "float16", "float32"],
                       [f"{tmp_path}/models/tiny.gguf"], ["latency"]], out.stdout + out.stderr


# zsh completes only inside its line editor: a pseudo-terminal (zsh's own zpty) runs an interactive
# `zsh -f`, sets fpath and runs compinit as the README says, types the line and TAB, and reads the listing.
_ZSH_DRIVER = r"""
zmodload zsh/zpty
zpty -b z zsh -f -i
zpty -w z "fpath=(~/.zfunc \$fpath); autoload -Uz compinit; compinit -u -D; PROMPT='>'; LISTMAX=0; vllm-cli() { :; }"
sleep 1
zpty -n -w z "$1"$'\t'
sleep 3
out=""
while zpty -r -t z line; do out+="$line"; done
zpty -d z
print -r -- "$out"
"""


def _zsh_complete(home: Path, line: str) -> str:
    out = subprocess.run(["zsh", "-f", "-c", _ZSH_DRIVER, "zsh", line], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "HOME": str(home)})
    text = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", out.stdout.replace("\r", ""))
    return text.split(line, 1)[-1]  # what came after the typed line: the listing or the completed word


@pytest.mark.skipif(shutil.which("zsh") is None, reason="no zsh (.ci/run installs it with apt-get as root)")
def test_zsh_completes_subcommands_choices_and_paths_once_installed(tmp_path):
    subprocess.run(["zsh", "-n", str(COMPLETIONS / "vllm-cli.zsh")], check=True, timeout=30)
    _readme_install(tmp_path)
    listing = _zsh_complete(tmp_path, "vllm-cli ")
    assert all(re.search(rf"(?m)^{name} +-- ", listing) for name in ("bench", "chat", "generate", "serve")), listing
    listing = _zsh_complete(tmp_path, "vllm-cli serve --dtype ")
    assert all(word in listing.split() for word in ("auto", "float32", "bfloat16", "float16")), listing
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "tiny.gguf").write_text("")
    assert "tiny.gguf" in _zsh_complete(tmp_path, f"vllm-cli serve {tmp_path}/models/")  # the one file: completed


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
