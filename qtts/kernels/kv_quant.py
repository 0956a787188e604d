"""Quantized KV-cache vectors: the stored row formats and their PyTorch reference (de)quantization.

A cached key or value vector (head_dim numbers) is stored as one row of bytes: its quantized
coordinates, then its fp32 scale in a 16-byte trailer (the padding keeps every row 16-byte aligned
for vector loads). Because the scale travels inside the row, any copy of cache positions (a slot
move, a prompt-prefix entry) carries the scales with it.

int8: symmetric, one scale per vector, coordinate = round(x * 127 / max|x|).
int4 (the seed's TurboQuant, simplified): the vector is rotated by a fixed random orthogonal
matrix, which spreads outlier channels over all coordinates and makes them near-Gaussian; each
rotated coordinate, divided by the vector's root mean square, is snapped to the 16-level Lloyd-Max
codebook of N(0, 1), and the stored scale is the least-squares one for the chosen levels. Two 4-bit
indices share a byte: coordinate i in the low nibble, i + head_dim/2 in the high one. Attention can
run in the rotated space (q rotated the same way, the output rotated back).
"""
from __future__ import annotations

import torch

KV_FORMATS = ("int8", "int4")
SCALE_BYTES = 16  # fp32 scale + 12 bytes of padding
INT8_MAX = 127
# MSE-optimal 16 levels for a standard normal variable (Max, 1960).
LLOYD_MAX_4BIT = (-2.7326, -2.0690, -1.6180, -1.2562, -0.9423, -0.6568, -0.3880, -0.1284,
                  0.1284, 0.3880, 0.6568, 0.9423, 1.2562, 1.6180, 2.0690, 2.7326)


def check_format(kv_format: str) -> None:
    if kv_format not in KV_FORMATS:
        raise ValueError(f"unknown KV cache format {kv_format!r}; use one of {', '.join(KV_FORMATS)}")


def row_bytes(kv_format: str, head_dim: int) -> int:
    """Bytes of one stored vector."""
    check_format(kv_format)
    return (head_dim if kv_format == "int8" else head_dim // 2) + SCALE_BYTES


def storage_dtype(kv_format: str) -> torch.dtype:
    check_format(kv_format)
    return torch.int8 if kv_format == "int8" else torch.uint8


def stored_bits(cache: torch.Tensor) -> int:
    """How a cache tensor stores its vectors: 8 (int8 rows), 4 (int4 rows) or 16 (plain, model dtype)."""
    return {torch.int8: 8, torch.uint8: 4}.get(cache.dtype, 16)


def codebook(device: torch.device | str) -> torch.Tensor:
    """LLOYD_MAX_4BIT as an fp32 tensor."""
    return torch.tensor(LLOYD_MAX_4BIT, dtype=torch.float32, device=device)


def rotation_matrix(head_dim: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """A fixed random orthogonal (head_dim, head_dim) fp32 matrix R; vectors are stored rotated as x @ R.T."""
    gaussian = torch.randn(head_dim, head_dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    q, r = torch.linalg.qr(gaussian)
    return (q * r.diagonal().sign()).float().contiguous().to(device)  # QR returns column-major Q


def _scale_view(rows: torch.Tensor, data_bytes: int) -> torch.Tensor:
    """The fp32 scale of each row (..., 1), a view into the rows."""
    return rows[..., data_bytes:data_bytes + 4].view(torch.float32)


def quantize_int8(x: torch.Tensor) -> torch.Tensor:
    """int8 rows (..., head_dim + SCALE_BYTES) of vectors x (..., head_dim)."""
    x = x.float()
    head_dim = x.shape[-1]
    absmax = x.abs().amax(-1, keepdim=True)
    inverse = torch.where(absmax > 0, INT8_MAX / absmax, torch.zeros_like(absmax))
    rows = torch.zeros(*x.shape[:-1], head_dim + SCALE_BYTES, dtype=torch.int8, device=x.device)
    rows[..., :head_dim] = torch.floor(x * inverse + 0.5).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
    _scale_view(rows, head_dim).copy_(absmax / INT8_MAX)
    return rows


def dequantize_int8(rows: torch.Tensor) -> torch.Tensor:
    """fp32 vectors (..., head_dim) of int8 rows."""
    head_dim = rows.shape[-1] - SCALE_BYTES
    return rows[..., :head_dim].float() * _scale_view(rows, head_dim)


def quantize_int4(x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """int4 rows (..., head_dim/2 + SCALE_BYTES) uint8 of vectors x (..., head_dim), rotated by `rotation`."""
    rotated = x.float() @ rotation.T
    half = x.shape[-1] // 2
    rms = rotated.pow(2).mean(-1, keepdim=True).sqrt()
    inverse = torch.where(rms > 0, 1 / rms, torch.zeros_like(rms))
    levels = codebook(x.device)
    boundaries = (levels[:-1] + levels[1:]) * 0.5
    index = torch.bucketize(rotated * inverse, boundaries)  # how many boundaries lie below
    rows = torch.zeros(*x.shape[:-1], half + SCALE_BYTES, dtype=torch.uint8, device=x.device)
    rows[..., :half] = (index[..., :half] | (index[..., half:] << 4)).to(torch.uint8)
    chosen = levels[index]
    # the least-squares scale of the chosen levels (the rms alone would shrink the vector)
    _scale_view(rows, half).copy_((rotated * chosen).sum(-1, keepdim=True) / chosen.pow(2).sum(-1, keepdim=True))
    return rows


def dequantize_int4(rows: torch.Tensor, rotation: torch.Tensor | None) -> torch.Tensor:
    """fp32 vectors (..., head_dim) of int4 rows, rotated back (left in the rotated space when rotation is None)."""
    half = rows.shape[-1] - SCALE_BYTES
    packed = rows[..., :half]
    index = torch.cat([packed & 15, packed >> 4], dim=-1).long()
    rotated = codebook(rows.device)[index] * _scale_view(rows, half)
    return rotated if rotation is None else rotated @ rotation


def quantize(x: torch.Tensor, kv_format: str, rotation: torch.Tensor | None = None) -> torch.Tensor:
    """Stored rows of vectors x (..., head_dim); int4 needs the cache's rotation."""
    check_format(kv_format)
    return quantize_int8(x) if kv_format == "int8" else quantize_int4(x, rotation)


def dequantize(rows: torch.Tensor, rotation: torch.Tensor | None = None) -> torch.Tensor:
    """fp32 vectors of stored rows (the format is the rows' dtype); int4 needs the cache's rotation."""
    return dequantize_int8(rows) if stored_bits(rows) == 8 else dequantize_int4(rows, rotation)
