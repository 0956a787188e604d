"""Counter-based sampling noise: uniforms that are a pure function of (seed, step, stream, token).

splitmix64 over int64 tensors (wrapping arithmetic, logical shifts); the Triton sampling kernel
computes the same bits with these constants.
"""
from __future__ import annotations

import torch

MASK64 = (1 << 64) - 1


def _signed(value: int) -> int:
    value &= MASK64
    return value - (1 << 64) if value >= 1 << 63 else value


GOLDEN = _signed(0x9E3779B97F4A7C15)
MIX1 = _signed(0xBF58476D1CE4E5B9)
MIX2 = _signed(0x94D049BB133111EB)
STEP = _signed(0xD1B54A32D192ED03)
STREAM = 0x8CB92BA72F3D8DD7


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 (torch shifts arithmetically)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def _splitmix64(x: torch.Tensor) -> torch.Tensor:
    x = (x ^ _shift_right(x, 30)) * MIX1
    x = (x ^ _shift_right(x, 27)) * MIX2
    return x ^ _shift_right(x, 31)


def uniform_noise(seeds: torch.Tensor, steps: torch.Tensor, stream: int, vocab: int) -> torch.Tensor:
    """(B, vocab) uniforms in (0, 1), a pure function of (seed, step, stream, token index)."""
    key = _splitmix64(seeds * GOLDEN + steps * STEP + _signed(stream * STREAM))
    token = torch.arange(vocab, device=seeds.device, dtype=torch.int64)
    bits = _splitmix64(key.unsqueeze(1) + (token + 1) * GOLDEN)
    return (_shift_right(bits, 40).float() + 0.5) * (1.0 / (1 << 24))
