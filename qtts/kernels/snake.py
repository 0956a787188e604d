"""SnakeBeta activation of the codec vocoder, x + sin²(x·e^α) / (e^β + 1e-9) per channel — Triton and reference.

Both compute in fp32 and return x's dtype. An optional per-channel bias is added to x first: the bias of
the convolution before, which then needs no pass of its own. The kernel takes e^α and 1 / (e^β + 1e-9)
precomputed (snake_coefficients), so each sample costs one sine; it reduces the sine's argument to [-π, π]
itself (Cody–Waite with a two-part 2π), so a fast hardware sine stays accurate for large arguments.
"""
from __future__ import annotations

import functools

import torch

from .layouts import channel_tiles, empty_like_layout


def snake_beta_reference(x: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor,
                         bias: torch.Tensor | None = None) -> torch.Tensor:
    """x (B, C, T); alpha, beta (C,) in log scale; SnakeBeta(x + bias). Upstream SnakeBeta's operations, in fp32."""
    alpha = torch.exp(alpha.float())[None, :, None]
    beta = torch.exp(beta.float())[None, :, None]
    x32 = x.float() if bias is None else x.float() + bias.float()[None, :, None]
    return (x32 + (1.0 / (beta + 1e-9)) * torch.pow(torch.sin(x32 * alpha), 2)).to(x.dtype)


def snake_coefficients(alpha: torch.Tensor, beta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernel's per-channel (frequency, magnitude) in fp32: e^α and 1 / (e^β + 1e-9)."""
    return torch.exp(alpha.float()), 1.0 / (torch.exp(beta.float()) + 1e-9)


@functools.cache
def _snake_kernel():
    """Compiled lazily, so that the Triton interpreter setting is read when it is first used."""
    import triton
    import triton.language as tl

    @triton.jit
    def snake_beta_kernel(x_ptr, frequency_ptr, magnitude_ptr, bias_ptr, out_ptr, length,
                          x_stride_batch, x_stride_channel, x_stride_time,
                          out_stride_batch, out_stride_channel, out_stride_time,
                          HAS_BIAS: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_T: tl.constexpr):
        # one (BLOCK_C channels × BLOCK_T samples) tile of one stream; the grid's channel tiles cover C exactly
        # time tiles on grid axis 0, the only one that takes over 65535 (long clips in one pass)
        t = (tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)).to(tl.int64)
        t = tl.max_contiguous(tl.multiple_of(t, BLOCK_T), BLOCK_T)[None, :]  # the cast hides this from Triton
        batch = tl.program_id(1).to(tl.int64)  # whole clips can pass 2**31 elements
        channel = (tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)).to(tl.int64)[:, None]  # × L can pass 2**31
        mask = t < length
        x = tl.load(x_ptr + batch * x_stride_batch + channel * x_stride_channel + t * x_stride_time,
                    mask=mask, other=0.0).to(tl.float32)
        if HAS_BIAS:
            x += tl.load(bias_ptr + channel).to(tl.float32)
        phase = x * tl.load(frequency_ptr + channel)
        turns = tl.floor(phase * 0.15915494309189535 + 0.5)
        reduced = tl.fma(turns, -6.2831854820251465, phase)
        reduced = tl.fma(turns, 1.7484556000744487e-07, reduced)
        sine = tl.sin(reduced)
        y = x + tl.load(magnitude_ptr + channel) * sine * sine
        tl.store(out_ptr + batch * out_stride_batch + channel * out_stride_channel + t * out_stride_time,
                 y.to(out_ptr.dtype.element_ty), mask=mask)

    return snake_beta_kernel


def snake_beta_fused(x: torch.Tensor, frequency: torch.Tensor, magnitude: torch.Tensor,
                     out: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                     block: int = 1024) -> torch.Tensor:
    """As snake_beta_reference, in one pass over x (any strides), given snake_coefficients(alpha, beta); into
    `out` when given (same shape, any strides), else into a new tensor in x's layout (channels innermost or
    time innermost)."""
    batch, channels, length = x.shape
    if out is None:
        out = empty_like_layout(x)
    elif out.shape != x.shape:
        raise ValueError(f"out must have shape {tuple(x.shape)}, got {tuple(out.shape)}")
    if out.numel() == 0:
        return out
    block_c, block_t = channel_tiles(out, block)
    grid = (-(-length // block_t), batch, channels // block_c)
    # without a bias the kernel never reads bias_ptr; frequency stands in for it
    _snake_kernel()[grid](x, frequency, magnitude, frequency if bias is None else bias, out, length,
                          *x.stride(), *out.stride(), HAS_BIAS=bias is not None, BLOCK_C=block_c, BLOCK_T=block_t)
    return out
