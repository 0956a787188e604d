"""Causal conv layers of the 12 Hz codec decoder, each able to continue from a saved input history.

Every layer takes `(x, histories)`. A layer with context reads its history (the last h input samples
it saw; zeros for a fresh stream), runs on [history, x] without padding and writes back the new last
h samples, so decoding a sequence chunk by chunk gives the same samples as decoding it at once (left
zero padding == a zero history).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..kernels import kernels_enabled
from ..kernels.snake import snake_beta_fused, snake_beta_reference


class ConvHistories:
    """The rows `rows` (B,) of per-layer history tensors (streams, C_in, h), read and written by layer index."""

    def __init__(self, tensors: list[torch.Tensor], rows: torch.Tensor):
        self.tensors, self.rows = tensors, rows

    def read(self, index: int) -> torch.Tensor:
        return self.tensors[index].index_select(0, self.rows)

    def write(self, index: int, value: torch.Tensor) -> None:
        self.tensors[index].index_copy_(0, self.rows, value)


class CausalConv1d(nn.Module):
    """Conv1d (stride 1) with (kernel-1)*dilation samples of left context."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, dilation=dilation, groups=groups)
        self.history = (kernel_size - 1) * dilation
        self.history_index = -1  # assigned by the decoder that owns the layer

    def forward(self, x: torch.Tensor, histories: ConvHistories) -> torch.Tensor:
        if self.history == 0:
            return self.conv(x)
        full = torch.cat([histories.read(self.history_index), x], dim=-1)
        histories.write(self.history_index, full[..., -self.history:])
        return self.conv(full)


class CausalConvTranspose1d(nn.Module):
    """ConvTranspose1d whose output is cut to stride * input length (upstream drops the last kernel-stride).

    An output sample also depends on the ceil((kernel-stride)/stride) inputs before the one that
    starts it; those are the history.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int):
        super().__init__()
        self.conv = nn.ConvTranspose1d(in_channels, out_channels, kernel_size, stride=stride)
        self.stride = stride
        self.history = -(-(kernel_size - stride) // stride)
        self.history_index = -1

    def forward(self, x: torch.Tensor, histories: ConvHistories) -> torch.Tensor:
        length = x.shape[-1] * self.stride
        if self.history == 0:
            return self.conv(x)[..., :length]
        full = torch.cat([histories.read(self.history_index), x], dim=-1)
        histories.write(self.history_index, full[..., -self.history:])
        start = self.history * self.stride
        return self.conv(full)[..., start:start + length]


class SnakeBeta(nn.Module):
    """Periodic activation with log-scale per-channel frequency (alpha) and magnitude (beta)."""

    def __init__(self, channels: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor, histories: ConvHistories | None = None) -> torch.Tensor:
        if kernels_enabled(x.device):
            return snake_beta_fused(x, self.alpha, self.beta)
        return snake_beta_reference(x, self.alpha, self.beta)


class ConvNeXtBlock(nn.Module):
    """Depthwise causal conv k7 → LayerNorm → Linear ×4 → GELU → Linear → ×gamma, plus the input."""

    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = CausalConv1d(dim, dim, 7, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor, histories: ConvHistories) -> torch.Tensor:
        h = self.dwconv(x, histories).transpose(1, 2)
        h = self.pwconv2(F.gelu(self.pwconv1(self.norm(h))))
        return x + (self.gamma * h).transpose(1, 2)


class ResidualUnit(nn.Module):
    """x + conv1x1(Snake(conv_k7_dilated(Snake(x))))."""

    def __init__(self, dim: int, dilation: int):
        super().__init__()
        self.act1 = SnakeBeta(dim)
        self.conv1 = CausalConv1d(dim, dim, 7, dilation=dilation)
        self.act2 = SnakeBeta(dim)
        self.conv2 = CausalConv1d(dim, dim, 1)

    def forward(self, x: torch.Tensor, histories: ConvHistories) -> torch.Tensor:
        h = self.conv1(self.act1(x), histories)
        return x + self.conv2(self.act2(h), histories)


class VocoderBlock(nn.Module):
    """SnakeBeta → transposed conv ×rate → residual units with dilation 1, 3, 9."""

    def __init__(self, in_dim: int, out_dim: int, rate: int):
        super().__init__()
        units = [ResidualUnit(out_dim, dilation) for dilation in (1, 3, 9)]
        self.block = nn.ModuleList([SnakeBeta(in_dim), CausalConvTranspose1d(in_dim, out_dim, 2 * rate, rate), *units])

    def forward(self, x: torch.Tensor, histories: ConvHistories) -> torch.Tensor:
        for layer in self.block:
            x = layer(x, histories)
        return x
