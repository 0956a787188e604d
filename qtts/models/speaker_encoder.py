"""ECAPA-TDNN speaker encoder (no BatchNorm): 24 kHz reference audio → x-vector (enc_dim,).

Parameter names match the checkpoint's `speaker_encoder.*` tensors with that prefix removed.
Every convolution pads "same" by reflection, so rows of a batch must share one length.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from ..config import SpeakerEncoderConfig, load_model_config
from ..errors import CheckpointError
from ..weights import load_module, read_tensors
from .mel import mel_spectrogram


def _conv(in_channels: int, out_channels: int, kernel_size: int = 1, dilation: int = 1) -> nn.Conv1d:
    return nn.Conv1d(in_channels, out_channels, kernel_size, dilation=dilation, padding="same",
                     padding_mode="reflect")


class TimeDelayBlock(nn.Module):
    """Conv1d + ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, dilation: int = 1):
        super().__init__()
        self.conv = _conv(in_channels, out_channels, kernel_size, dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(x))


class Res2NetBlock(nn.Module):
    """Split channels in `scale` groups; group i > 0 goes through a conv after adding group i-1's output."""

    def __init__(self, channels: int, scale: int, kernel_size: int, dilation: int):
        super().__init__()
        self.scale = scale
        self.blocks = nn.ModuleList(
            TimeDelayBlock(channels // scale, channels // scale, kernel_size, dilation) for _ in range(scale - 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = torch.chunk(x, self.scale, dim=1)
        outputs = [parts[0], self.blocks[0](parts[1])]
        for block, part in zip(self.blocks[1:], parts[2:]):
            outputs.append(block(part + outputs[-1]))
        return torch.cat(outputs, dim=1)


class SqueezeExcitation(nn.Module):
    """Channel gates from the time-averaged input."""

    def __init__(self, channels: int, bottleneck: int):
        super().__init__()
        self.conv1 = _conv(channels, bottleneck)
        self.conv2 = _conv(bottleneck, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gates = torch.sigmoid(self.conv2(F.relu(self.conv1(x.mean(dim=2, keepdim=True)))))
        return x * gates


class SERes2NetBlock(nn.Module):
    """1×1 TDNN → Res2Net → 1×1 TDNN → squeeze-excitation, plus the input."""

    def __init__(self, in_channels: int, out_channels: int, scale: int, se_channels: int, kernel_size: int,
                 dilation: int):
        super().__init__()
        self.tdnn1 = TimeDelayBlock(in_channels, out_channels)
        self.res2net_block = Res2NetBlock(out_channels, scale, kernel_size, dilation)
        self.tdnn2 = TimeDelayBlock(out_channels, out_channels)
        self.se_block = SqueezeExcitation(out_channels, se_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.se_block(self.tdnn2(self.res2net_block(self.tdnn1(x)))) + x


def _weighted_statistics(x: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = (weights * x).sum(2)
    std = torch.sqrt((weights * (x - mean.unsqueeze(2)).pow(2)).sum(2).clamp(1e-12))
    return mean, std


class AttentiveStatisticsPooling(nn.Module):
    """Attention over time (conditioned on the global mean and std) → weighted mean and std."""

    def __init__(self, channels: int, attention_channels: int):
        super().__init__()
        self.tdnn = TimeDelayBlock(channels * 3, attention_channels)
        self.conv = _conv(attention_channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames = x.shape[-1]
        ones = torch.ones(x.shape[0], 1, frames, dtype=x.dtype, device=x.device)
        uniform = ones / ones.sum(dim=2, keepdim=True)  # as upstream builds it, for equal rounding in bf16
        mean, std = _weighted_statistics(x, uniform)
        context = torch.cat([x, mean.unsqueeze(2).expand(-1, -1, frames), std.unsqueeze(2).expand(-1, -1, frames)],
                            dim=1)
        attention = F.softmax(self.conv(torch.tanh(self.tdnn(context))), dim=2)
        mean, std = _weighted_statistics(x, attention)
        return torch.cat((mean, std), dim=1).unsqueeze(2)


class SpeakerEncoder(nn.Module):
    def __init__(self, config: SpeakerEncoderConfig):
        super().__init__()
        if not len(config.channels) == len(config.kernel_sizes) == len(config.dilations):
            raise CheckpointError("speaker encoder config: enc_channels, enc_kernel_sizes and enc_dilations "
                                  "must have the same length")
        self.config = config
        channels, kernels, dilations = config.channels, config.kernel_sizes, config.dilations
        self.blocks = nn.ModuleList([TimeDelayBlock(config.mel_dim, channels[0], kernels[0], dilations[0])])
        for i in range(1, len(channels) - 1):
            self.blocks.append(SERes2NetBlock(channels[i - 1], channels[i], config.res2net_scale,
                                              config.se_channels, kernels[i], dilations[i]))
        self.mfa = TimeDelayBlock(channels[-1], channels[-1], kernels[-1], dilations[-1])
        self.asp = AttentiveStatisticsPooling(channels[-1], config.attention_channels)
        self.fc = _conv(channels[-1] * 2, config.enc_dim)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """x-vectors (B, enc_dim) of log-mel frames (B, frames, mel_dim)."""
        x = mel.transpose(1, 2)
        block_outputs = []
        for block in self.blocks:
            x = block(x)
            block_outputs.append(x)
        x = self.mfa(torch.cat(block_outputs[1:], dim=1))
        return self.fc(self.asp(x)).squeeze(-1)

    @torch.no_grad()
    def embed(self, wav: torch.Tensor) -> torch.Tensor:
        """x-vectors (B, enc_dim) of 24 kHz waveforms (B, N); the mel is computed in float32."""
        weight = self.fc.weight
        mel = mel_spectrogram(wav.to(weight.device), sample_rate=self.config.sample_rate, n_mels=self.config.mel_dim)
        return self(mel.to(weight.dtype))


def load_speaker_encoder(folder: str | Path, config: SpeakerEncoderConfig | None = None,
                         device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> SpeakerEncoder:
    """The speaker encoder of a Base checkpoint folder (config from its config.json when not given)."""
    folder = Path(folder)
    if config is None:
        config = load_model_config(folder).speaker_encoder
        if config is None:
            raise CheckpointError(f"{folder} is not a Base model: it has no speaker encoder")
    model = SpeakerEncoder(config)
    load_module(model, read_tensors(folder, "speaker_encoder."), f"{folder} (speaker_encoder)")
    return model.to(device=device, dtype=dtype).eval()
