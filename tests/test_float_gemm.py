"""kernels/float_gemm.c (CpuLinear's "fgemm" kind): fp32 and bf16 weights in our own panel layout,
against torch in float64, for every row count the driver treats differently (the one-pass m <= 8
path, register tiles of every height, cache blocks), awkward n (not whole panels) and k (not whole
steps, odd for bf16's pairs); the AVX2 build; CpuLinear with the kind forced; kernel_parts."""

from __future__ import annotations

import ctypes

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from vllm_cli.kernels import cpu

from vllm_cli.model_executor.layers import cpu_linear
from vllm_cli.model_executor.layers.cpu_linear import CpuLinear, fgemm_functions, fgemm_matmul, fgemm_pack

pytestmark = pytest.mark.skipif(not fgemm_functions(), reason="float_gemm.c not built (no C compiler, AVX2 or AVX-512)")

ROWS = [*range(1, 10), 32, 100]
# (k, n): whole panels and steps; n not a multiple of 32; k odd (bf16 pads a pair), k > one cache
# block of 256 steps and not a multiple of it; n < one panel
SHAPES = [(64, 96), (37, 45), (576, 193), (611, 70), (1100, 31)]


def _reference(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """float64 product of what the kernel multiplies: x rounded to the weight's dtype (as torch's
    linear in that dtype does) and the weight."""
    return F.linear(x.to(weight.dtype).double(), weight.double())


def _check(x: torch.Tensor, weight: torch.Tensor, library: ctypes.CDLL | None = None) -> None:
    y = fgemm_matmul(x, fgemm_pack(weight), weight.shape[0], library=library)
    expected = _reference(x, weight)
    assert y.dtype == torch.float32 and y.shape == expected.shape
    # float32 sums of up to 1100 products in another order: relative to the output's scale
    torch.testing.assert_close(y.double(), expected, rtol=1e-5, atol=2e-6 * expected.abs().max().item())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("k,n", SHAPES)
def test_kernel_matches_float64_reference(dtype, k, n):
    torch.manual_seed(k * n)
    weight = torch.randn(n, k).to(dtype)
    for rows in ROWS:
        _check(torch.randn(rows, k), weight)


def test_large_batch_crosses_row_blocks():
    # 400 rows: two full blocks of 192 rows and a partial one, each split in 12-row tiles
    torch.manual_seed(1)
    for dtype in (torch.float32, torch.bfloat16):
        _check(torch.randn(400, 300), torch.randn(77, 300).to(dtype))


def test_bf16_matches_torch_bf16_linear():
    # what a bfloat16 model computes: bf16 x and weight, result rounded to bf16
    torch.manual_seed(2)
    weight = torch.randn(200, 576, dtype=torch.bfloat16)
    for rows in (1, 7, 32):
        x = torch.randn(rows, 576, dtype=torch.bfloat16)
        ours = fgemm_matmul(x, fgemm_pack(weight), 200).to(torch.bfloat16)
        torch.testing.assert_close(ours, F.linear(x, weight), rtol=1.6e-2, atol=1e-2)


@pytest.mark.parametrize("rows", [3, 32, 400])
def test_bf16_out_rounds_as_torch(rows):
    # the bf16-in, bf16-out call (a bf16 model's torch path) rounds each float32 sum once, as torch's
    # .to(torch.bfloat16) does: bit for bit, infinities included, in the padded tail panel too (a NaN's
    # payload depends on the instruction that made it, so NaNs are compared as NaNs)
    torch.manual_seed(4)
    weight = torch.randn(70, 96, dtype=torch.bfloat16)
    weight[5, 3] = float("nan")
    weight[9, 0] = float("inf")
    packed = fgemm_pack(weight)
    x = torch.randn(rows, 96, dtype=torch.bfloat16)
    ours = cpu_linear._fgemm_linear(x, packed, None, 70)
    expected = fgemm_matmul(x, packed, 70).to(torch.bfloat16)
    assert ours.dtype == torch.bfloat16
    nan = expected.isnan()
    assert nan.any() and expected.isinf().any()
    assert torch.equal(ours.isnan(), nan)
    assert torch.equal(ours[~nan].view(torch.int16), expected[~nan].view(torch.int16))


@pytest.mark.parametrize("n", [549, 999])
def test_small_m_streams_spread_over_a_run(n):
    # m <= 8 streams up to 4 panels at once, one from each part of a thread's run: 18 or 32 panels (runs
    # of 9 or 16 at 2 threads, 18 or 32 at 1), the padded tail panel in a spread group or left over alone
    torch.manual_seed(n)
    for dtype in (torch.float32, torch.bfloat16):
        weight = torch.randn(n, 64).to(dtype)
        for rows in (1, 2, 3, 5):
            _check(torch.randn(rows, 64), weight)
    # bf16 in and out (fgemm_matmul_bf16_io): every group through the scratch tile, rounded once
    linear = nn.Linear(64, n, bias=False).to(torch.bfloat16)
    layer = CpuLinear(linear, "fgemm")
    for rows in (1, 3):
        x = torch.randn(rows, 64, dtype=torch.bfloat16)
        torch.testing.assert_close(layer(x), F.linear(x, linear.weight), rtol=1.6e-2, atol=1e-2)


@pytest.mark.parametrize("k", [40, 41])
def test_bf16_rounds_x_as_torch(k):
    # an identity weight returns x as the kernel rounded it: ties (to even), carries into the exponent,
    # the largest value still finite in bf16, on the 16-at-a-time path and its scalar tail (odd k); no
    # infinity (times the identity's zeros it is NaN everywhere), no subnormals (vdpbf16ps reads them as 0)
    torch.manual_seed(6)
    bits = torch.randint(-(2**31), 2**31 - 1, (3, k), dtype=torch.int64)
    bits[:, ::3] = (bits[:, ::3] & ~0xFFFF) | 0x8000  # exact ties
    bits[0, :4] = torch.tensor([0x7F7F7FFF, 0x7F7E8000, 0x3F80FFFF, -0x40800001])
    x = bits.to(torch.int32).view(torch.float32)
    x = torch.where(x.to(torch.bfloat16).isfinite() & (x.abs() > 1e-37), x, 1.0)
    y = fgemm_matmul(x, fgemm_pack(torch.eye(k, dtype=torch.bfloat16)), k)
    assert torch.equal(y, x.to(torch.bfloat16).float())


def test_layout_holds_the_weight():
    weight = torch.arange(6 * 5, dtype=torch.float32).view(6, 5)
    packed = fgemm_pack(weight)
    assert packed.shape == (1, 5, 32) and torch.equal(packed[0, :, :6], weight.t()) and not packed[0, :, 6:].any()
    packed = fgemm_pack(weight.to(torch.bfloat16))  # pairs of inputs, k padded to 6
    assert packed.shape == (1, 3, 32, 2)
    assert torch.equal(packed[0, 1, 2].float(), weight[2, 2:4]) and packed[0, 2, :, 1].float().abs().sum() == 0


def test_avx2_variant_matches():
    library = cpu.load_variant("x86-64-v3")
    if library is None or not fgemm_functions(library):
        pytest.skip("no AVX2 build here")
    torch.manual_seed(3)
    for dtype in (torch.float32, torch.bfloat16):
        for k, n in SHAPES[1:4]:
            weight = torch.randn(n, k).to(dtype)
            for rows in (1, 2, 3, 5, 32, 100):
                _check(torch.randn(rows, k), weight, library=library)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("in_features", [96, 37])
def test_cpu_linear_with_the_kind_forced(dtype, bias, in_features):
    # bf16 x without a bias: fgemm_matmul_bf16_io (x in place when k is even, copied to pairs when odd)
    torch.manual_seed(4)
    linear = nn.Linear(in_features, 70, bias=bias).to(dtype)
    layer = CpuLinear(linear, "fgemm")
    assert layer.kind == "fgemm" and "kernel=fgemm" in repr(layer)
    for rows in (0, 1, 5, 33):
        x = torch.randn(rows, in_features, dtype=dtype)
        out = layer(x)
        assert out.dtype == dtype and out.shape == (rows, 70)
        expected = F.linear(x.double(), linear.weight.double(), None if linear.bias is None else linear.bias.double())
        tolerance = 1e-5 if dtype == torch.float32 else 1.6e-2
        torch.testing.assert_close(out.double(), expected, rtol=tolerance, atol=tolerance)
        if dtype == torch.bfloat16:  # torch's own bf16 linear: the same up to the last bf16 bit
            torch.testing.assert_close(out, F.linear(x, linear.weight, linear.bias), rtol=1.6e-2, atol=1e-2)
    x3 = torch.randn(2, 3, in_features, dtype=dtype)  # leading dims, and a strided view
    torch.testing.assert_close(layer(x3).float(), layer(x3.reshape(6, -1)).float().view(2, 3, 70))
    xt = torch.randn(in_features, 4, dtype=dtype).t()
    torch.testing.assert_close(layer(xt).float(), layer(xt.contiguous()).float())


def test_kernel_parts_address_is_callable():
    torch.manual_seed(5)
    linear = nn.Linear(100, 45, bias=False)
    layer = CpuLinear(linear, "fgemm")
    parts = layer.kernel_parts()
    assert parts is not None and len(parts) == 1
    part = parts[0]
    assert (part.rows, part.in_features, part.offset) == (45, 100, 0)
    prototype = ctypes.CFUNCTYPE(
        None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p
    )
    fn = prototype(part.fn)
    x = torch.randn(3, 100)
    y = torch.empty(3, 45)
    fn(x.data_ptr(), 3, 100, part.weight_address, 45, y.data_ptr())
    torch.testing.assert_close(y, layer(x))
    # other kinds, or a bias the kernel does not add: no parts (the caller keeps torch)
    assert CpuLinear(nn.Linear(100, 45, bias=True), "fgemm").kernel_parts() is None
    assert CpuLinear(linear, "matmul").kernel_parts() is None


def test_timing_rule_weighs_every_row_count(monkeypatch):
    # a kind fastest at one row by far and a little slower elsewhere wins; one a little faster at
    # one row and far slower elsewhere does not
    times = {"a": [2.0, 1.0, 1.0], "b": [1.0, 1.1, 1.1], "matmul": [1.1, 1.6, 1.6]}
    monkeypatch.setattr(cpu_linear, "cpu_linear_kinds", lambda dtype: list(times))
    calls: dict[str, int] = {}

    def fake_time(run, repeats=3, before=None):
        kind = run.args[0]
        calls[kind] = calls.get(kind, 0) + 1
        return times[kind][calls[kind] - 1]

    monkeypatch.setattr(cpu_linear, "_best_time", fake_time)
    monkeypatch.setattr(cpu_linear, "_pack", lambda kind, weight: weight.t().contiguous())
    monkeypatch.setattr(cpu_linear, "_run_packed", lambda kind, x, packed, bias, shape_only: x @ packed)
    assert cpu_linear._time_kinds(torch.randn(8, 16)) == "b"
    times["b"] = [1.8, 1.5, 1.5]
    calls.clear()
    assert cpu_linear._time_kinds(torch.randn(8, 16)) == "a"
