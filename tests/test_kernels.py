"""The Triton kernels (vllm_cli.kernels) against their plain-torch references, the Triton
attention backend against the torch one, and the whole engine with attention_backend="triton"
against the torch backend's greedy tokens.

Without a CUDA GPU the kernels run under the Triton interpreter (TRITON_INTERPRET=1, set
here before any kernel module is imported: triton reads it when a kernel is decorated); with
one they run for real. Inputs are fresh random draws each session (VLLM_CLI_TEST_SEED=<n>
replays one; failures print theirs); outputs and unused cache slots are poisoned with NaN so
an element a kernel forgets to write, or a slot it should not read, fails the comparison.
"""

from __future__ import annotations

import os

import torch  # does not import triton

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import random
import types
import zlib
from pathlib import Path

import pytest

pytest.importorskip("triton")

import conftest
from conftest import build_tiny_checkpoint, tiny_config
from vllm_cli.kernels.kv_cache import write_kv_cache, write_kv_cache_ref
from vllm_cli.kernels.paged_attention import (
    paged_decode_attention,
    paged_decode_attention_ref,
    paged_prefill_attention,
    paged_prefill_attention_ref,
)
from vllm_cli.kernels.rms_norm import rms_norm, rms_norm_ref
from vllm_cli.kernels.rotary import rotary_embedding, rotary_embedding_ref

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")
DEVICE = torch.device("cpu" if INTERPRETED or not torch.cuda.is_available() else "cuda")
SEED = int(os.environ.get("VLLM_CLI_TEST_SEED", random.randrange(2**31)))
NAN = float("nan")
TOL = {torch.float32: 2e-5, torch.bfloat16: 3e-2, torch.float16: 5e-3}
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def gen(request) -> torch.Generator:
    """A fresh draw per test and session, reproducible from the printed seed."""
    seed = (SEED + zlib.crc32(request.node.name.encode())) % 2**31
    print(f"VLLM_CLI_TEST_SEED={SEED} (this test: torch seed {seed})")
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def poisoned_empty(monkeypatch):
    """torch.empty returns NaN-filled float tensors (outputs and workspaces the kernels allocate)."""
    real = torch.empty

    def empty(*args, **kwargs):
        t = real(*args, **kwargs)
        if t.is_floating_point():
            t.fill_(NAN)
        return t

    monkeypatch.setattr(torch, "empty", empty)


def randn(gen, *shape, dtype=torch.float32):
    return torch.randn(*shape, generator=gen).to(DEVICE, dtype)


def assert_close(actual, expected, dtype, what=""):
    tol = TOL[dtype]
    torch.testing.assert_close(actual.float(), expected.float(), rtol=tol, atol=tol,
                               msg=lambda m: f"{what} (VLLM_CLI_TEST_SEED={SEED})\n{m}")


# ----- paged K/V -----

def paged_kv(*args, **kwargs):
    return conftest.paged_kv(*args, device=DEVICE, **kwargs)


GQA = [(4, 4), (4, 2), (8, 2), (8, 1)]  # (query heads, KV heads): MHA, 2, 4, MQA


def draw_lengths(gen, n, low, high):
    return torch.randint(low, high, (n,), generator=gen).tolist()


@pytest.mark.parametrize("num_splits", [1, 3])
@pytest.mark.parametrize("window", [None, 33])
@pytest.mark.parametrize("alibi", [False, True])
@pytest.mark.parametrize("heads", GQA, ids=lambda h: f"{h[0]}q{h[1]}kv")
def test_decode_attention_matches_reference(gen, poisoned_empty, heads, alibi, window, num_splits):
    num_heads, num_kv_heads = heads
    head_dim, block_size = 64, (16 if num_kv_heads % 2 == 0 else 5)
    # Lengths not multiples of the block size, a 1-token context, one long enough for 3 splits.
    ctx = [1] + draw_lengths(gen, 2, 2, 40) + [70 + int(torch.randint(0, 9, (1,), generator=gen))]
    ctx = [c + 1 if c % block_size == 0 else c for c in ctx]
    k_cache, v_cache, tables = paged_kv(gen, ctx, block_size, num_kv_heads, head_dim, torch.float32)
    context_lens = torch.tensor(ctx, dtype=torch.int32, device=DEVICE)
    slopes = torch.rand(num_heads, generator=gen).to(DEVICE) if alibi else None
    # The queries sit at scattered rows of a larger flat batch; the other rows must stay NaN.
    num_rows = len(ctx) + 3
    q = randn(gen, num_rows, num_heads, head_dim)
    rows = torch.randperm(num_rows, generator=gen)[: len(ctx)].to(DEVICE, torch.int32)
    seq_ids = torch.randperm(len(ctx), generator=gen).to(DEVICE, torch.int32)
    out = torch.full_like(q, NAN)
    paged_decode_attention(q, k_cache, v_cache, tables, context_lens, block_size, 0.125, slopes, window, out=out,
                           seq_ids=seq_ids, query_rows=rows, num_splits=num_splits, block_n=16)
    expected = paged_decode_attention_ref(q[rows.long()][torch.argsort(seq_ids.long())], k_cache, v_cache, tables,
                                          context_lens, block_size, 0.125, slopes, window)
    assert_close(out[rows.long()], expected[seq_ids.long()], torch.float32, "decode")
    untouched = torch.ones(num_rows, dtype=torch.bool)
    untouched[rows.long().cpu()] = False
    assert out[untouched.to(DEVICE)].isnan().all()


@pytest.mark.parametrize("head_dim", [80, 96, 128, 256])
def test_decode_attention_head_sizes(gen, poisoned_empty, head_dim):
    ctx = [3, 37, 50]
    k_cache, v_cache, tables = paged_kv(gen, ctx, 16, 2, head_dim, torch.float32)
    context_lens = torch.tensor(ctx, dtype=torch.int32, device=DEVICE)
    q = randn(gen, 3, 8, head_dim)
    slopes = torch.rand(8, generator=gen).to(DEVICE)
    out = paged_decode_attention(q, k_cache, v_cache, tables, context_lens, 16, head_dim**-0.5, slopes,
                                 num_splits=2, block_n=16)
    expected = paged_decode_attention_ref(q, k_cache, v_cache, tables, context_lens, 16, head_dim**-0.5, slopes)
    assert_close(out, expected, torch.float32, f"decode head_dim {head_dim}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_attention_16_bit(gen, poisoned_empty, dtype):
    ctx = [5, 29, 61]
    k_cache, v_cache, tables = paged_kv(gen, ctx, 16, 2, 64, dtype)
    context_lens = torch.tensor(ctx, dtype=torch.int32, device=DEVICE)
    slopes = torch.rand(8, generator=gen).to(DEVICE)
    q = randn(gen, 3, 8, 64, dtype=dtype)
    out = paged_decode_attention(q, k_cache, v_cache, tables, context_lens, 16, 0.125, slopes, 40,
                                 num_splits=2, block_n=16)
    assert out.dtype == dtype
    assert_close(out, paged_decode_attention_ref(q, k_cache, v_cache, tables, context_lens, 16, 0.125, slopes, 40),
                 dtype, "decode")
    q_lens = [5, 20, 33]
    cu = torch.tensor([0, 5, 25, 58], dtype=torch.int32, device=DEVICE)
    q = randn(gen, 58, 8, 64, dtype=dtype)
    out = paged_prefill_attention(q, k_cache, v_cache, tables, cu, context_lens, 16, 0.125, slopes, 40,
                                  max_query_len=max(q_lens), block_m=16, block_n=16)
    assert_close(out, paged_prefill_attention_ref(q, k_cache, v_cache, tables, cu, context_lens, 16, 0.125, slopes, 40),
                 dtype, "prefill")


@pytest.mark.parametrize("window", [None, 13])
@pytest.mark.parametrize("alibi", [False, True])
@pytest.mark.parametrize("heads", GQA, ids=lambda h: f"{h[0]}q{h[1]}kv")
def test_prefill_attention_matches_reference(gen, poisoned_empty, heads, alibi, window):
    num_heads, num_kv_heads = heads
    head_dim, block_size = (64, 16) if num_kv_heads % 2 == 0 else (80, 5)
    # Whole prompts (no earlier context), chunks after cached context, a 1-token query.
    q_lens = [int(x) for x in draw_lengths(gen, 3, 2, 40)] + [1]
    earlier = [0] + draw_lengths(gen, 3, 1, 30)
    ctx = [q + e for q, e in zip(q_lens, earlier)]
    k_cache, v_cache, tables = paged_kv(gen, ctx, block_size, num_kv_heads, head_dim, torch.float32)
    context_lens = torch.tensor(ctx, dtype=torch.int32, device=DEVICE)
    cu = torch.tensor([0] + torch.tensor(q_lens).cumsum(0).tolist(), dtype=torch.int32, device=DEVICE)
    q = randn(gen, sum(q_lens), num_heads, head_dim)
    slopes = torch.rand(num_heads, generator=gen).to(DEVICE) if alibi else None
    out = torch.full_like(q, NAN)
    paged_prefill_attention(q, k_cache, v_cache, tables, cu, context_lens, block_size, head_dim**-0.5, slopes, window,
                            out=out, max_query_len=max(q_lens), block_m=16, block_n=16)
    expected = paged_prefill_attention_ref(q, k_cache, v_cache, tables, cu, context_lens, block_size, head_dim**-0.5,
                                           slopes, window)
    assert_close(out, expected, torch.float32, "prefill")
    # skip_decode leaves the 1-token sequence (the last rows) to the decode kernel.
    out = torch.full_like(q, NAN)
    paged_prefill_attention(q, k_cache, v_cache, tables, cu, context_lens, block_size, head_dim**-0.5, slopes, window,
                            out=out, skip_decode=True, block_m=16, block_n=16)
    assert_close(out[:-1], expected[:-1], torch.float32, "prefill, skip_decode")
    assert out[-1].isnan().all()


def test_prefill_default_tiles_and_long_prompt(gen, poisoned_empty):
    """The launcher's own tile sizes (64 x 64), a prompt spanning several query and key tiles."""
    ctx = [150, 90]  # query lengths 150 (a whole prompt) and 7 (a chunk after 83 cached tokens)
    k_cache, v_cache, tables = paged_kv(gen, ctx, 16, 2, 64, torch.float32)
    context_lens = torch.tensor(ctx, dtype=torch.int32, device=DEVICE)
    cu = torch.tensor([0, 150, 157], dtype=torch.int32, device=DEVICE)
    q = randn(gen, 157, 4, 64)
    out = paged_prefill_attention(q, k_cache, v_cache, tables, cu, context_lens, 16, 0.125, sliding_window=100)
    expected = paged_prefill_attention_ref(q, k_cache, v_cache, tables, cu, context_lens, 16, 0.125, sliding_window=100)
    assert_close(out, expected, torch.float32, "prefill")


# ----- the other kernels -----

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_kv_cache_write_touches_only_its_slots(gen, dtype):
    num_tokens, num_kv_heads, head_dim, num_slots = 11, 3, 80, 64
    # k and v as the model hands them over: strided views of one fused projection.
    fused = randn(gen, num_tokens, 5, num_kv_heads, head_dim, dtype=dtype)
    k, v = fused[:, 1], fused[:, 3]
    slots = torch.randperm(num_slots, generator=gen)[:num_tokens]
    slots[torch.randperm(num_tokens, generator=gen)[:3]] = -1  # padding tokens: skipped
    slots = slots.to(DEVICE)
    k_cache = randn(gen, num_slots, num_kv_heads, head_dim, dtype=dtype) * 1000
    v_cache = torch.full_like(k_cache, NAN)
    expected_k, expected_v = k_cache.clone(), v_cache.clone()
    write_kv_cache_ref(k, v, expected_k, expected_v, slots)
    write_kv_cache(k, v, k_cache, v_cache, slots)
    assert torch.equal(k_cache, expected_k)
    assert torch.equal(v_cache.nan_to_num(7.0), expected_v.nan_to_num(7.0))
    assert v_cache.isnan().flatten(1).all(1).sum() == num_slots - (num_tokens - 3)  # the rest stay NaN


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(7, 96), (2, 5, 64)], ids=str)
def test_rms_norm_matches_our_rms_norm(gen, poisoned_empty, shape, dtype):
    from vllm_cli.model_executor.layers.norm import RMSNorm

    norm = RMSNorm(shape[-1], eps=1e-5).to(DEVICE, dtype)
    with torch.no_grad():
        norm.weight.copy_(randn(gen, shape[-1]))
    x, residual = randn(gen, *shape, dtype=dtype), randn(gen, *shape, dtype=dtype)
    with torch.no_grad():
        assert_close(rms_norm(x, norm.weight, 1e-5), norm(x), dtype, "rms_norm")
        expected_sum = x + residual
        normed, new_residual = rms_norm(x, norm.weight, 1e-5, residual)
        assert_close(new_residual, expected_sum, dtype, "residual")
        assert_close(normed, norm(expected_sum), dtype, "rms_norm with residual")
        ref_normed, ref_residual = rms_norm_ref(x, norm.weight, 1e-5, residual)
        assert_close(normed, ref_normed, dtype, "rms_norm_ref")
        # In place (vLLM's fused_add_rms_norm): x gets the norm, residual the sum.
        x2, r2 = x.clone(), residual.clone()
        out, res = rms_norm(x2, norm.weight, 1e-5, r2, inplace=True)
        assert out.data_ptr() == x2.data_ptr() and res.data_ptr() == r2.data_ptr()
        assert_close(x2, ref_normed, dtype, "inplace norm")
        assert_close(r2, ref_residual, dtype, "inplace residual")


@pytest.mark.parametrize("rotary_dim", [64, 16])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_rotary_neox_matches_rotary_embedding(gen, poisoned_empty, rotary_dim, dtype):
    from vllm_cli.model_executor.layers.rotary import RotaryEmbedding

    num_tokens, num_heads, head_dim = 9, 3, 64
    rope = RotaryEmbedding(types.SimpleNamespace(rope_theta=10000.0), head_dim, 512, rotary_dim).to(DEVICE)
    positions = torch.randint(0, 512, (num_tokens,), generator=gen).to(DEVICE)
    cos, sin = rope.cos_sin(positions, dtype)
    # q as the model hands it over: a strided view of a fused QKV projection.
    qkv = randn(gen, num_tokens, (num_heads + 2) * head_dim, dtype=dtype)
    x = qkv[:, : num_heads * head_dim].view(num_tokens, num_heads, head_dim)
    expected = rope.apply(x, cos, sin)
    assert_close(rotary_embedding(x, cos, sin), expected, dtype, "out of place")
    before = qkv.clone()
    assert rotary_embedding(x, cos, sin, inplace=True).data_ptr() == x.data_ptr()
    assert_close(x, expected, dtype, "in place")
    assert torch.equal(qkv[:, num_heads * head_dim:], before[:, num_heads * head_dim:])  # k, v untouched


@pytest.mark.parametrize("rotary_dim", [64, 24])
def test_rotary_gptj_interleaved(gen, poisoned_empty, rotary_dim):
    num_tokens, num_heads, head_dim = 6, 4, 64
    angles = torch.rand(num_tokens, rotary_dim // 2, generator=gen).to(DEVICE) * 100
    cos, sin = angles.cos(), angles.sin()
    x = randn(gen, num_tokens, num_heads, head_dim)
    # Independent reference: each (even, odd) pair is a complex number turned by its angle.
    pairs = torch.view_as_complex(x[..., :rotary_dim].reshape(num_tokens, num_heads, -1, 2).contiguous())
    turned = torch.view_as_real(pairs * torch.polar(torch.ones_like(angles), angles)[:, None]).flatten(-2)
    expected = torch.cat([turned, x[..., rotary_dim:]], dim=-1)
    assert_close(rotary_embedding(x, cos, sin, is_neox=False), expected, torch.float32, "gpt-j")
    assert_close(rotary_embedding_ref(x, cos, sin, is_neox=False), expected, torch.float32, "gpt-j reference")


# ----- the backend and the engine -----

@pytest.mark.parametrize("window", [None, 9])
@pytest.mark.parametrize("alibi", [False, True])
def test_triton_backend_matches_torch_backend_on_a_mixed_step(gen, alibi, window):
    """Decodes, chunked prefills with cached context, a 1-token chunk and a whole prompt in
    one flat batch, in a random order; block size 6."""
    from vllm_cli.attention.backend import SeqBatchInfo
    from vllm_cli.attention.torch_backend import TorchAttentionBackend
    from vllm_cli.attention.triton_backend import TritonAttentionBackend

    block_size, num_heads, num_kv_heads, head_dim = 6, 4, 2, 64
    query_lens = [1, 12, 1, 1, 20, 1]
    earlier = [30, 17, 0, 5, 0, 44]
    order = torch.randperm(len(query_lens), generator=gen).tolist()
    query_lens, earlier = [query_lens[i] for i in order], [earlier[i] for i in order]
    ctx = [q + e for q, e in zip(query_lens, earlier)]
    k_cache, v_cache, tables = paged_kv(gen, ctx, block_size, num_kv_heads, head_dim, torch.float32,
                                        share_first_block=False)
    k_cache[:block_size] = 0  # the null block, as the engine keeps it (the torch backend reads it)
    v_cache[:block_size] = 0
    info = SeqBatchInfo(query_lens, ctx, [[b for b in row if b] for row in tables.tolist()])
    slots = []
    for row, q, c in zip(tables.tolist(), query_lens, ctx):
        slots += [row[p // block_size] * block_size + p % block_size for p in range(c - q, c)]
    slot_mapping = torch.tensor(slots, device=DEVICE)
    num_tokens = sum(query_lens)
    q = randn(gen, num_tokens, num_heads, head_dim)
    k, v = randn(gen, num_tokens, num_kv_heads, head_dim), randn(gen, num_tokens, num_kv_heads, head_dim)
    slopes = torch.rand(num_heads, generator=gen).to(DEVICE) if alibi else None
    outputs, caches = [], []
    for backend in (TorchAttentionBackend(block_size, DEVICE), TritonAttentionBackend(block_size, DEVICE)):
        kc, vc = k_cache.clone(), v_cache.clone()
        meta = backend.build_metadata(info, slot_mapping)
        outputs.append(backend.forward(q, k, v, kc, vc, meta, 0.125, alibi_slopes=slopes, sliding_window=window))
        caches.append((kc, vc))
    assert_close(outputs[1], outputs[0], torch.float32, "triton backend vs torch backend")
    for torch_cache, triton_cache in zip(*caches):
        assert torch.equal(triton_cache.nan_to_num(7.0), torch_cache.nan_to_num(7.0))


def test_backend_selection(monkeypatch):
    from vllm_cli.attention.selector import get_attention_backend
    from vllm_cli.attention.torch_backend import TorchAttentionBackend
    from vllm_cli.attention.triton_backend import TritonAttentionBackend
    from vllm_cli.config import EngineArgs

    monkeypatch.delenv("VLLM_CLI_ATTENTION_BACKEND", raising=False)
    # torch until the kernels are verified on a GPU; triton is opt-in
    assert isinstance(get_attention_backend("auto", 16, DEVICE), TorchAttentionBackend)
    assert isinstance(get_attention_backend("triton", 16, DEVICE), TritonAttentionBackend)
    monkeypatch.setenv("VLLM_CLI_ATTENTION_BACKEND", "triton")  # overrides auto, not an explicit choice
    assert isinstance(get_attention_backend("auto", 16, DEVICE), TritonAttentionBackend)
    assert isinstance(get_attention_backend("torch", 16, DEVICE), TorchAttentionBackend)
    monkeypatch.setenv("VLLM_CLI_ATTENTION_BACKEND", "torch")
    assert isinstance(get_attention_backend("auto", 16, DEVICE), TorchAttentionBackend)
    monkeypatch.setenv("VLLM_CLI_ATTENTION_BACKEND", "flash")
    with pytest.raises(ValueError, match="VLLM_CLI_ATTENTION_BACKEND"):
        get_attention_backend("auto", 16, DEVICE)
    with pytest.raises(ValueError, match="unknown attention backend"):
        get_attention_backend("flash", 16, DEVICE)
    with pytest.raises(ValueError, match="attention_backend"):
        EngineArgs(attention_backend="flash")
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # the CPU has no Triton driver: only the interpreter runs there
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        TritonAttentionBackend(16, torch.device("cpu"))


def assert_same_greedy_tokens(reference, outputs):
    """Equal tokens, or equal up to a step where the reference's top-2 logprobs are a near-tie
    (random tiny models have some; any change of summation order may pick the other token)."""
    for ref, out in zip(reference, outputs):
        expected, got = ref.outputs[0].token_ids, out.outputs[0].token_ids
        step = next((i for i, (a, b) in enumerate(zip(expected, got)) if a != b), None)
        if step is None:
            assert len(got) == len(expected)
            continue
        top = sorted((lp.logprob for lp in ref.outputs[0].logprobs[step].values()), reverse=True)
        assert top[0] - top[1] < 1e-4, (f"tokens differ at step {step} with a top-2 margin of {top[0] - top[1]:.2e} "
                                        f"(VLLM_CLI_TEST_SEED={SEED}): {expected} vs {got}")


@pytest.mark.parametrize("kind", ["llama", "mpt_6_heads", "mistral"])
def test_engine_triton_backend_gives_the_torch_backends_tokens(tmp_path, kind):
    """Tiny Llama (GQA 4:2), MPT (ALiBi, 6 heads) and Mistral (MQA, sliding window 24): block size 5,
    16-token chunks (mixed prefill/decode steps, prefills over cached context), prompts sharing a
    prefix, generated twice (prefix-cache hits); a pool small enough to force preemption."""
    from vllm_cli import LLM, SamplingParams

    model = build_tiny_checkpoint(tmp_path, tiny_config(kind, 256), seed=1)
    g = torch.Generator().manual_seed(SEED)
    shared = torch.randint(0, 256, (12,), generator=g).tolist()
    prompts = [{"prompt_token_ids": shared + torch.randint(0, 256, (n,), generator=g).tolist()} for n in (1, 9, 23)]
    params = SamplingParams(temperature=0, max_tokens=14, ignore_eos=True)
    common = {"skip_tokenizer_init": True, "block_size": 5, "max_model_len": 64, "max_num_batched_tokens": 16,
              "dtype": "float32", "device": DEVICE.type}
    reference = LLM(model, attention_backend="torch", num_kv_blocks=64, **common)
    expected = reference.generate(prompts, SamplingParams(temperature=0, max_tokens=14, ignore_eos=True, logprobs=2),
                                  use_tqdm=False)
    llm = LLM(model, attention_backend="triton", num_kv_blocks=16, **common)
    assert type(llm.engine.runner.backend).__name__ == "TritonAttentionBackend"
    assert_same_greedy_tokens(expected, llm.generate(prompts, params, use_tqdm=False))
    again = llm.generate(prompts, params, use_tqdm=False)
    assert_same_greedy_tokens(expected, again)
    assert llm.engine.scheduler.num_preemptions > 0
    assert any(o.num_cached_tokens > 0 for o in again)


# ----- the compiler (the interpreter does not run it) -----

_COMPILE_SCRIPT = r"""
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from vllm_cli.kernels import kv_cache, paged_attention as pa, rms_norm, rotary

def compile_(fn, dtype, **constexprs):
    signature, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in ("part_out_ptr", "part_lse_ptr", "slopes_ptr", "cos_ptr", "sin_ptr"):
            signature[name] = "*fp32"
        elif name in ("slot_ptr",):
            signature[name] = "*i64"
        elif name.endswith("_ptr"):
            signature[name] = ("*i32" if name.startswith(("seq_ids", "query_rows", "block_tables", "context_lens", "cu_"))
                               else "*" + dtype)
        else:
            signature[name] = "fp32" if name in ("scale_log2", "eps") else "i32"
        if name.endswith("_ptr") or (name.startswith("stride_") and name != "stride_ps"):
            attrs[(i,)] = [["tt.divisibility", 16]]  # what a launch specializes for aligned arguments
    triton.compile(ASTSource(fn, signature, constexprs, attrs=attrs), target=GPUTarget("cuda", 90, 32))

for dtype, precision in (("bf16", "tf32"), ("fp32", "tf32x3")):
    for group, head_dim, splits, alibi, window in ((1, 128, 1, False, False), (4, 80, 3, True, True)):
        compile_(pa._paged_decode_kernel, dtype, GROUP=group, GROUP_PAD=16, HEAD_DIM=head_dim, D_PAD=128, BLOCK_N=64,
                 BLOCK_SIZE=16, NUM_SPLITS=splits, HAS_ALIBI=alibi, HAS_WINDOW=window, DOT_PRECISION=precision,
                 DOT_UPCAST=False)
    for group, head_dim, alibi, window, skip in ((1, 128, False, False, True), (4, 256, True, True, False)):
        compile_(pa._paged_prefill_kernel, dtype, GROUP=group, HEAD_DIM=head_dim, D_PAD=head_dim, BLOCK_M=64,
                 BLOCK_N=64 if head_dim <= 128 else 32, BLOCK_SIZE=5, HAS_ALIBI=alibi, HAS_WINDOW=window,
                 SKIP_DECODE=skip, DOT_PRECISION=precision, DOT_UPCAST=False)
compile_(pa._paged_decode_reduce_kernel, "bf16", HEAD_DIM=80, D_PAD=128, NUM_SPLITS=3, SPLIT_PAD=4)
compile_(kv_cache._write_kv_cache_kernel, "bf16", NUM_KV_HEADS=8, HEAD_DIM=128, H_PAD=8, D_PAD=128)
for residual in (False, True):
    compile_(rms_norm._rms_norm_kernel, "bf16", BLOCK=4096, HAS_RESIDUAL=residual)
for neox in (True, False):
    compile_(rotary._rotary_kernel, "bf16", NUM_HEADS=32, HEAD_DIM=128, ROT_HALF=32, H_PAD=32, R_PAD=32, P_PAD=64,
             IS_NEOX=neox, COPY_PASS=not neox)
print("compiled")
"""


@pytest.mark.skipif(not INTERPRETED, reason="on a GPU the kernels are compiled by every other test")
def test_kernels_compile_for_sm90():
    """The interpreter runs the kernels as numpy and accepts code the compiler rejects: compile
    every kernel (both dtypes' paths, ALiBi, window, splits, odd block size) down to an sm_90
    cubin with the wheel's own LLVM and ptxas. No GPU needed; a fresh process without
    TRITON_INTERPRET, so the kernels are JIT functions."""
    import subprocess
    import sys

    try:
        import triton.backends.nvidia  # noqa: F401
    except ImportError:
        pytest.skip("this triton build has no NVIDIA backend")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # silences triton 3.9's warning; fusion stays on
    result = subprocess.run([sys.executable, "-c", _COMPILE_SCRIPT], env=env, capture_output=True, text=True,
                            timeout=300, check=False)
    assert result.returncode == 0 and "compiled" in result.stdout, result.stderr[-4000:]


# ----- packaging -----

def test_kernels_install_inside_the_package():
    """kernels/ installs as vllm_cli.kernels (never a top-level `kernels`), and the explicit
    package list in pyproject.toml names every package directory."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert config["package-dir"] == {"vllm_cli.kernels": "kernels"}
    on_disk = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "vllm_cli").rglob("__init__.py")}
    assert set(config["packages"]) == on_disk | {"vllm_cli.kernels"}
    assert not any(p == "kernels" or p.startswith("kernels.") for p in config["packages"])
    import vllm_cli.kernels

    assert Path(vllm_cli.kernels.__file__).resolve() == REPO / "kernels" / "__init__.py"
