"""The 12 Hz codec decoder: 16 codebooks × T frames → 24 kHz waveform (1920 samples per frame).

Parameter names are the checkpoint's `decoder.*` names without the prefix. `forward` decodes a whole
clip; `decode_chunk` continues a stream from a `CodecState` (conv input histories, the pre-transformer's
sliding-window keys/values and frame counter), and chunked decoding equals the one-pass decode.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..config import CodecDecoderConfig, load_codec_config
from ..kernels.layouts import to_layout
from ..weights import load_module, read_tensors
from .codec_layers import CausalConv1d, CausalConvTranspose1d, ConvHistories, ConvNeXtBlock, SnakeBeta, VocoderBlock
from .codec_transformer import PreTransformer, ring_size

__all__ = ["CodecDecoder", "CodecState", "load_codec_decoder"]


class Codebook(nn.Module):
    """EMA codebook as stored: entries are embedding_sum / max(cluster_usage, 1e-5)."""

    def __init__(self, size: int, dim: int):
        super().__init__()
        self.cluster_usage = nn.Parameter(torch.ones(size))
        self.embedding_sum = nn.Parameter(torch.zeros(size, dim))

    def entries(self) -> torch.Tensor:
        return self.embedding_sum.float() / self.cluster_usage.float().clamp(min=1e-5)[:, None]


class CodebookLayer(nn.Module):
    def __init__(self, size: int, dim: int):
        super().__init__()
        self._codebook = Codebook(size, dim)


class CodebookStack(nn.Module):
    def __init__(self, count: int, size: int, dim: int):
        super().__init__()
        self.layers = nn.ModuleList(CodebookLayer(size, dim) for _ in range(count))


class ResidualCodebooks(nn.Module):
    """Codebooks whose summed entries share one 1×1 output projection."""

    def __init__(self, count: int, size: int, dim: int, out_dim: int):
        super().__init__()
        self.vq = CodebookStack(count, size, dim)
        self.output_proj = nn.Conv1d(dim, out_dim, 1, bias=False)

    def projected_entries(self) -> list[torch.Tensor]:
        """Each codebook's entries after the output projection, (size, out_dim) fp32."""
        weight = self.output_proj.weight.float()[:, :, 0]
        return [layer._codebook.entries() @ weight.T for layer in self.vq.layers]


class SplitQuantizer(nn.Module):
    """Codebook 0 (semantic) and codebooks 1.. (acoustic) with separate output projections."""

    def __init__(self, cfg: CodecDecoderConfig):
        super().__init__()
        dim = cfg.codebook_dim // 2
        self.rvq_first = ResidualCodebooks(1, cfg.codebook_size, dim, cfg.codebook_dim)
        self.rvq_rest = ResidualCodebooks(cfg.num_quantizers - 1, cfg.codebook_size, dim, cfg.codebook_dim)

    def code_embeddings(self) -> torch.Tensor:
        """(num_quantizers, size, codebook_dim) fp32: the latent is the sum of one row per codebook."""
        return torch.stack(self.rvq_first.projected_entries() + self.rvq_rest.projected_entries())


@dataclass
class CodecState:
    """Decoder state of a number of streams; every tensor has the stream on dim 0 (keys/values: dim 1)."""

    histories: list[torch.Tensor]  # per conv with context: (streams, history, C_in) last input samples
    keys: torch.Tensor  # (layers, streams, kv_heads, ring, head_dim) rotated keys of the latest frames
    values: torch.Tensor
    positions: torch.Tensor  # (streams,) int64: frames decoded so far

    @property
    def streams(self) -> int:
        return self.positions.shape[0]

    def reset(self, row: int) -> None:
        """Start `row` as a fresh stream (the convolution histories in one multi-tensor launch)."""
        torch._foreach_zero_([history[row] for history in self.histories])
        # Masked ring entries still meet a zero attention weight: clear them, so NaNs cannot carry over.
        self.keys[:, row].zero_()
        self.values[:, row].zero_()
        self.positions[row].zero_()


class CodecDecoder(nn.Module):
    """Codes (B, 16, T) → waveform (B, 1, T·1920) in [-1, 1], as upstream Qwen3TTSTokenizerV2Decoder."""

    def __init__(self, cfg: CodecDecoderConfig):
        super().__init__()
        self.cfg = cfg
        self.quantizer = SplitQuantizer(cfg)
        self.pre_conv = CausalConv1d(cfg.codebook_dim, cfg.latent_dim, 3)
        self.pre_transformer = PreTransformer(cfg)
        self.upsample = nn.ModuleList(
            nn.ModuleList([CausalConvTranspose1d(cfg.latent_dim, cfg.latent_dim, f, f), ConvNeXtBlock(cfg.latent_dim)])
            for f in cfg.upsampling_ratios)
        dims = [cfg.decoder_dim // 2 ** i for i in range(len(cfg.upsample_rates) + 1)]
        self.decoder = nn.ModuleList([
            CausalConv1d(cfg.latent_dim, cfg.decoder_dim, 7),
            *(VocoderBlock(dims[i], dims[i + 1], rate) for i, rate in enumerate(cfg.upsample_rates)),
            SnakeBeta(dims[-1]),
            CausalConv1d(dims[-1], 1, 7),
        ])
        self.stateful = [m for m in self.modules() if isinstance(m, (CausalConv1d, CausalConvTranspose1d))
                         and m.history > 0]
        for index, layer in enumerate(self.stateful):
            layer.history_index = index
        self.register_buffer("code_embeddings", None, persistent=False)
        # (batch, frames) calls whose activations are channels-last: those a graph capture tunes
        self.channels_last_calls: set[tuple[int, int]] = set()

    def refresh_codebooks(self) -> None:
        """Rebuild the projected codebook table from the codebook weights; call after changing them.

        Computed in fp32, then stored in the parameters' dtype: one rounding per entry, where upstream
        in bf16 divides and projects in bf16 on every call. CUDA graphs captured before keep the old table.
        """
        with torch.no_grad():
            dtype = self.pre_conv.conv.weight.dtype
            self.code_embeddings = self.quantizer.code_embeddings().to(dtype)

    def new_state(self, batch: int) -> CodecState:
        """Zero state for `batch` fresh streams, on the decoder's device and dtype."""
        weight = self.pre_conv.conv.weight
        like = dict(device=weight.device, dtype=weight.dtype)
        histories = [torch.zeros(batch, layer.history, layer.conv.in_channels, **like) for layer in self.stateful]
        cfg = self.cfg
        kv_shape = (cfg.num_layers, batch, cfg.num_kv_heads, ring_size(cfg), cfg.head_dim)
        return CodecState(histories, torch.zeros(kv_shape, **like), torch.zeros(kv_shape, **like),
                          torch.zeros(batch, dtype=torch.long, device=weight.device))

    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, Q, T) codes → (B, codebook_dim, T) latent (summed in fp32)."""
        if self.code_embeddings is None:
            self.refresh_codebooks()
        table = self.code_embeddings
        quantizers, size, dim = table.shape
        offsets = torch.arange(quantizers, device=codes.device).view(1, -1, 1) * size
        rows = nn.functional.embedding(codes + offsets, table.view(quantizers * size, dim))
        return rows.float().sum(dim=1).to(table.dtype).transpose(1, 2)

    def decode_chunk(self, codes: torch.Tensor, state: CodecState,
                     rows: torch.Tensor | None = None) -> tuple[torch.Tensor, CodecState]:
        """Next T frames (B, 16, T) of B streams → (B, T·1920) samples; `state` is updated in place and returned.

        rows (B,) int64 picks the streams' rows of a larger state (distinct); by default rows 0..B-1.
        """
        batch, quantizers, frames = codes.shape
        if quantizers != self.cfg.num_quantizers:
            raise ValueError(f"expected codes of shape (B, {self.cfg.num_quantizers}, T), got {tuple(codes.shape)}")
        if rows is None:
            rows = torch.arange(batch, device=codes.device)
        histories = ConvHistories(state.histories, rows)
        positions = state.positions.index_select(0, rows)
        channels_last = (batch, frames) in self.channels_last_calls
        x = self.pre_conv(to_layout(self.embed(codes), channels_last), histories).transpose(1, 2)
        x = self.pre_transformer(x, state.keys, state.values, rows, positions).transpose(1, 2)
        x = to_layout(x, channels_last)
        state.positions.index_copy_(0, rows, positions + frames)
        for layer in (*(m for pair in self.upsample for m in pair), *self.decoder[:-2]):
            x = layer(x, histories)
        final_snake, output_conv = self.decoder[-2:]
        x = output_conv(x, histories, activation=final_snake)
        return x.clamp(min=-1, max=1)[:, 0], state

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """Whole clips: (B, 16, T) → (B, 1, T·1920)."""
        wave, _ = self.decode_chunk(codes, self.new_state(codes.shape[0]))
        return wave.unsqueeze(1)


def load_codec_decoder(folder: str | Path, device: torch.device | str, dtype: torch.dtype) -> CodecDecoder:
    """The decoder of a `speech_tokenizer` folder (config.json + model.safetensors), ready for inference."""
    folder = Path(folder)
    decoder = CodecDecoder(load_codec_config(folder).decoder)
    load_module(decoder, read_tensors(folder, "decoder."), f"{folder}/model.safetensors")
    decoder.refresh_codebooks()  # in fp32, before the cast
    return decoder.to(device=device, dtype=dtype).eval()
