"""Rotary position embedding on [T, heads, head_dim]: neox style (rotate halves, as our
RotaryEmbedding.apply) or GPT-J style (interleaved pairs), over the first rotary_dim dims
(the rest pass through), in place or out of place.

cos/sin are [T, rotary_dim / 2], already looked up by position (RotaryEmbedding.cos_sin).
Computed in float32 and rounded once. One program per token covers all its heads.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rotary_kernel(
    x_ptr,
    out_ptr,
    cos_ptr,
    sin_ptr,
    stride_xt,
    stride_xh,
    stride_ot,
    stride_oh,
    stride_ct,
    stride_st,
    NUM_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    ROT_HALF: tl.constexpr,
    H_PAD: tl.constexpr,
    R_PAD: tl.constexpr,
    P_PAD: tl.constexpr,
    IS_NEOX: tl.constexpr,
    COPY_PASS: tl.constexpr,
):
    t = tl.program_id(0).to(tl.int64)
    h = tl.arange(0, H_PAD)
    r = tl.arange(0, R_PAD)
    rmask = r < ROT_HALF
    mask = (h[:, None] < NUM_HEADS) & rmask[None, :]
    c = tl.load(cos_ptr + t * stride_ct + r, mask=rmask, other=0.0).to(tl.float32)[None, :]
    s = tl.load(sin_ptr + t * stride_st + r, mask=rmask, other=0.0).to(tl.float32)[None, :]
    if IS_NEOX:
        i1 = r
        i2 = r + ROT_HALF
    else:
        i1 = 2 * r
        i2 = 2 * r + 1
    x_row = x_ptr + t * stride_xt + h[:, None] * stride_xh
    o_row = out_ptr + t * stride_ot + h[:, None] * stride_oh
    x1 = tl.load(x_row + i1[None, :], mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(x_row + i2[None, :], mask=mask, other=0.0).to(tl.float32)
    o1 = x1 * c - x2 * s
    o2 = x2 * c + x1 * s
    tl.store(o_row + i1[None, :], o1.to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(o_row + i2[None, :], o2.to(out_ptr.dtype.element_ty), mask=mask)
    if COPY_PASS:
        p = tl.arange(0, P_PAD)
        pmask = (h[:, None] < NUM_HEADS) & (p[None, :] < HEAD_DIM - 2 * ROT_HALF)
        rest = tl.load(x_row + 2 * ROT_HALF + p[None, :], mask=pmask)
        tl.store(o_row + 2 * ROT_HALF + p[None, :], rest.to(out_ptr.dtype.element_ty), mask=pmask)


def rotary_embedding(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, is_neox: bool = True, inplace: bool = False
) -> torch.Tensor:
    """x [T, H, D]; cos/sin [T, rotary_dim / 2] (rotary_dim <= D). Returns the rotated tensor
    (x itself when inplace)."""
    num_tokens, num_heads, head_dim = x.shape
    rot_half = cos.shape[-1]
    assert cos.shape == (num_tokens, rot_half) and sin.shape == cos.shape and 2 * rot_half <= head_dim
    if x.stride(-1) != 1:
        assert not inplace, "inplace needs a unit last stride"
        x = x.contiguous()
    if cos.stride(-1) != 1:
        cos = cos.contiguous()
    if sin.stride(-1) != 1:
        sin = sin.contiguous()
    out = x if inplace else torch.empty(x.shape, dtype=x.dtype, device=x.device)
    rest = head_dim - 2 * rot_half
    if num_tokens:
        _rotary_kernel[(num_tokens,)](
            x,
            out,
            cos,
            sin,
            x.stride(0),
            x.stride(1),
            out.stride(0),
            out.stride(1),
            cos.stride(0),
            sin.stride(0),
            NUM_HEADS=num_heads,
            HEAD_DIM=head_dim,
            ROT_HALF=rot_half,
            H_PAD=triton.next_power_of_2(num_heads),
            R_PAD=triton.next_power_of_2(rot_half),
            P_PAD=triton.next_power_of_2(max(rest, 1)),
            IS_NEOX=is_neox,
            COPY_PASS=(not inplace) and rest > 0,
        )
    return out


def rotary_embedding_ref(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, is_neox: bool = True) -> torch.Tensor:
    rot = 2 * cos.shape[-1]
    xf = x.float()
    x_rot, x_pass = xf[..., :rot], xf[..., rot:]
    c, s = cos.float()[:, None, :], sin.float()[:, None, :]
    if is_neox:
        x1, x2 = x_rot.chunk(2, dim=-1)
        rotated = torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1)
    else:
        x1, x2 = x_rot[..., 0::2], x_rot[..., 1::2]
        rotated = torch.stack([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1).flatten(-2)
    return torch.cat([rotated, x_pass], dim=-1).to(x.dtype)
