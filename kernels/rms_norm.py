"""Fused RMSNorm, optionally with the residual add before it (one read of each row).

Semantics are our RMSNorm's (transformers'): the sum x + residual is rounded to the model
dtype (it is the next residual), the norm is computed in float32, cast to the model dtype,
then multiplied by the weight. One program per row.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rms_norm_kernel(
    x_ptr,
    res_ptr,
    w_ptr,
    out_ptr,
    res_out_ptr,
    stride_x,
    stride_r,
    stride_o,
    stride_ro,
    n_cols,
    eps,
    BLOCK: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        r = tl.load(res_ptr + row * stride_r + cols, mask=mask, other=0.0).to(tl.float32)
        summed = (x + r).to(res_out_ptr.dtype.element_ty)
        tl.store(res_out_ptr + row * stride_ro + cols, summed, mask=mask)
        x = summed.to(tl.float32)
    var = tl.sum(x * x, axis=0) / n_cols
    rstd = 1.0 / tl.sqrt(var + eps)
    normed = (x * rstd).to(out_ptr.dtype.element_ty).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * stride_o + cols, (normed * w).to(out_ptr.dtype.element_ty), mask=mask)


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None, inplace: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """x [..., N]. Without residual: returns the normed tensor. With residual: returns
    (normed, x + residual). inplace=True writes normed into x and the sum into residual
    (vLLM's fused_add_rms_norm; both must be contiguous); otherwise both are new tensors."""
    shape = x.shape
    n = shape[-1]
    if inplace:
        assert x.is_contiguous() and (residual is None or residual.is_contiguous()), "inplace needs contiguous tensors"
    x2 = x.reshape(-1, n)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    rows = x2.shape[0]
    out = x2 if inplace else torch.empty((rows, n), dtype=x.dtype, device=x.device)
    r2 = res_out = x2  # placeholders when there is no residual (never read)
    if residual is not None:
        assert residual.shape == shape
        r2 = residual.reshape(-1, n)
        if r2.stride(-1) != 1:
            r2 = r2.contiguous()
        res_out = r2 if inplace else torch.empty((rows, n), dtype=residual.dtype, device=x.device)
    if rows:
        _rms_norm_kernel[(rows,)](
            x2,
            r2,
            weight,
            out,
            res_out,
            x2.stride(0),
            r2.stride(0),
            out.stride(0),
            res_out.stride(0),
            n,
            float(eps),
            BLOCK=triton.next_power_of_2(n),
            HAS_RESIDUAL=residual is not None,
            num_warps=4 if n <= 2048 else 8 if n <= 8192 else 16,
        )
    normed = out.view(shape)
    return normed if residual is None else (normed, res_out.view(shape))


def rms_norm_ref(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Our RMSNorm (vllm_cli.model_executor.layers.norm.RMSNorm), with the residual add first."""
    if residual is not None:
        x = x + residual
    x32 = x.float()
    normed = weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    normed = normed.to(x.dtype)
    return normed if residual is None else (normed, x)
