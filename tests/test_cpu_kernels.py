"""The CPU kernels (vllm_cli.kernels.cpu, built from kernels/cpu_ops.c) against the torch
functions they stand in for (layers/common.py's rms_norm and rotate_neox), the layers that call
them against their torch paths, and the fallback when the library cannot be built or is turned
off. Inputs are fresh random draws (seed printed on failure)."""

from __future__ import annotations

import logging
import os
import random
import subprocess
import sys

import pytest
import torch

from vllm_cli.kernels import cpu
from vllm_cli.model_executor.layers.common import RMSNorm, RotaryEmbedding, rms_norm, rotate_neox

if cpu._compiler() is None:
    pytest.skip("no C compiler on this machine: the CPU kernels are not built (torch ops are used)",
                allow_module_level=True)


@pytest.fixture
def rng(request):
    seed = random.randrange(2**31)
    request.node.user_properties.append(("seed", seed))
    print(f"seed {seed}")
    return torch.Generator().manual_seed(seed)


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
