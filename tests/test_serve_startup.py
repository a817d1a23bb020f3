"""`vllm-cli serve` from the command line to ready: a busy port fails before the model loads,
vLLM's `--model` flag, the warm-up before the server listens, the CPU KV budget from vLLM
CPU's VLLM_CPU_KVCACHE_SPACE (and --gpu-memory-utilization said to be ignored on CPU), and the
404 for an unknown model naming the served ones."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from conftest import launch_server

from vllm_cli.config import EngineArgs
from vllm_cli.worker.worker import cpu_kv_cache_bytes, default_cpu_kv_budget

REPO = Path(__file__).resolve().parents[1]


def test_busy_port_is_one_line_before_the_model_loads(smollm2_gguf_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = subprocess.run([sys.executable, "-m", "vllm_cli.cli.main", "serve", smollm2_gguf_path,
                              "--host", "127.0.0.1", "--port", str(port)], capture_output=True, text=True,
                             timeout=120, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == (
        f"Error: cannot listen on 127.0.0.1:{port}: the address is already in use (another server is running "
        "there; stop it or choose another --port)")
    assert "Traceback" not in out.stderr and "Loaded" not in out.stderr  # failed before loading anything


def test_serve_with_vllms_model_flag_warms_up_before_listening(tiny_llama_dir, tmp_path):
    log = tmp_path / "log"
    server = launch_server(None, log, "--model", tiny_llama_dir, "--served-model-name", "tiny", "tiny-2",
                           "--gpu-memory-utilization", "0.5", kv_cache_memory=None,
                           env={"VLLM_CPU_KVCACHE_SPACE": "0.125"})
    try:
        assert httpx.get(f"{server.url}/health").status_code == 200
        text = log.read_text()
        assert text.index("Loading ") < text.index("Warmed up: one 8-token prompt") < text.index("Serving ")
        assert text.count("--gpu-memory-utilization does not apply on CPU") == 1
        assert re.search(r"KV cache: \d+ blocks .*\(0\.12 GiB", text), text  # VLLM_CPU_KVCACHE_SPACE=0.125
        metrics = httpx.get(f"{server.url}/metrics").text
        # the warm-up request is no request of a client's: not counted
        assert re.search(r"^vllm:prompt_tokens_total\{[^}]*\} 0\.0$", metrics, re.M), metrics
        r = httpx.post(f"{server.url}/v1/chat/completions", timeout=60,
                       json={"model": "mosaicml/mpt-7b", "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 404
        assert r.json()["error"]["message"] == (
            "The model `mosaicml/mpt-7b` does not exist. This server serves: `tiny`, `tiny-2`.")
    finally:
        assert server.stop() == 0, server.log_tail()


def test_cpu_kv_budget_flag_then_vllm_env_then_default(monkeypatch):
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "2")
    assert cpu_kv_cache_bytes(EngineArgs(kv_cache_memory="512MiB")) == 512 * 2**20  # the flag wins
    assert cpu_kv_cache_bytes(EngineArgs(), local_ranks=2) == 2 * 2**30  # GiB, each rank's own
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "lots")
    with pytest.raises(ValueError, match="VLLM_CPU_KVCACHE_SPACE must be a number of GiB > 0, got 'lots'"):
        cpu_kv_cache_bytes(EngineArgs())
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE")
    assert 0 < cpu_kv_cache_bytes(EngineArgs(), local_ranks=2) <= default_cpu_kv_budget() // 2 + 2**20
