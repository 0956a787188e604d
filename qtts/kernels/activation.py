"""silu(gate) * up over a fused gate|up projection — Triton and reference."""
from __future__ import annotations

import torch
from torch.nn import functional as F

import functools


@functools.cache
def _silu_mul_kernel():
    """Compiled lazily, so that the Triton interpreter setting is read when it is first used."""
    import triton
    import triton.language as tl

    @triton.jit
    def silu_mul_kernel(gate_up_ptr, out_ptr, n_cols, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = cols < n_cols
        gate = tl.load(gate_up_ptr + row * 2 * n_cols + cols, mask=mask, other=0.0)
        up = tl.load(gate_up_ptr + row * 2 * n_cols + n_cols + cols, mask=mask, other=0.0)
        g = gate.to(tl.float32)
        act = (g / (1.0 + tl.exp(-g))).to(gate.dtype)
        out = (act.to(tl.float32) * up.to(tl.float32)).to(gate.dtype)
        tl.store(out_ptr + row * n_cols + cols, out, mask=mask)


    return silu_mul_kernel


def silu_mul_reference(gate_up: torch.Tensor) -> torch.Tensor:
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


def silu_mul_fused(gate_up: torch.Tensor, block: int = 1024) -> torch.Tensor:
    shape = gate_up.shape
    n_cols = shape[-1] // 2
    flat = gate_up.reshape(-1, shape[-1]).contiguous()
    out = torch.empty(flat.shape[0], n_cols, device=gate_up.device, dtype=gate_up.dtype)
    _silu_mul_kernel()[(flat.shape[0], -(-n_cols // block))](flat, out, n_cols, BLOCK=block)
    return out.view(*shape[:-1], n_cols)
