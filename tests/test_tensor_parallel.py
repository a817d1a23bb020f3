"""Tensor parallelism on the CPU over gloo: each native family sharded over 2 or 3 processes gives
the single-process greedy tokens and prompt logprobs; SmolLM2 (9 heads, 3 KV heads) over 3;
serve, chat, generate across two "nodes" and torchrun; a worker that dies stops the engine with
a clear error and leaves no process behind."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import build_tiny_checkpoint, launch_server, tiny_config
from vllm_cli import LLM, SamplingParams
from vllm_cli.distributed import WorkerFailedError
from vllm_cli.distributed.parallel_state import kv_head_shard, padded_shard

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "vllm_cli.cli.main"]
VOCAB = 250  # not a multiple of 2 or 3: the vocabulary shards are padded
GREEDY = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True, logprobs=0, prompt_logprobs=0)


def _env(**extra) -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])), **extra}


def _prompts(n: int = 6, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 50, (n,), generator=g).tolist()
    return [{"prompt_token_ids": torch.randint(0, VOCAB, (length,), generator=g).tolist()} for length in lengths]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead, only not yet reaped
        return "Z" not in open(f"/proc/{pid}/stat").read().split(")")[-1].split()[0]
    except OSError:
        return False


def _worker_pids(llm: LLM) -> list[int]:
    return [proc.pid for proc in llm.engine.tp_group._processes.values()]


# ----------------------------------------------------------------- the shards' arithmetic

def test_vocab_and_kv_head_shards():
    assert [padded_shard(50257, r, 2) for r in range(2)] == [(0, 25129, 25129), (25129, 50257, 25129)]
    assert [padded_shard(250, r, 3) for r in range(3)] == [(0, 84, 84), (84, 168, 84), (168, 250, 84)]
    from vllm_cli.distributed import parallel_state as ps

    saved = (ps._STATE.rank, ps._STATE.world_size)
    try:
        ps._STATE.world_size = 4
        layout = []
        for rank in range(4):
            ps._STATE.rank = rank
            layout.append((kv_head_shard(8), kv_head_shard(2), kv_head_shard(1)))
        assert [x[0] for x in layout] == [(0, 2), (2, 2), (4, 2), (6, 2)]  # split
        assert [x[1] for x in layout] == [(0, 1), (0, 1), (1, 1), (1, 1)]  # each replicated twice
        assert [x[2] for x in layout] == [(0, 1)] * 4  # multi-query: everywhere
        with pytest.raises(ValueError, match="must divide or be a multiple"):
            kv_head_shard(3)
    finally:
        ps._STATE.rank, ps._STATE.world_size = saved


# ----------------------------------------------------------------- every family, sharded

# (family, tensor-parallel size): GQA split (llama, qwen2/3, phi3), KV heads replicated (mistral:
# 1 KV head; falcon: multi-query), ALiBi slopes sliced (mpt; 6 heads over 3 ranks), Conv1D and
# learned positions (gpt2), partial rotary and parallel residual (gpt_neox), tied embeddings.
CASES = [("llama", 2), ("llama_tied_mha", 3), ("mistral", 2), ("qwen2", 2), ("qwen3", 2), ("phi3", 2),
         ("mpt", 2), ("mpt_6_heads", 3), ("gpt2", 2), ("gpt_neox", 2), ("falcon", 2)]


@pytest.mark.parametrize("kind, tp", CASES, ids=[f"{k}-tp{t}" for k, t in CASES])
def test_sharded_model_gives_the_single_process_tokens(kind, tp, tmp_path):
    path = build_tiny_checkpoint(tmp_path / kind, tiny_config(kind, VOCAB), seed=1)
    prompts = _prompts()
    single = LLM(path, skip_tokenizer_init=True, num_kv_blocks=64).generate(prompts, GREEDY, use_tqdm=False)
    with LLM(path, skip_tokenizer_init=True, num_kv_blocks=64, tensor_parallel_size=tp) as llm:
        sharded = llm.generate(prompts, GREEDY, use_tqdm=False)
        workers = _worker_pids(llm)
        assert len(workers) == tp - 1
    for one, many in zip(single, sharded):
        assert many.outputs[0].token_ids == one.outputs[0].token_ids
        ours = [next(iter(e.values())).logprob for e in many.prompt_logprobs[1:]]
        ref = [next(iter(e.values())).logprob for e in one.prompt_logprobs[1:]]
        torch.testing.assert_close(torch.tensor(ours), torch.tensor(ref), atol=1e-4, rtol=1e-4)
    time.sleep(0.2)
    assert not [pid for pid in workers if _pid_alive(pid)], "a worker outlived shutdown()"


def test_smollm2_over_three_ranks_gives_the_single_process_chat(smollm2_gguf_path):
    """9 query heads and 3 KV heads: one KV head per rank; the 49152-token vocabulary in thirds."""
    chats = [[{"role": "user", "content": q}] for q in
             ("What is the capital of France?", "Write a haiku about the sea.", "Name three colours.")]
    params = SamplingParams(temperature=0, max_tokens=20)
    single = [o.outputs[0].text for o in LLM(smollm2_gguf_path).chat(chats, params, use_tqdm=False)]
    with LLM(smollm2_gguf_path, tensor_parallel_size=3) as llm:
        assert [o.outputs[0].text for o in llm.chat(chats, params, use_tqdm=False)] == single
    assert "Paris" in single[0]


def test_indivisible_heads_are_a_clear_error(tmp_path):
    path = build_tiny_checkpoint(tmp_path / "m", tiny_config("llama", VOCAB), seed=1)  # 4 heads
    with pytest.raises(ValueError, match=r"attention heads \(4\) is not divisible by the tensor-parallel size \(3\)"):
        LLM(path, skip_tokenizer_init=True, num_kv_blocks=64, tensor_parallel_size=3)
    # a failure after the workers loaded (a KV pool too small) shuts them down too
    with pytest.raises(ValueError, match="fewer than max_model_len"):
        LLM(path, skip_tokenizer_init=True, num_kv_blocks=4, tensor_parallel_size=2)
    # the failed starts shut their workers down: a new group can start in this process
    with LLM(path, skip_tokenizer_init=True, num_kv_blocks=64, tensor_parallel_size=2) as llm:
        assert llm.generate(_prompts(1), GREEDY, use_tqdm=False)[0].outputs[0].token_ids


# ----------------------------------------------------------------- failures and clean-up

def test_a_worker_killed_mid_run_is_a_clear_error_and_leaves_no_process(tmp_path):
    path = build_tiny_checkpoint(tmp_path / "m", tiny_config("mpt_6_heads", VOCAB), seed=1)
    llm = LLM(path, skip_tokenizer_init=True, num_kv_blocks=64, tensor_parallel_size=3)
    try:
        engine = llm.engine
        engine.add_request("long", _prompts(1)[0], SamplingParams(max_tokens=400, ignore_eos=True))
        for _ in range(3):
            engine.step()
        workers = _worker_pids(llm)
        os.kill(workers[0], signal.SIGKILL)
        start = time.monotonic()
        with pytest.raises(WorkerFailedError, match=r"worker rank 1 \(pid \d+\) died: killed by SIGKILL"):
            while engine.has_unfinished_requests():
                engine.step()
        assert time.monotonic() - start < 10  # reported, not waited for
        with pytest.raises(WorkerFailedError):  # and it stays down
            engine.step()
    finally:
        llm.shutdown()
    time.sleep(0.2)
    assert not [pid for pid in workers if _pid_alive(pid)]


def test_a_forward_failing_on_the_driver_stops_the_group(tmp_path):
    """The workers may be waiting in a collective the driver never reached: no further step."""
    path = build_tiny_checkpoint(tmp_path / "m", tiny_config("llama", VOCAB), seed=1)
    llm = LLM(path, skip_tokenizer_init=True, num_kv_blocks=64, tensor_parallel_size=2)
    workers = _worker_pids(llm)
    try:
        def broken(*args, **kwargs):
            raise RuntimeError("out of memory (simulated)")

        llm.engine.model.forward = broken
        with pytest.raises(WorkerFailedError, match=r"failed on rank 0 \(RuntimeError: out of memory \(simulated\)\); "
                                                    "the ranks are out of step"):
            llm.generate(_prompts(1), GREEDY, use_tqdm=False)
        with pytest.raises(WorkerFailedError, match="out of step"):
            llm.engine.step()
    finally:
        llm.shutdown()
    time.sleep(0.2)
    assert not [pid for pid in workers if _pid_alive(pid)]


def test_serve_with_two_ranks_then_a_dead_worker_stops_the_server(tiny_llama_dir, tmp_path):
    server = launch_server(tiny_llama_dir, tmp_path / "serve.log", "--tensor-parallel-size", "2")
    try:
        import openai

        client = openai.OpenAI(base_url=server.url + "/v1", api_key="EMPTY")
        reply = client.chat.completions.create(model=tiny_llama_dir, max_tokens=8, temperature=0,
                                               messages=[{"role": "user", "content": "Hello there"}])
        assert reply.usage.completion_tokens == 8
        workers = [int(pid) for pid in subprocess.run(["pgrep", "-P", str(server.proc.pid)], capture_output=True,
                                                      text=True).stdout.split()]
        assert len(workers) == 1
        os.kill(workers[0], signal.SIGKILL)
        assert server.proc.wait(30) == 1
        log = server.log_tail()
        assert re.search(r"Error: the engine stopped: tensor-parallel worker rank 1 \(pid \d+\) died: killed by SIGKILL",
                         log), log
        assert "Traceback" not in log
    finally:
        if server.proc.poll() is None:
            server.proc.kill()


def test_serve_sigint_stops_every_worker(tiny_llama_dir, tmp_path):
    server = launch_server(tiny_llama_dir, tmp_path / "serve.log", "--tensor-parallel-size", "2")
    workers = [int(pid) for pid in subprocess.run(["pgrep", "-P", str(server.proc.pid)], capture_output=True,
                                                  text=True).stdout.split()]
    assert len(workers) == 1
    server.proc.send_signal(signal.SIGINT)  # Ctrl-C: only the server acts on it
    assert server.proc.wait(60) == 0, server.log_tail()
    time.sleep(0.2)
    assert not [pid for pid in workers if _pid_alive(pid)]


def test_chat_quick_with_two_ranks(tiny_llama_dir, tmp_path):
    out = subprocess.run([*CLI, "chat", tiny_llama_dir, "--tensor-parallel-size", "2", "--kv-cache-memory", "64MiB",
                          "--max-tokens", "6", "--temperature", "0", "-q", "Hello"],
                         capture_output=True, text=True, timeout=180, cwd=tmp_path,
                         env=_env(XDG_DATA_HOME=str(tmp_path / "xdg")))
    assert out.returncode == 0, out.stderr
    single = subprocess.run([*CLI, "chat", tiny_llama_dir, "--kv-cache-memory", "64MiB", "--max-tokens", "6",
                             "--temperature", "0", "-q", "Hello"], capture_output=True, text=True, timeout=180,
                            cwd=tmp_path, env=_env(XDG_DATA_HOME=str(tmp_path / "xdg")))
    assert out.stdout == single.stdout and out.stdout.strip()


# ----------------------------------------------------------------- rendezvous: two nodes, torchrun

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_on_one_machine(tiny_llama_dir):
    """--nnodes 2: node 1 hosts rank 1 and waits; node 0 runs the engine and prints the result."""
    port = str(_free_port())
    common = ["generate", tiny_llama_dir, "-p", "Hello", "--max-tokens", "6", "--kv-cache-memory", "64MiB",
              "--tensor-parallel-size", "2", "--nnodes", "2", "--master-addr", "127.0.0.1", "--master-port", port]
    node1 = subprocess.Popen([*CLI, *common, "--node-rank", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=_env())
    node0 = subprocess.run([*CLI, *common, "--node-rank", "0"], capture_output=True, text=True, timeout=180, env=_env())
    out1, err1 = node1.communicate(timeout=60)
    assert node0.returncode == 0, node0.stderr
    assert node1.returncode == 0, err1
    single = subprocess.run([*CLI, "generate", tiny_llama_dir, "-p", "Hello", "--max-tokens", "6",
                             "--kv-cache-memory", "64MiB"], capture_output=True, text=True, timeout=180, env=_env())
    assert node0.stdout == single.stdout and "(6 tokens" in single.stdout
    assert "Node 1 of 2: running tensor-parallel ranks 1" in err1
    assert out1 == ""


def test_two_nodes_serve_and_stop_together(tiny_llama_dir, tmp_path):
    """serve on node 1 only hosts rank 1 (the engine thread hands its SystemExit to the main
    thread); node 0 serves the API; SIGTERM on node 0 stops both with status 0."""
    port = str(_free_port())
    common = ["--tensor-parallel-size", "2", "--nnodes", "2", "--master-addr", "127.0.0.1", "--master-port", port]
    node1 = subprocess.Popen([*CLI, "serve", tiny_llama_dir, *common, "--node-rank", "1", "--kv-cache-memory", "64MiB"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env())
    server = launch_server(tiny_llama_dir, tmp_path / "node0.log", *common, "--node-rank", "0")
    try:
        import openai

        reply = openai.OpenAI(base_url=server.url + "/v1", api_key="EMPTY").completions.create(
            model=tiny_llama_dir, prompt="Hello", max_tokens=5, temperature=0)
        assert reply.usage.completion_tokens == 5
        assert server.stop() == 0
        _, err1 = node1.communicate(timeout=60)
        assert node1.returncode == 0, err1
        assert "Node 1 of 2: running tensor-parallel ranks 1" in err1
    finally:
        for proc in (server.proc, node1):
            if proc.poll() is None:
                proc.kill()


def test_torchrun_ranks_become_the_driver_and_a_worker(tiny_llama_dir):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                str(_free_port()), "-m", "vllm_cli.cli.main"]
    out = subprocess.run([*torchrun, "generate", tiny_llama_dir, "-p", "Hello", "--max-tokens", "6",
                          "--kv-cache-memory", "64MiB", "--tensor-parallel-size", "2"],
                         capture_output=True, text=True, timeout=180, env=_env())
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("(6 tokens, finish_reason=length)") == 1  # only the driver prints
