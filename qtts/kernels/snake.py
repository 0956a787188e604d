"""SnakeBeta activation of the codec vocoder, x + sin²(x·e^α) / (e^β + 1e-9) per channel — Triton and reference.

Both compute in fp32 and return x's dtype. An optional per-channel bias is added to x first: the bias of
the convolution before, which then needs no pass of its own. The kernel reduces the sine's argument to [-π, π] itself
(Cody–Waite with a two-part 2π), so a fast hardware sine stays accurate for large arguments.
"""
from __future__ import annotations

import functools

import torch


def snake_beta_reference(x: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor,
                         bias: torch.Tensor | None = None) -> torch.Tensor:
    """x (B, C, T); alpha, beta (C,) in log scale; SnakeBeta(x + bias). Upstream SnakeBeta's operations, in fp32."""
    alpha = torch.exp(alpha.float())[None, :, None]
    beta = torch.exp(beta.float())[None, :, None]
    x32 = x.float() if bias is None else x.float() + bias.float()[None, :, None]
    return (x32 + (1.0 / (beta + 1e-9)) * torch.pow(torch.sin(x32 * alpha), 2)).to(x.dtype)


@functools.cache
def _snake_kernel():
    """Compiled lazily, so that the Triton interpreter setting is read when it is first used."""
    import triton
    import triton.language as tl

    @triton.jit
    def snake_beta_kernel(x_ptr, alpha_ptr, beta_ptr, bias_ptr, out_ptr, channels, length, x_stride_batch,
                          x_stride_channel, out_stride_batch, out_stride_channel, HAS_BIAS: tl.constexpr,
                          BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)  # whole clips can pass 2**31 elements
        batch, channel = row // channels, row % channels
        t = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = t < length
        x = tl.load(x_ptr + batch * x_stride_batch + channel * x_stride_channel + t, mask=mask, other=0.0)
        frequency = tl.exp(tl.load(alpha_ptr + channel).to(tl.float32))
        magnitude = 1.0 / (tl.exp(tl.load(beta_ptr + channel).to(tl.float32)) + 1e-9)
        x32 = x.to(tl.float32)
        if HAS_BIAS:
            x32 += tl.load(bias_ptr + channel).to(tl.float32)
        phase = x32 * frequency
        turns = tl.floor(phase * 0.15915494309189535 + 0.5)
        reduced = tl.fma(turns, -6.2831854820251465, phase)
        reduced = tl.fma(turns, 1.7484556000744487e-07, reduced)
        sine = tl.sin(reduced)
        out = out_ptr + batch * out_stride_batch + channel * out_stride_channel + t
        tl.store(out, (x32 + magnitude * sine * sine).to(out_ptr.dtype.element_ty), mask=mask)

    return snake_beta_kernel


def snake_beta_fused(x: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor, out: torch.Tensor | None = None,
                     block: int = 1024, bias: torch.Tensor | None = None) -> torch.Tensor:
    """As snake_beta_reference, in one pass over x; into `out` when given (same shape, unit stride in time)."""
    if x.stride(-1) != 1:
        x = x.contiguous()
    batch, channels, length = x.shape
    if out is None:
        out = torch.empty(batch, channels, length, device=x.device, dtype=x.dtype)
    elif out.shape != x.shape or out.stride(-1) != 1:
        raise ValueError(f"out must have shape {tuple(x.shape)} and unit stride in time")
    if out.numel() == 0:
        return out
    block = min(block, max(16, 1 << (length - 1).bit_length()))
    grid = (batch * channels, -(-length // block))
    # without a bias the kernel never reads bias_ptr; alpha stands in for it
    _snake_kernel()[grid](x, alpha, beta, alpha if bias is None else bias, out, channels, length, x.stride(0),
                          x.stride(1), out.stride(0), out.stride(1), HAS_BIAS=bias is not None, BLOCK=block)
    return out
