"""The CPU prefill attention kernel (kernels/prefill_attention.c, cpu.prefill_attention) against the
float64 reference (attention_reference.paged_prefill_attention_ref) and, inside the CPU attention
backend, against the SDPA path it replaces: prompts of varied lengths (1 token, past one query tile,
past one key block), prefixes already in the cache (chunked prefill, prefix caching), grouped-query
ratios, head sizes with and without a vector path, ALiBi and a sliding window, float32 and bfloat16.
Inputs are fresh random draws (seed printed on failure)."""

from __future__ import annotations

import ctypes

import pytest
import torch
from conftest import paged_kv
from vllm_cli.kernels import cpu
from vllm_cli.kernels.attention_reference import paged_prefill_attention_ref

if cpu._compiler() is None:
    pytest.skip("no C compiler on this machine: the CPU kernels are not built (SDPA is used)",
                allow_module_level=True)


@pytest.fixture(autouse=True)
def library():
    assert cpu.load() is not None, "the C compiler is there but the kernels did not build"


def _case(rng, dtype, heads, head_dim, query_lens, context_lens):
    """Paged caches (NaN in every slot no sequence owns), block tables, cu_seqlens_q, and q as the
    models pass it: rows strided, the query part of one fused qkv output."""
    num_heads, num_kv_heads = heads
    block_size = int(torch.randint(3, 17, (1,), generator=rng))
    k_cache, v_cache, tables = paged_kv(rng, context_lens, block_size, num_kv_heads, head_dim, dtype)
    tokens = sum(query_lens)
    fused = torch.randn(tokens, (num_heads + 2 * num_kv_heads) * head_dim, generator=rng).to(dtype)
    q = fused[:, : num_heads * head_dim].view(tokens, num_heads, head_dim)
    cu = torch.tensor([0, *torch.tensor(query_lens).cumsum(0).tolist()], dtype=torch.int32)
    return q, k_cache, v_cache, tables, cu, torch.tensor(context_lens, dtype=torch.int32), block_size


def _tolerance(dtype):
    # float32: summation order; bfloat16: the inputs are the same bf16 values, the output's rounding differs
    return 2e-5 if dtype == torch.float32 else 2**-7


@pytest.mark.parametrize("dtype", cpu.DTYPES)
@pytest.mark.parametrize("heads,head_dim", [((9, 3), 64), ((8, 1), 128), ((4, 4), 80), ((6, 2), 64), ((8, 2), 32)],
                         ids=["9q3kv", "mqa-128", "mha-80", "6q2kv", "4x-32"])
@pytest.mark.parametrize("alibi,window", [(False, None), (True, None), (False, 21)], ids=["plain", "alibi", "window"])
@pytest.mark.parametrize("cached", [False, True], ids=["fresh", "prefix"])
def test_prefill_attention_matches_reference(dtype, heads, head_dim, alibi, window, cached, rng):
    """Fresh prompts (queries are the whole context) or chunks after a cached prefix; lengths of one
    token, inside one 32-query tile, across tiles and 32-key blocks, not multiples of the block size."""
    query_lens = [1, 64, 17, 100, 33, 32] + torch.randint(1, 50, (3,), generator=rng).tolist()
    earlier = torch.randint(1, 90, (len(query_lens),), generator=rng).tolist() if cached else [0] * len(query_lens)
    context_lens = [q + e for q, e in zip(query_lens, earlier)]
    q, k_cache, v_cache, tables, cu, ctx, block_size = _case(rng, dtype, heads, head_dim, query_lens, context_lens)
    slopes = torch.rand(heads[0], generator=rng) if alibi else None
    scale = head_dim**-0.5
    out = cpu.prefill_attention(q, k_cache, v_cache, tables, cu, ctx, block_size, scale, slopes, window)
    expected = paged_prefill_attention_ref(q, k_cache, v_cache, tables, cu, ctx, block_size, scale, slopes, window)
    assert out.dtype == dtype and out.shape == q.shape and not out.isnan().any()
    tolerance = _tolerance(dtype)
    torch.testing.assert_close(out.float(), expected.float(), rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("dtype", cpu.DTYPES)
def test_a_long_prompt_with_a_window_shorter_than_a_tile(dtype, rng):
    """One sequence of many tiles (the work items of one sequence split over threads), a window
    smaller than the key block: rows whose first key blocks are all masked."""
    q, k_cache, v_cache, tables, cu, ctx, block_size = _case(rng, dtype, (4, 2), 64, [700], [760])
    for window in (None, 5, 40):
        out = cpu.prefill_attention(q, k_cache, v_cache, tables, cu, ctx, block_size, 0.125, None, window)
        expected = paged_prefill_attention_ref(q, k_cache, v_cache, tables, cu, ctx, block_size, 0.125, None, window)
        tolerance = _tolerance(dtype)
        torch.testing.assert_close(out.float(), expected.float(), rtol=tolerance, atol=tolerance)


def test_the_avx2_build_matches_the_reference(rng):
    """The same source built without AVX-512 (x86-64-v3): the plain loops instead of the vector kernels."""
    library = cpu.load_variant("x86-64-v3")
    if library is None:
        pytest.skip("no x86-64-v3 build here")
    for dtype, suffix in ((torch.float32, "f32"), (torch.bfloat16, "bf16")):
        fn = getattr(library, f"prefill_attention_{suffix}")
        fn.argtypes, fn.restype = cpu._SIGNATURES["prefill_attention"], None
        for heads, head_dim in (((9, 3), 64), ((4, 4), 80)):
            q, k_cache, v_cache, tables, cu, ctx, block_size = _case(rng, dtype, heads, head_dim, [5, 40], [5, 70])
            slopes = torch.rand(heads[0], generator=rng)
            out = torch.empty(q.shape, dtype=dtype)
            fn(2, heads[0], heads[1], head_dim, q.data_ptr(), q.stride(0), cu.data_ptr(), k_cache.data_ptr(),
               v_cache.data_ptr(), tables.data_ptr(), tables.stride(0), ctx.data_ptr(), block_size, 0.125,
               ctypes.c_void_p(slopes.data_ptr()), 9, out.data_ptr(), out.stride(0))
            expected = paged_prefill_attention_ref(q, k_cache, v_cache, tables, cu, ctx, block_size, 0.125, slopes, 9)
            tolerance = _tolerance(dtype)
            torch.testing.assert_close(out.float(), expected.float(), rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("dtype", cpu.DTYPES)
@pytest.mark.parametrize("alibi,window", [(False, None), (True, None), (False, 11)], ids=["plain", "alibi", "window"])
def test_the_cpu_backend_gives_the_sdpa_output(dtype, alibi, window, rng):
    """Two steps through CpuAttentionBackend.forward, the prefill group on the kernel and on SDPA:
    a batch of fresh prompts, then a mixed step (decodes, a prompt after a cached prefix, a fresh one)."""
    from vllm_cli.attention.backend import SeqBatchInfo
    from vllm_cli.attention.cpu_backend import CpuAttentionBackend

    num_heads, num_kv_heads, head_dim = 6, 2, 64
    slopes = torch.rand(num_heads, generator=rng) if alibi else None
    for query_lens, earlier in (([64, 64, 9, 30], [0, 0, 0, 0]), ([1, 9, 1, 23, 14], [30, 12, 7, 40, 0])):
        ctx = [q + e for q, e in zip(query_lens, earlier)]
        block_size = int(torch.randint(3, 17, (1,), generator=rng))
        k_cache, v_cache, tables = paged_kv(rng, ctx, block_size, num_kv_heads, head_dim, dtype)
        k_cache, v_cache = k_cache.nan_to_num(0.0), v_cache.nan_to_num(0.0)  # SDPA reads the padding slots
        rows = [[b for b in row if b] for row in tables.tolist()]
        slots = [row[p // block_size] * block_size + p % block_size
                 for row, q, c in zip(rows, query_lens, ctx) for p in range(c - q, c)]
        info = SeqBatchInfo(query_lens, ctx, rows)
        tokens = sum(query_lens)
        fused = torch.randn(tokens, (num_heads + 2 * num_kv_heads) * head_dim, generator=rng).to(dtype)
        q = fused[:, : num_heads * head_dim].view(tokens, num_heads, head_dim)
        k = fused[:, num_heads * head_dim : (num_heads + num_kv_heads) * head_dim].view(-1, num_kv_heads, head_dim)
        v = fused[:, (num_heads + num_kv_heads) * head_dim :].view(-1, num_kv_heads, head_dim)
        backend = CpuAttentionBackend(block_size, torch.device("cpu"))
        outputs = []
        for kernel in (True, False):
            backend.prefill_kernel = kernel
            meta = backend.build_metadata(info, torch.tensor(slots))
            prefill = [g for g in meta.groups if not g.is_decode][0]
            assert (prefill.cu_seqlens_q is not None) == kernel
            outputs.append(backend.forward(q, k, v, k_cache.clone(), v_cache.clone(), meta, 0.125, slopes, window))
        tolerance = 2e-5 if dtype == torch.float32 else 2**-6  # SDPA rounds its probabilities to bf16
        torch.testing.assert_close(outputs[0].float(), outputs[1].float(), rtol=tolerance, atol=tolerance)
