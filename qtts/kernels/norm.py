"""Fused RMSNorm (optionally adding a residual first) — Triton kernel and its PyTorch reference.

Rounding follows the eager modules: the residual add rounds to the activation dtype, the
normalisation runs in fp32 and rounds, then the weight multiply rounds again.
"""
from __future__ import annotations

import torch

import functools


@functools.cache
def _rms_norm_kernel():
    """Compiled lazily, so that the Triton interpreter setting is read when it is first used."""
    import triton
    import triton.language as tl

    @triton.jit
    def rms_norm_kernel(x_ptr, residual_ptr, weight_ptr, out_ptr, residual_out_ptr, n_cols, eps,
                         HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        cols = tl.arange(0, BLOCK)
        mask = cols < n_cols
        x = tl.load(x_ptr + row * n_cols + cols, mask=mask, other=0.0)
        if HAS_RESIDUAL:
            r = tl.load(residual_ptr + row * n_cols + cols, mask=mask, other=0.0)
            x = (x.to(tl.float32) + r.to(tl.float32)).to(x.dtype)
            tl.store(residual_out_ptr + row * n_cols + cols, x, mask=mask)
        xf = x.to(tl.float32)
        variance = tl.sum(xf * xf, axis=0) / n_cols
        normed = (xf * tl.rsqrt(variance + eps)).to(x.dtype)
        w = tl.load(weight_ptr + cols, mask=mask, other=0.0)
        out = (w.to(tl.float32) * normed.to(tl.float32)).to(x.dtype)
        tl.store(out_ptr + row * n_cols + cols, out, mask=mask)


    return rms_norm_kernel


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float,
                       residual: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(normed, new residual): new residual = x + residual (or x), normed = RMSNorm(new residual)."""
    if residual is not None:
        x = x + residual
    x32 = x.float()
    normed = (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    return weight * normed, x


def rms_norm_fused(x: torch.Tensor, weight: torch.Tensor, eps: float,
                   residual: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as rms_norm_reference, one kernel launch."""
    shape = x.shape
    x2 = x.reshape(-1, shape[-1]).contiguous()
    out = torch.empty_like(x2)
    n_rows, n_cols = x2.shape
    block = 1 << (n_cols - 1).bit_length()
    if residual is not None:
        residual_out = torch.empty_like(x2)
        _rms_norm_kernel()[(n_rows,)](x2, residual.reshape(-1, n_cols).contiguous(), weight, out, residual_out,
                                    n_cols, eps, HAS_RESIDUAL=True, BLOCK=block)
        return out.view(shape), residual_out.view(shape)
    _rms_norm_kernel()[(n_rows,)](x2, x2, weight, out, x2, n_cols, eps, HAS_RESIDUAL=False, BLOCK=block)
    return out.view(shape), x
