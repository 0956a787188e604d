"""The codec's Mimi encoder: 24 kHz waveform → 16 codebooks per 80 ms frame (ICL reference codes).

SEANet convolutions (causal, 960× down to 25 Hz) → causal transformer → stride-2 conv to 12.5 Hz
→ split RVQ (one semantic codebook, then acoustic codebooks, both quantizing the same embeddings).
Parameter names match the codec checkpoint's `encoder.*` tensors with that prefix removed.

Batches: rows are right-padded with zeros and carry their valid lengths. Before every strided
convolution the samples past a row's end are reset to what a row encoded alone would see there
(zeros; the last value for the replicate-padded downsample), so each row's codes equal those of
encoding it alone, whatever else is in the batch. (Upstream's batched encode does not do this and
its last frame of a shorter row can differ from a one-row encode.)
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from ..config import SAMPLES_PER_FRAME, CodecEncoderConfig, load_codec_config
from ..layers.rope import RotaryEmbedding, apply_rope
from ..weights import load_module, read_tensors


class CausalConv1d(nn.Module):
    """Conv1d padded on the left by (effective kernel - stride) and on the right just enough that the
    last window is complete, so N inputs give ceil(N / stride) outputs."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, dilation: int = 1,
                 bias: bool = True, pad_mode: str = "constant"):
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, stride, dilation=dilation, bias=bias)
        self.stride = stride
        self.effective_kernel = (kernel_size - 1) * dilation + 1
        self.pad_mode = pad_mode

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, C, N); lengths (B,) valid samples per row when rows are padded (None: all valid)."""
        if lengths is not None and self.stride > 1:
            x = self._as_if_alone(x, lengths)
        length = x.shape[-1]
        left = self.effective_kernel - self.stride
        frames = math.ceil((length - self.effective_kernel + left) / self.stride + 1) - 1
        right = frames * self.stride + self.effective_kernel - left - length
        return self.conv(F.pad(x, (left, right), mode=self.pad_mode))

    def _as_if_alone(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Replace what lies past each row's end by this conv's own right padding of that row."""
        beyond = torch.arange(x.shape[-1], device=x.device) >= lengths[:, None]
        if self.pad_mode == "replicate":
            last = x.gather(2, (lengths - 1).clamp(min=0).view(-1, 1, 1).expand(-1, x.shape[1], 1))
            return torch.where(beyond[:, None], last, x)
        return x.masked_fill(beyond[:, None], 0.0)

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return torch.div(lengths + self.stride - 1, self.stride, rounding_mode="floor")


class ResnetBlock(nn.Module):
    """x + Conv1x1(ELU(Conv_k(ELU(x)))), halving channels inside."""

    def __init__(self, channels: int, hidden: int, kernel_size: int):
        super().__init__()
        self.block = nn.ModuleList([nn.ELU(), CausalConv1d(channels, hidden, kernel_size),
                                    nn.ELU(), CausalConv1d(hidden, channels, 1)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for layer in self.block:
            h = layer(h)
        return x + h


class SeanetEncoder(nn.Module):
    """Conv → [ResnetBlock → ELU → strided conv doubling channels] per ratio → ELU → Conv to hidden_size."""

    def __init__(self, config: CodecEncoderConfig):
        super().__init__()
        channels = config.num_filters
        layers: list[nn.Module] = [CausalConv1d(1, channels, config.kernel_size)]
        for ratio in config.downsampling_ratios:
            layers += [ResnetBlock(channels, channels // config.compress, config.residual_kernel_size), nn.ELU(),
                       CausalConv1d(channels, channels * 2, kernel_size=2 * ratio, stride=ratio)]
            channels *= 2
        layers += [nn.ELU(), CausalConv1d(channels, config.hidden_size, config.last_kernel_size)]
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        for layer in self.layers:
            if isinstance(layer, CausalConv1d):
                x = layer(x, lengths)
                lengths = None if lengths is None else layer.output_lengths(lengths)
            else:
                x = layer(x)
        return x, lengths


class LayerScale(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x


class SelfAttention(nn.Module):
    """Multi-head causal self-attention with RoPE, no biases."""

    def __init__(self, hidden_size: int, num_heads: int, head_dim: int):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, head_dim
        self.q_proj = nn.Linear(hidden_size, num_heads * head_dim, bias=False)
        self.k_proj = nn.Linear(hidden_size, num_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(hidden_size, num_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(num_heads * head_dim, hidden_size, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        q, k, v = (proj(x).view(batch, length, -1, self.head_dim).transpose(1, 2)
                   for proj in (self.q_proj, self.k_proj, self.v_proj))
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.head_dim ** -0.5)
        return self.o_proj(out.transpose(1, 2).reshape(batch, length, -1))


class MLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.fc2 = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class TransformerLayer(nn.Module):
    """Pre-LayerNorm attention and GELU MLP, each branch scaled by a learnt LayerScale."""

    def __init__(self, config: CodecEncoderConfig):
        super().__init__()
        self.input_layernorm = nn.LayerNorm(config.hidden_size, eps=config.norm_eps)
        self.self_attn = SelfAttention(config.hidden_size, config.num_heads, config.head_dim)
        self.self_attn_layer_scale = LayerScale(config.hidden_size)
        self.post_attention_layernorm = nn.LayerNorm(config.hidden_size, eps=config.norm_eps)
        self.mlp = MLP(config.hidden_size, config.intermediate_size)
        self.mlp_layer_scale = LayerScale(config.hidden_size)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn_layer_scale(self.self_attn(self.input_layernorm(x), cos, sin))
        return x + self.mlp_layer_scale(self.mlp(self.post_attention_layernorm(x)))


class Transformer(nn.Module):
    def __init__(self, config: CodecEncoderConfig):
        super().__init__()
        self.layers = nn.ModuleList(TransformerLayer(config) for _ in range(config.num_layers))
        self.rotary = RotaryEmbedding(config.head_dim, config.rope_theta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, hidden), full causal attention over positions 0..T-1."""
        positions = torch.arange(x.shape[1], device=x.device).unsqueeze(0)
        cos, sin = self.rotary(positions, x.dtype)
        for layer in self.layers:
            x = layer(x, cos, sin)
        return x


class Codebook(nn.Module):
    """Centroids stored as running sums: centroid = embed_sum / max(cluster_usage, 1e-5)."""

    def __init__(self, size: int, dim: int):
        super().__init__()
        self.register_buffer("embed_sum", torch.zeros(size, dim))
        self.register_buffer("cluster_usage", torch.ones(size))

    def centroids(self) -> torch.Tensor:
        return self.embed_sum / self.cluster_usage.clamp(min=1e-5)[:, None]


class CodebookLayer(nn.Module):
    """One RVQ stage; the wrapper keeps the checkpoint's `layers.j.codebook.*` names."""

    def __init__(self, size: int, dim: int):
        super().__init__()
        self.codebook = Codebook(size, dim)


class ResidualVectorQuantizer(nn.Module):
    """Project to the codebook dimension, then per layer: nearest centroid (fp32 L2), subtract it."""

    def __init__(self, config: CodecEncoderConfig, num_layers: int):
        super().__init__()
        self.input_proj = nn.Conv1d(config.hidden_size, config.codebook_dim, 1, bias=False)
        self.layers = nn.ModuleList(CodebookLayer(config.codebook_size, config.codebook_dim)
                                    for _ in range(num_layers))

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Codes (layers, B, T) of embeddings (B, hidden, T)."""
        residual = self.input_proj(embeddings).transpose(1, 2)
        batch, frames, dim = residual.shape
        residual = residual.reshape(-1, dim)
        codes = []
        for layer in self.layers:
            centroids = layer.codebook.centroids()
            index = torch.cdist(residual[None].float(), centroids[None].float(), p=2)[0].argmin(dim=-1)
            residual = residual - F.embedding(index, centroids)
            codes.append(index.view(batch, frames))
        return torch.stack(codes)


class SplitResidualVectorQuantizer(nn.Module):
    def __init__(self, config: CodecEncoderConfig):
        super().__init__()
        semantic = config.num_semantic_quantizers
        self.semantic_residual_vector_quantizer = ResidualVectorQuantizer(config, semantic)
        self.acoustic_residual_vector_quantizer = ResidualVectorQuantizer(config, config.valid_quantizers - semantic)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Codes (B, valid_quantizers, T): the semantic codebooks first, then the acoustic ones."""
        codes = torch.cat([self.semantic_residual_vector_quantizer(embeddings),
                           self.acoustic_residual_vector_quantizer(embeddings)])
        return codes.transpose(0, 1)


class CodecEncoder(nn.Module):
    def __init__(self, config: CodecEncoderConfig):
        super().__init__()
        self.config = config
        self.encoder = SeanetEncoder(config)
        self.encoder_transformer = Transformer(config)
        self.downsample = CausalConv1d(config.hidden_size, config.hidden_size, kernel_size=4, stride=2, bias=False,
                                       pad_mode="replicate")
        self.quantizer = SplitResidualVectorQuantizer(config)

    @torch.no_grad()
    def encode_batch(self, wav: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Codes (B, valid_quantizers, ceil(N / 1920)) of 24 kHz waveforms (B, N), right-padded to N.

        Frames past ceil(lengths[b] / 1920) are padding; `encode` trims them.
        """
        weight = self.downsample.conv.weight
        x = wav.to(device=weight.device, dtype=weight.dtype).unsqueeze(1)
        if lengths is not None:
            lengths = torch.as_tensor(lengths, device=weight.device).long()
            if bool((lengths == wav.shape[-1]).all()):
                lengths = None
        x, lengths = self.encoder(x, lengths)
        x = self.encoder_transformer(x.transpose(1, 2)).transpose(1, 2)
        return self.quantizer(self.downsample(x, lengths))

    def encode(self, wav: torch.Tensor, lengths=None) -> list[torch.Tensor]:
        """Codes (frames, valid_quantizers) int64 of each row of 24 kHz waveforms (B, N).

        lengths: valid samples per row of a zero-right-padded batch (None: every row is N long).
        Row b gets ceil(lengths[b] / 1920) frames, the same codes as encoding that row alone.
        """
        lengths = [wav.shape[-1]] * wav.shape[0] if lengths is None else [int(n) for n in lengths]
        codes = self.encode_batch(wav, lengths)
        return [row[:, :math.ceil(n / SAMPLES_PER_FRAME)].T for row, n in zip(codes, lengths)]


def load_codec_encoder(folder: str | Path, device: torch.device | str = "cpu",
                       dtype: torch.dtype = torch.float32) -> CodecEncoder:
    """The Mimi encoder of a speech-tokenizer folder (the checkpoint's `speech_tokenizer/`)."""
    folder = Path(folder)
    model = CodecEncoder(load_codec_config(folder).encoder)
    load_module(model, read_tensors(folder, "encoder."), f"{folder} (codec encoder)")
    return model.to(device=device, dtype=dtype).eval()
