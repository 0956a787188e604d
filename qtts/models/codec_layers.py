"""Causal conv layers of the 12 Hz codec decoder, each able to continue from a saved input history.

Every layer takes `(x, histories)`. A layer with context reads its history (the last h input samples
it saw; zeros for a fresh stream), runs on [history, x] without padding and writes back the new last
h samples, so decoding a sequence chunk by chunk gives the same samples as decoding it at once (left
zero padding == a zero history).

Activations are (B, C, L) tensors in one of two layouts (kernels/layouts.py), and every layer's output
keeps its input's layout. Channels innermost (laid out as (B, L, C)) is the one cuDNN's convolutions on
Hopper work in, so none of them converts anything; the ConvNeXt blocks' linear layers need no
transpose, and a [history, x] buffer is one contiguous block per stream. The decoder uses it for the
call shapes whose convolutions a graph capture tuned, and time innermost for the rest.
"""
from __future__ import annotations

import functools
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from ..kernels import kernels_enabled
from ..kernels.layouts import empty_in_layout, is_channels_last, to_layout
from ..kernels.residual import bias_residual_fused, bias_residual_reference
from ..kernels.snake import snake_beta_fused, snake_beta_reference, snake_coefficients
from .derived import derived


class ConvHistories:
    """The rows `rows` (B,) of per-layer history tensors (streams, h, C_in), read and written by layer index."""

    def __init__(self, tensors: list[torch.Tensor], rows: torch.Tensor):
        self.tensors, self.rows = tensors, rows

    def read(self, index: int) -> torch.Tensor:
        return self.tensors[index].index_select(0, self.rows)

    def write(self, index: int, value: torch.Tensor) -> None:
        self.tensors[index].index_copy_(0, self.rows, value)


Activation = Callable[..., torch.Tensor]  # activation(x, out=buffer) writes activation(x) into buffer


def _with_history(layer: "CausalConv1d | CausalConvTranspose1d", x: torch.Tensor, histories: ConvHistories,
                  activation: Activation | None) -> torch.Tensor:
    """[history, activation(x)] as one (B, C, h + L) tensor in x's layout; the activation writes straight
    into it (no cat). Channels-last, the history rows are whole (h, C) blocks."""
    batch, channels, length = x.shape
    full = empty_in_layout(batch, channels, layer.history + length, is_channels_last(x), x)
    full[..., :layer.history] = histories.read(layer.history_index).transpose(1, 2)
    if activation is None:
        full[..., layer.history:] = x
    else:
        activation(x, out=full[..., layer.history:])
    histories.write(layer.history_index, full[..., -layer.history:].transpose(1, 2))
    return full


def channels_last_2d(tensor: torch.Tensor) -> torch.Tensor:
    """(N, C, L) as (N, C, 1, L) with channels innermost in memory: a conv2d input or weight in that layout."""
    return tensor.unsqueeze(2).contiguous(memory_format=torch.channels_last)


class CausalConv1d(nn.Module):
    """Conv1d (stride 1) with (kernel-1)*dilation samples of left context; the output has the input's
    layout (time or channels innermost, layouts.py).

    channels_last_shapes: the (batch, length) inputs that run as a channels-last conv2d, which converts
    nothing for a channels-last input; others run as (N, C, L) conv1d. cuDNN's speed in a layout depends
    on the shape (up to 10x either way, and un-tuned channels-last is the slow one for whole clips), so
    the shapes are the ones a graph capture timed (conv_layout.choose_conv_layouts). A 1x1 convolution of
    a channels-last input is a matrix product.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, dilation=dilation, groups=groups)
        self.history = (kernel_size - 1) * dilation
        self.history_index = -1  # assigned by the decoder that owns the layer
        self.channels_last_shapes: set[tuple[int, int]] = set()

    def forward(self, x: torch.Tensor, histories: ConvHistories, activation: Activation | None = None,
                add_bias: bool = True) -> torch.Tensor:
        """conv(activation(x)) continued from this layer's history; without the bias if not add_bias (the
        caller folds it into the next elementwise step)."""
        conv, channels_last = self.conv, is_channels_last(x)
        bias = conv.bias if add_bias else None
        if self.history == 0:
            x = x if activation is None else activation(x)
            if channels_last and conv.groups == 1:
                return F.linear(x.transpose(1, 2), conv.weight[:, :, 0], bias).transpose(1, 2)
            return to_layout(F.conv1d(x, conv.weight, bias, groups=conv.groups), channels_last)
        full = _with_history(self, x, histories, activation)
        if (x.shape[0], x.shape[-1]) in self.channels_last_shapes:
            y = F.conv2d(_conv2d_input(full), channels_last_weight(self), bias,
                         dilation=(1, conv.dilation[0]), groups=conv.groups).squeeze(2)
        else:
            y = F.conv1d(full.contiguous(), conv.weight, bias, dilation=conv.dilation, groups=conv.groups)
        return to_layout(y, channels_last)

def channels_last_weight(layer: "CausalConv1d | CausalConvTranspose1d") -> torch.Tensor:
    """The layer's weight as a channels-last conv2d weight, made once (derived.py)."""
    def channels_last_weight_2d() -> torch.Tensor:
        return channels_last_2d(layer.conv.weight.detach())
    return derived(layer, channels_last_weight_2d, layer.conv.weight)


def _conv2d_input(full: torch.Tensor) -> torch.Tensor:
    """(B, C, L) as a channels-last (B, C, 1, L) conv2d input: a view when full is channels-last."""
    return full.unsqueeze(2) if is_channels_last(full) else channels_last_2d(full)


class CausalConvTranspose1d(nn.Module):
    """ConvTranspose1d whose output is cut to stride * input length (upstream drops the last kernel-stride);
    layouts as CausalConv1d (with its channels_last_shapes).

    An output sample also depends on the ceil((kernel-stride)/stride) inputs before the one that
    starts it; those are the history.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int):
        super().__init__()
        self.conv = nn.ConvTranspose1d(in_channels, out_channels, kernel_size, stride=stride)
        self.stride = stride
        self.history = -(-(kernel_size - stride) // stride)
        self.history_index = -1
        self.channels_last_shapes: set[tuple[int, int]] = set()

    def forward(self, x: torch.Tensor, histories: ConvHistories, activation: Activation | None = None,
                add_bias: bool = True) -> torch.Tensor:
        """conv_transpose(activation(x)) continued from this layer's history, stride · L samples (a view);
        without the bias if not add_bias (the caller folds it into the next elementwise step)."""
        length, channels_last = x.shape[-1] * self.stride, is_channels_last(x)
        bias = self.conv.bias if add_bias else None
        if self.history == 0:
            full, start = (x if activation is None else activation(x)), 0
        else:
            full, start = _with_history(self, x, histories, activation), self.history * self.stride
        if (x.shape[0], x.shape[-1]) in self.channels_last_shapes:
            y = F.conv_transpose2d(_conv2d_input(full), channels_last_weight(self), bias,
                                   stride=(1, self.stride)).squeeze(2)
        else:
            y = F.conv_transpose1d(full.contiguous(), self.conv.weight, bias, stride=self.stride)
        return to_layout(y[..., start:start + length], channels_last)


class SnakeBeta(nn.Module):
    """Periodic activation with log-scale per-channel frequency (alpha) and magnitude (beta)."""

    def __init__(self, channels: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor, out: torch.Tensor | None = None,
                bias: torch.Tensor | None = None) -> torch.Tensor:
        """SnakeBeta(x + bias), written into `out` (same shape) when given, else a new tensor in x's layout."""
        if kernels_enabled(x.device):
            frequency, magnitude = derived(self, self._coefficients, self.alpha, self.beta)
            return snake_beta_fused(x, frequency, magnitude, out=out, bias=bias)
        y = snake_beta_reference(x, self.alpha, self.beta, bias)
        return y if out is None else out.copy_(y)

    def _coefficients(self) -> tuple[torch.Tensor, torch.Tensor]:
        return snake_coefficients(self.alpha, self.beta)


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
        return to_layout(x + (self.gamma * h).transpose(1, 2), is_channels_last(x))


class ResidualUnit(nn.Module):
    """x + conv1x1(Snake(conv_k7_dilated(Snake(x)))).

    Both convolutions run without their bias: the first one's is added inside the second Snake, the
    second one's with the residual, so neither costs a pass over the activation of its own. Likewise an
    input_bias (the bias the layer before left out) goes into the first Snake and the residual.
    """

    def __init__(self, dim: int, dilation: int):
        super().__init__()
        self.act1 = SnakeBeta(dim)
        self.conv1 = CausalConv1d(dim, dim, 7, dilation=dilation)
        self.act2 = SnakeBeta(dim)
        self.conv2 = CausalConv1d(dim, dim, 1)

    def forward(self, x: torch.Tensor, histories: ConvHistories,
                input_bias: torch.Tensor | None = None) -> torch.Tensor:
        act1 = self.act1 if input_bias is None else functools.partial(self.act1, bias=input_bias)
        h = self.conv1(x, histories, activation=act1, add_bias=False)
        act2 = functools.partial(self.act2, bias=self.conv1.conv.bias)
        y = self.conv2(h, histories, activation=act2, add_bias=False)
        bias = self.conv2.conv.bias if input_bias is None else self.conv2.conv.bias.float() + input_bias.float()
        if kernels_enabled(x.device):
            return bias_residual_fused(y, bias, x)
        return bias_residual_reference(y, bias, x)


class VocoderBlock(nn.Module):
    """SnakeBeta → transposed conv ×rate → residual units with dilation 1, 3, 9."""

    def __init__(self, in_dim: int, out_dim: int, rate: int):
        super().__init__()
        units = [ResidualUnit(out_dim, dilation) for dilation in (1, 3, 9)]
        self.block = nn.ModuleList([SnakeBeta(in_dim), CausalConvTranspose1d(in_dim, out_dim, 2 * rate, rate), *units])

    def forward(self, x: torch.Tensor, histories: ConvHistories) -> torch.Tensor:
        snake, upsample, *units = self.block
        x = upsample(x, histories, activation=snake, add_bias=False)
        x = units[0](x, histories, input_bias=upsample.conv.bias)  # the first unit adds the upsampler's bias
        for unit in units[1:]:
            x = unit(x, histories)
        return x
