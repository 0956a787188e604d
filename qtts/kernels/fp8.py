"""FP8 (e4m3) weights with one scale per output channel, and the matmul over them — Triton and reference.

A weight W (N, K) is stored as W8 = e4m3(W[n] * 448 / max|W[n]|) with scale s[n] = max|W[n]| / 448.
The matmul quantizes each activation row the same way (x8, t[m]) and computes
(x8 @ W8.T) * t[m] * s[n] with fp32 accumulation: through torch._scaled_mm (cuBLASLt FP8 GEMM
with row-wise scales) on GPUs with FP8 tensor cores (compute capability 8.9+: Ada, Hopper) in bf16,
elsewhere through the reference, which does the same arithmetic after dequantizing. Decode GEMVs of
one or two rows (kernels/gemv.py) read FP8 weights directly and leave the activations unquantized.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch.nn import functional as F

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0  # largest finite e4m3fn value


@dataclass
class Fp8Weight:
    """A linear layer's weight (N, K) as e4m3 data and an fp32 scale per output row: W ≈ data * scale[:, None]."""

    data: torch.Tensor
    scale: torch.Tensor

    @property
    def shape(self) -> torch.Size:
        return self.data.shape

    @classmethod
    def from_weight(cls, weight: torch.Tensor) -> "Fp8Weight":
        data, scale = quantize_rows_reference(weight)
        return cls(data, scale.view(-1))

    @classmethod
    def concat(cls, weights: list["Fp8Weight"]) -> "Fp8Weight":
        """The weights' rows stacked in order (per-row scales stack with them)."""
        return cls(torch.cat([w.data for w in weights]), torch.cat([w.scale for w in weights]))

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return (self.data.float() * self.scale.unsqueeze(1)).to(dtype)


def quantize_rows_reference(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(e4m3 rows, fp32 scales (M, 1)) of x (M, K): each row scaled so that its largest magnitude is FP8_MAX."""
    x = x.float()
    absmax = x.abs().amax(-1, keepdim=True)
    inverse = torch.where(absmax > 0, FP8_MAX / absmax.clamp(min=1e-30), torch.zeros_like(absmax))
    return (x * inverse).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE), absmax / FP8_MAX


@functools.cache
def _quantize_rows_kernel():
    """Compiled lazily, so that the Triton interpreter setting is read when it is first used."""
    import triton
    import triton.language as tl

    @triton.jit
    def quantize_rows_kernel(x_ptr, out_ptr, scale_ptr, K_DIM: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        base = row.to(tl.int64) * K_DIM
        peaks = tl.zeros((BLOCK,), tl.float32)
        for start in range(0, K_DIM, BLOCK):
            k = start + tl.arange(0, BLOCK)
            peaks = tl.maximum(peaks, tl.abs(tl.load(x_ptr + base + k, mask=k < K_DIM, other=0.0).to(tl.float32)))
        absmax = tl.max(peaks, axis=0)
        inverse = tl.where(absmax > 0, 448.0 / tl.maximum(absmax, 1e-30), 0.0)
        for start in range(0, K_DIM, BLOCK):
            k = start + tl.arange(0, BLOCK)
            x = tl.load(x_ptr + base + k, mask=k < K_DIM, other=0.0).to(tl.float32)
            scaled = tl.minimum(tl.maximum(x * inverse, -448.0), 448.0)
            tl.store(out_ptr + base + k, scaled.to(out_ptr.dtype.element_ty), mask=k < K_DIM)
        tl.store(scale_ptr + row, absmax / 448.0)

    return quantize_rows_kernel


def quantize_rows_fused(x: torch.Tensor, block: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """quantize_rows_reference as one kernel launch (one program per row)."""
    x = x.contiguous()
    rows, k_dim = x.shape
    out = torch.empty(rows, k_dim, device=x.device, dtype=FP8_DTYPE)
    scale = torch.empty(rows, 1, device=x.device, dtype=torch.float32)
    _quantize_rows_kernel()[(rows,)](x, out, scale, K_DIM=k_dim, BLOCK=block)
    return out, scale


@functools.cache
def scaled_mm_supported(device: torch.device) -> bool:
    """Whether `device` has FP8 tensor cores for torch._scaled_mm (CUDA compute capability 8.9+)."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


def fp8_linear_reference(x: torch.Tensor, weight: Fp8Weight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x (..., K) @ W.T (+ bias) with x quantized per row, in fp32, returned in x's dtype."""
    x8, x_scale = quantize_rows_reference(x.reshape(-1, x.shape[-1]))
    out = (x8.float() @ weight.data.float().T) * x_scale * weight.scale
    if bias is not None:
        out = out + bias.float()
    return out.to(x.dtype).view(*x.shape[:-1], weight.shape[0])


def fp8_linear_scaled_mm(x: torch.Tensor, weight: Fp8Weight, bias: torch.Tensor | None = None,
                         quantize_rows=quantize_rows_fused) -> torch.Tensor:
    """fp8_linear_reference through torch._scaled_mm (K and N multiples of 16), output in x's dtype."""
    x8, x_scale = quantize_rows(x.reshape(-1, x.shape[-1]))
    out = torch._scaled_mm(x8, weight.data.t(), scale_a=x_scale, scale_b=weight.scale.view(1, -1),
                           out_dtype=x.dtype)
    if bias is not None:
        out = out + bias
    return out.view(*x.shape[:-1], weight.shape[0])


def fp8_linear(x: torch.Tensor, weight: Fp8Weight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x @ W.T (+ bias) over an FP8 weight: the FP8 GEMM on capable GPUs in bf16, else the reference."""
    if x.dtype == torch.bfloat16 and scaled_mm_supported(x.device):
        return fp8_linear_scaled_mm(x, weight, bias)
    return fp8_linear_reference(x, weight, bias)


def weight_only_linear_reference(x: torch.Tensor, weight: Fp8Weight, bias: torch.Tensor | None = None
                                 ) -> torch.Tensor:
    """x @ W.T (+ bias) with the FP8 weight dequantized and x left as it is (what the FP8 GEMV computes)."""
    out = F.linear(x.float(), weight.data.float()) * weight.scale
    return (out if bias is None else out + bias.float()).to(x.dtype)
