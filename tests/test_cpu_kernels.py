"""The CPU kernels (vllm_cli.kernels.cpu, built from kernels/cpu_ops.c) against the torch
functions they stand in for (layers/common.py's rms_norm and rotate_neox), the layers that call
them against their torch paths, and the fallback when the library cannot be built or is turned
off. Inputs are fresh random draws (seed printed on failure)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
import torch
from conftest import paged_kv
from vllm_cli.kernels import cpu
from vllm_cli.kernels.attention_reference import paged_decode_attention_ref

from vllm_cli.model_executor.layers.norm import RMSNorm, rms_norm
from vllm_cli.model_executor.layers.rotary import RotaryEmbedding, rotate_neox

if cpu._compiler() is None:
    pytest.skip("no C compiler on this machine: the CPU kernels are not built (torch ops are used)",
                allow_module_level=True)


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    # float32: summation order differs (vectorized); bfloat16: one rounding step may land one
    # ulp apart when the float32 intermediate sits on a rounding boundary.
    if actual.dtype == torch.float32:
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    else:
        torch.testing.assert_close(actual.float(), expected.float(), rtol=2**-7, atol=2**-7)


def test_library_builds_and_loads():
    assert cpu.load() is not None, "the C compiler is there but the kernels did not build"


@pytest.mark.parametrize("dtype", cpu.DTYPES)
@pytest.mark.parametrize("width", [576, 64, 1001])
def test_rms_norm_matches_reference(dtype, width, rng):
    rows = int(torch.randint(1, 70, (1,), generator=rng))
    wide = torch.randn(rows, width + 37, generator=rng).to(dtype) * 3
    x = wide[:, 5: 5 + width]  # strided rows
    weight = torch.randn(width, generator=rng).to(dtype)
    out = torch.full((rows, width), float("nan"), dtype=dtype)
    cpu.rms_norm(x, weight, 1e-5, out=out)
    _close(out, rms_norm(x, weight, 1e-5))


@pytest.mark.parametrize("dtype", cpu.DTYPES)
@pytest.mark.parametrize("head_dim,rotary_dim", [(64, 64), (128, 128), (80, 80), (64, 32)])
def test_rotary_in_place_matches_reference_and_leaves_the_rest(dtype, head_dim, rotary_dim, rng):
    tokens = int(torch.randint(1, 40, (1,), generator=rng))
    q_heads, kv_heads = 6, 2
    qkv = torch.randn(tokens, (q_heads + 2 * kv_heads) * head_dim, generator=rng).to(dtype)
    original = qkv.clone()
    qk = qkv[:, : (q_heads + kv_heads) * head_dim].view(tokens, q_heads + kv_heads, head_dim)
    cos = torch.randn(tokens, rotary_dim // 2, generator=rng).to(dtype)
    sin = torch.randn(tokens, rotary_dim // 2, generator=rng).to(dtype)
    expected = rotate_neox(qk.clone(), cos, sin, rotary_dim)
    cpu.rotary_neox_(qk, cos, sin, rotary_dim)
    _close(qk, expected)
    v_start = (q_heads + kv_heads) * head_dim
    assert torch.equal(qkv[:, v_start:], original[:, v_start:]), "v was written"


@pytest.mark.parametrize("dtype", cpu.DTYPES)
def test_layers_give_their_torch_results(dtype, rng, monkeypatch):
    norm = RMSNorm(576, 1e-5).to(dtype)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(576, generator=rng))
    x = torch.randn(33, 576, generator=rng).to(dtype)
    config = type("Config", (), {"rope_theta": 10000.0})()
    rotary = RotaryEmbedding(config, 64, 512)
    positions = torch.randint(0, 512, (33,), generator=rng)
    cos, sin = rotary.cos_sin(positions, dtype)
    qk = torch.randn(33, 9 + 3, 64, generator=rng).to(dtype)
    with_kernels = norm(x), rotary.rotate(qk.clone(), cos, sin)
    monkeypatch.setattr(cpu, "_library", None)  # load() now says: no library
    assert cpu.load() is None
    _close(with_kernels[0], norm(x))
    _close(with_kernels[1], rotary.rotate(qk.clone(), cos, sin))


def _paged_cache(rng, context_lens, block_size, num_kv_heads, head_dim, dtype):
    """conftest's paged K/V (NaN wherever no context lives: a slot the kernel must not read),
    with the null block 0 zero, as the engine keeps it (the torch path reads it for padding)."""
    k_cache, v_cache, block_tables = paged_kv(rng, context_lens, block_size, num_kv_heads, head_dim, dtype)
    k_cache[:block_size] = v_cache[:block_size] = 0
    return k_cache, v_cache, block_tables


@pytest.mark.parametrize("dtype", cpu.DTYPES)
@pytest.mark.parametrize("heads,head_dim", [((9, 3), 64), ((4, 4), 80), ((8, 1), 128), ((6, 2), 64)],
                         ids=["9q3kv", "mha-80", "mqa-128", "6q2kv"])
@pytest.mark.parametrize("alibi,window", [(False, None), (True, None), (False, 21)], ids=["plain", "alibi", "window"])
@pytest.mark.parametrize("chunk", [cpu.DECODE_CHUNK, 7])
def test_paged_decode_attention_matches_reference(dtype, heads, head_dim, alibi, window, chunk, rng):
    """Context lengths that are not multiples of the block size, a 1-token one, and ones spanning
    several chunks (chunk 7: many partials to combine); q rows strided as in the fused qkv output."""
    num_heads, num_kv_heads = heads
    block_size = int(torch.randint(3, 17, (1,), generator=rng))
    ctx = [1, 300] + torch.randint(2, 60, (5,), generator=rng).tolist()
    k_cache, v_cache, tables = _paged_cache(rng, ctx, block_size, num_kv_heads, head_dim, dtype)
    fused = torch.randn(len(ctx), (num_heads + 2 * num_kv_heads) * head_dim, generator=rng).to(dtype)
    q = fused[:, : num_heads * head_dim].view(len(ctx), num_heads, head_dim)
    slopes = torch.rand(num_heads, generator=rng) if alibi else None
    context_lens = torch.tensor(ctx, dtype=torch.int32)
    out = cpu.paged_decode_attention(q, k_cache, v_cache, tables, context_lens, block_size, head_dim**-0.5,
                                     slopes, window, chunk=chunk)
    expected = paged_decode_attention_ref(q, k_cache, v_cache, tables, context_lens, block_size, head_dim**-0.5,
                                          slopes, window)
    assert out.dtype == dtype and not out.isnan().any()
    # bfloat16: the inputs are the same bf16 values; only the output's rounding differs
    tolerance = 1e-5 if dtype == torch.float32 else 2**-7
    torch.testing.assert_close(out.float(), expected.float(), rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("dtype", cpu.DTYPES)
def test_torch_backend_gives_the_same_output_with_and_without_the_kernel(dtype, rng, monkeypatch):
    """A mixed step (decodes and prefill chunks in one flat batch): the decode group goes through
    the kernel, the prefill group through SDPA, and the whole equals the torch-only path."""
    from vllm_cli.attention.backend import SeqBatchInfo
    from vllm_cli.attention.cpu_backend import CpuAttentionBackend as TorchAttentionBackend

    block_size, num_heads, num_kv_heads, head_dim = 5, 6, 2, 64
    query_lens, earlier = [1, 9, 1, 1, 14], [30, 12, 0, 7, 0]
    ctx = [q + e for q, e in zip(query_lens, earlier)]
    k_cache, v_cache, tables = _paged_cache(rng, ctx, block_size, num_kv_heads, head_dim, dtype)
    k_cache, v_cache = k_cache.nan_to_num(0.0), v_cache.nan_to_num(0.0)  # the torch path reads padding slots
    rows = [[b for b in row if b] for row in tables.tolist()]
    slots = [row[p // block_size] * block_size + p % block_size for row, q, c in zip(rows, query_lens, ctx)
             for p in range(c - q, c)]
    info = SeqBatchInfo(query_lens, ctx, rows)
    q = torch.randn(sum(query_lens), num_heads, head_dim, generator=rng).to(dtype)
    # k and v as the models pass them: strided views of one fused qkv output
    fused = torch.randn(sum(query_lens), (num_heads + 2 * num_kv_heads) * head_dim, generator=rng).to(dtype)
    k = fused[:, num_heads * head_dim:(num_heads + num_kv_heads) * head_dim].view(-1, num_kv_heads, head_dim)
    v = fused[:, (num_heads + num_kv_heads) * head_dim:].view(-1, num_kv_heads, head_dim)
    backend = TorchAttentionBackend(block_size, torch.device("cpu"))
    outputs, caches = [], []
    for library in (cpu.load(), None):
        monkeypatch.setattr(cpu, "_library", library)
        meta = backend.build_metadata(info, torch.tensor(slots))
        assert (meta.groups[0].block_tables is not None) == (library is not None)
        kc, vc = k_cache.clone(), v_cache.clone()
        outputs.append(backend.forward(q, k, v, kc, vc, meta, 0.125, sliding_window=11))
        caches.append((kc, vc))
    tolerance = 1e-5 if dtype == torch.float32 else 2**-6  # SDPA rounds its probabilities to bf16
    torch.testing.assert_close(outputs[0].float(), outputs[1].float(), rtol=tolerance, atol=tolerance)
    # the kernels' KV write (bytes copied by slot) left the caches exactly as index_copy_ does
    assert torch.equal(caches[0][0], caches[1][0]) and torch.equal(caches[0][1], caches[1][1])
    assert torch.equal(caches[0][0][torch.tensor(slots)], k) and torch.equal(caches[0][1][torch.tensor(slots)], v)


@pytest.mark.parametrize("dtype", cpu.DTYPES)
def test_add_rms_norm_matches_add_then_norm(dtype, rng):
    assert cpu.load() is not None
    rows, width = int(torch.randint(1, 20, (1,), generator=rng)), 576
    x = torch.randn(rows, width, generator=rng).to(dtype)
    residual = torch.randn(rows, width, generator=rng).to(dtype) * 4
    weight = torch.randn(width, generator=rng).to(dtype)
    expected_residual = residual + x
    expected = rms_norm(expected_residual, weight, 1e-5)
    out = cpu.add_rms_norm_(x, residual, weight, 1e-5)
    assert torch.equal(residual, expected_residual), "the residual add rounds as torch's add"
    _close(out, expected)
    norm = RMSNorm(width, 1e-5).to(dtype)
    with torch.no_grad():
        norm.weight.copy_(weight)
    residual2 = expected_residual - x  # any residual: add_forward adds in place like the kernel
    _close(norm.add_forward(x, residual2), rms_norm(residual2, weight, 1e-5))


@pytest.mark.parametrize("dtype", cpu.DTYPES)
def test_silu_and_mul_matches_torch(dtype, rng, monkeypatch):
    assert cpu.load() is not None
    from vllm_cli.model_executor.layers.activation import silu_and_mul

    gate_up = torch.randn(3, 2 * 1536, generator=rng).to(dtype) * 4
    gate, up = gate_up.chunk(2, dim=-1)
    expected = torch.nn.functional.silu(gate) * up
    # expf vs torch's vectorized exp: a bf16 silu on a rounding boundary may land one ulp apart,
    # and the product carries that ulp (2**-7 relative at most, plus its own rounding)
    rtol = 1e-5 if dtype == torch.float32 else 2**-6
    for out in (cpu.silu_and_mul(gate_up), silu_and_mul(gate_up)):  # the layer takes the kernel at decode sizes
        torch.testing.assert_close(out.float(), expected.float(), rtol=rtol, atol=1e-5)
    monkeypatch.setattr(cpu, "_library", None)
    assert torch.equal(silu_and_mul(gate_up), expected)


@pytest.mark.parametrize("dtype", cpu.DTYPES)
@pytest.mark.parametrize("position", ["rotary", "partial", "alibi"])
def test_decode_qkv_attention_is_rotary_then_kv_write_then_attention(dtype, position, rng):
    """The fused decode call equals its three kernels in turn: q and k rotated (all or part of
    each head, or not at all for ALiBi), k and v written to their slots, attention over the cache."""
    assert cpu.load() is not None
    num_heads, num_kv_heads, head_dim, block_size = 9, 3, 64, 16
    ctx = [1, 40, 17, 300]
    k_cache, v_cache, tables = _paged_cache(rng, ctx, block_size, num_kv_heads, head_dim, dtype)
    slots = torch.tensor([int(tables[i, (n - 1) // block_size]) * block_size + (n - 1) % block_size
                          for i, n in enumerate(ctx)])
    qkv = torch.randn(len(ctx), (num_heads + 2 * num_kv_heads) * head_dim, generator=rng).to(dtype)
    rotary_dim = {"rotary": head_dim, "partial": 32, "alibi": 0}[position]
    cos = sin = slopes = None
    if rotary_dim:
        cos = torch.randn(len(ctx), rotary_dim // 2, generator=rng).to(dtype)
        sin = torch.randn(len(ctx), rotary_dim // 2, generator=rng).to(dtype)
    else:
        slopes = torch.rand(num_heads, generator=rng)
    context_lens = torch.tensor(ctx, dtype=torch.int32)
    # the three kernels in turn, on copies
    ref_qkv, ref_k, ref_v = qkv.clone(), k_cache.clone(), v_cache.clone()
    qk = ref_qkv[:, : (num_heads + num_kv_heads) * head_dim].view(len(ctx), -1, head_dim)
    if cos is not None:
        cpu.rotary_neox_(qk, cos, sin, rotary_dim)
    k = qk[:, num_heads:]
    v = ref_qkv[:, (num_heads + num_kv_heads) * head_dim:].view(len(ctx), num_kv_heads, head_dim)
    cpu.write_kv_cache(k, v, ref_k, ref_v, slots)
    expected = cpu.paged_decode_attention(qk[:, :num_heads], ref_k, ref_v, tables, context_lens, block_size,
                                          head_dim**-0.5, slopes, 21)
    out = cpu.decode_qkv_attention(qkv, num_heads, num_kv_heads, head_dim, rotary_dim, cos, sin, slots, k_cache,
                                   v_cache, tables, context_lens, block_size, head_dim**-0.5, slopes, 21)
    assert torch.equal(out.view_as(expected), expected)
    assert torch.equal(k_cache.nan_to_num(7.0), ref_k.nan_to_num(7.0))
    assert torch.equal(v_cache.nan_to_num(7.0), ref_v.nan_to_num(7.0))


@pytest.mark.parametrize("dtype", cpu.DTYPES)
def test_a_decode_step_gets_the_lean_metadata_and_the_same_output(dtype, rng):
    """A step of single-token sequences: CpuDecodeMetadata (int32 tables and lengths only), and
    the backend's forward gives what the torch backend gives on the same step."""
    from vllm_cli.attention.backend import SeqBatchInfo
    from vllm_cli.attention.cpu_backend import CpuAttentionBackend, CpuDecodeMetadata
    from vllm_cli.attention.torch_backend import TorchAttentionBackend

    block_size, num_heads, num_kv_heads, head_dim = 5, 6, 2, 64
    ctx = [31, 1, 8, 12]
    k_cache, v_cache, tables = _paged_cache(rng, ctx, block_size, num_kv_heads, head_dim, dtype)
    k_cache, v_cache = k_cache.nan_to_num(0.0), v_cache.nan_to_num(0.0)  # the torch path reads padding slots
    rows = [[b for b in row if b] for row in tables.tolist()]
    slots = torch.tensor([row[(c - 1) // block_size] * block_size + (c - 1) % block_size for row, c in zip(rows, ctx)])
    info = SeqBatchInfo([1] * len(ctx), ctx, rows)
    q = torch.randn(len(ctx), num_heads, head_dim, generator=rng).to(dtype)
    k, v = (torch.randn(len(ctx), num_kv_heads, head_dim, generator=rng).to(dtype) for _ in range(2))
    lean = CpuAttentionBackend(block_size, torch.device("cpu"), dtype)
    meta = lean.build_metadata(info, slots)
    assert isinstance(meta, CpuDecodeMetadata) and meta.block_tables.dtype == torch.int32
    assert not isinstance(CpuAttentionBackend(block_size, torch.device("cpu")).build_metadata(info, slots),
                          CpuDecodeMetadata), "without the model dtype: the general metadata"
    out = lean.forward(q, k, v, k_cache.clone(), v_cache.clone(), meta, 0.125)
    reference = TorchAttentionBackend(block_size, torch.device("cpu"))
    expected = reference.forward(q, k, v, k_cache.clone(), v_cache.clone(), reference.build_metadata(info, slots), 0.125)
    tolerance = 1e-5 if dtype == torch.float32 else 2**-6
    torch.testing.assert_close(out.float(), expected.float(), rtol=tolerance, atol=tolerance)


def test_a_failing_compiler_falls_back_to_torch(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(cpu, "_library", None)
    monkeypatch.setattr(cpu, "_tried", False)
    monkeypatch.setattr(cpu, "_compiler", lambda: "false")  # exits 1, prints nothing
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    logger = logging.getLogger("vllm_cli")  # does not propagate to the root logger caplog watches
    logger.addHandler(caplog.handler)
    try:
        assert cpu.load() is None
    finally:
        logger.removeHandler(caplog.handler)
    assert "Could not build the CPU kernels" in caplog.text
    assert not list((tmp_path / "vllm-cli" / "kernels").glob("*")), "a failed build left a file behind"


def test_environment_variable_turns_them_off():
    code = "from vllm_cli.kernels import cpu; assert cpu.load() is None"
    env = {**os.environ, cpu.CPU_KERNELS_ENV: "0"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_loading_the_library_leaves_the_float_environment_alone():
    """Built with -ffast-math, GCC (before 13) linked crtfastmath.o into the library: loading it turned
    on flush-to-zero / denormals-are-zero for the whole process, torch's own ops included."""
    code = (
        "import torch\n"
        "from vllm_cli.kernels import cpu\n"
        "assert (torch.tensor([1e-40]) * 1.0).item() != 0.0\n"
        "assert cpu.load() is not None\n"
        "assert (torch.tensor([1e-40]) * 1.0).item() != 0.0, 'loading the kernels flushed denormals to zero'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


def test_argmax_rows_matches_torch_max_indices(rng, monkeypatch):
    """Ties (the first index wins), a NaN (its first index, as torch), an all -inf row, strided rows
    and a width that is not a multiple of the vector; the sampler's greedy path takes the kernel."""
    from vllm_cli.engine import sampler

    x = torch.randn(9, 1000 + 37, generator=rng)[:, :1000]
    x[1, 7] = x[1, 900] = x[1].max() + 1  # a tie
    x[2, 998] = 1e9  # the tail past the last full vector
    x[3, 40] = x[3, 500] = float("nan")
    x[4] = float("-inf")
    x[5, 999] = float("nan")
    assert torch.equal(cpu.argmax_rows(x), x.max(dim=-1).indices)
    called = []
    monkeypatch.setattr(cpu, "argmax_rows", lambda t: called.append(t) or t.max(dim=-1).indices)
    assert torch.equal(sampler._argmax(x), x.max(dim=-1).indices) and called


@pytest.mark.parametrize("dtype", cpu.DTYPES)
def test_elementwise_kernels_split_over_threads_give_the_row_by_row_results(dtype, rng):
    """A prefill-sized input runs its rows over threads (PARALLEL_ELEMENTS in cpu_ops.c): the same
    bits as each row alone, which never opens a parallel region."""
    rows = 300
    x = torch.randn(rows, 576, generator=rng).to(dtype)
    residual = torch.randn(rows, 576, generator=rng).to(dtype)
    weight = torch.randn(576, generator=rng).to(dtype)
    gate_up = torch.randn(rows, 2 * 1536, generator=rng).to(dtype) * 4
    whole_residual = residual.clone()
    whole = (cpu.rms_norm(x, weight, 1e-5), cpu.add_rms_norm_(x, whole_residual, weight, 1e-5),
             cpu.silu_and_mul(gate_up))
    for r in range(0, rows, 37):
        row_residual = residual[r: r + 1].clone()
        assert torch.equal(cpu.rms_norm(x[r: r + 1], weight, 1e-5), whole[0][r: r + 1])
        assert torch.equal(cpu.add_rms_norm_(x[r: r + 1], row_residual, weight, 1e-5), whole[1][r: r + 1])
        assert torch.equal(row_residual, whole_residual[r: r + 1])
        assert torch.equal(cpu.silu_and_mul(gate_up[r: r + 1]), whole[2][r: r + 1])
