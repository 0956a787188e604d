"""residual + y + bias per channel in one pass — Triton and reference.

The codec's residual units end with a 1x1 convolution whose output, bias and the unit's input are summed.
PyTorch adds a cuDNN convolution's bias in a broadcast pass of its own, so fusing it here saves a read and
a write of the activation per unit.
"""
from __future__ import annotations

import functools

import torch

from .layouts import channel_tiles, empty_like_layout


def bias_residual_reference(y: torch.Tensor, bias: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """residual + (y + bias) for y, residual (B, C, T) and bias (C,), as the unfused layers compute it."""
    return residual + (y + bias.to(y.dtype)[None, :, None])


@functools.cache
def _bias_residual_kernel():
    """Compiled lazily, so that the Triton interpreter setting is read when it is first used."""
    import triton
    import triton.language as tl

    @triton.jit
    def bias_residual_kernel(y_ptr, bias_ptr, residual_ptr, out_ptr, length,
                             y_stride_batch, y_stride_channel, y_stride_time,
                             residual_stride_batch, residual_stride_channel, residual_stride_time,
                             out_stride_batch, out_stride_channel, out_stride_time,
                             BLOCK_C: tl.constexpr, BLOCK_T: tl.constexpr):
        # time tiles on grid axis 0, the only one that takes over 65535 (long clips in one pass)
        t = (tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)).to(tl.int64)
        t = tl.max_contiguous(tl.multiple_of(t, BLOCK_T), BLOCK_T)[None, :]  # the cast hides this from Triton
        batch = tl.program_id(1).to(tl.int64)  # whole clips can pass 2**31 elements
        channel = (tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)).to(tl.int64)[:, None]  # × L can pass 2**31
        mask = t < length
        y = tl.load(y_ptr + batch * y_stride_batch + channel * y_stride_channel + t * y_stride_time,
                    mask=mask, other=0.0)
        residual = tl.load(residual_ptr + batch * residual_stride_batch + channel * residual_stride_channel
                           + t * residual_stride_time, mask=mask, other=0.0)
        total = residual.to(tl.float32) + y.to(tl.float32) + tl.load(bias_ptr + channel).to(tl.float32)
        tl.store(out_ptr + batch * out_stride_batch + channel * out_stride_channel + t * out_stride_time,
                 total.to(out_ptr.dtype.element_ty), mask=mask)

    return bias_residual_kernel


def bias_residual_fused(y: torch.Tensor, bias: torch.Tensor, residual: torch.Tensor,
                        block: int = 1024) -> torch.Tensor:
    """As bias_residual_reference, in one pass (computed in fp32, rounded once); a new tensor, dense in y's
    layout (channels innermost or time innermost). y and residual may have any strides."""
    if y.shape != residual.shape:
        raise ValueError(f"y {tuple(y.shape)} and residual {tuple(residual.shape)} must have the same shape")
    batch, channels, length = y.shape
    out = empty_like_layout(y)
    if out.numel() == 0:
        return out
    block_c, block_t = channel_tiles(out, block)
    grid = (-(-length // block_t), batch, channels // block_c)
    _bias_residual_kernel()[grid](y, bias, residual, out, length, *y.stride(), *residual.stride(), *out.stride(),
                                  BLOCK_C=block_c, BLOCK_T=block_t)
    return out
