"""Rotary position embedding (rotate-half convention).

The talker's interleaved M-RoPE uses three equal position components for TTS, which makes
it exactly plain 1-D RoPE, so one implementation serves talker, predictor and codec.
"""
import torch
from torch import nn


class RotaryEmbedding(nn.Module):
    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self._table: tuple[torch.Tensor, torch.Tensor] | None = None  # cos, sin of positions 0..n-1
        self._retired: list[tuple[torch.Tensor, torch.Tensor]] = []  # graphs captured on them may still read them

    def reserve(self, positions: int, dtype: torch.dtype) -> None:
        """Precompute cos/sin of positions 0..positions-1, so a call looks them up (two kernels
        instead of seven). Every later call must stay below the largest count reserved, as a static
        KV cache of that length already makes it."""
        table = self._table
        if table is not None and table[0].dtype == dtype and table[0].shape[0] >= positions:
            return
        if table is not None:
            self._retired.append(table)
        self._table = self._compute(torch.arange(positions, device=self.inv_freq.device), dtype)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin of shape positions.shape + (head_dim,), computed in fp32 then cast."""
        if self._table is not None and self._table[0].dtype == dtype:
            return self._table[0][positions], self._table[1][positions]
        return self._compute(positions, dtype)

    def _compute(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions.float().unsqueeze(-1) * self.inv_freq.float()
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, heads, S, D); cos/sin: (B, S, D)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return x * cos + rotate_half(x) * sin
