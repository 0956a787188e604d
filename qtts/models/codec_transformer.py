"""The codec decoder's pre-transformer: sliding-window causal attention over a per-stream ring of keys.

A query at position i sees keys i-window < j <= i. Between chunks each stream keeps the rotated keys
and values of its last window-1 frames in a ring (frame p at index p % ring) plus the number of
frames it has seen; RoPE positions continue from there, so chunked decoding equals a one-pass decode.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..config import CodecDecoderConfig
from ..layers.mlp import SwiGLU
from ..layers.norm import RMSNorm
from ..layers.rope import RotaryEmbedding, apply_rope
from .codec_encoder import LayerScale


def ring_size(cfg: CodecDecoderConfig) -> int:
    """Past frames a new query can still see."""
    return max(cfg.sliding_window - 1, 1)


def window_mask(positions: torch.Tensor, frames: int, ring: int, window: int) -> torch.Tensor:
    """(B, 1, frames, ring + frames) bool: which ring and new keys each new query may see.

    positions (B,) = frames seen before this chunk; ring index j holds the latest past frame
    p < positions with p % ring == j (none when negative).
    """
    start = positions.view(-1, 1)
    query = start + torch.arange(frames, device=positions.device)
    ring_index = torch.arange(ring, device=positions.device)
    ring_frame = start - 1 - torch.remainder(start - 1 - ring_index, ring)
    key = torch.cat([ring_frame, query], dim=1)
    exists = torch.cat([ring_frame >= 0, torch.ones_like(query, dtype=torch.bool)], dim=1)
    key, query = key.unsqueeze(1), query.unsqueeze(2)
    visible = exists.unsqueeze(1) & (key <= query) & (key > query - window)
    return visible.unsqueeze(1)


class RingView:
    """Rows `rows` (B,) of the ring buffers keys/values (layers, streams, kv_heads, ring, head_dim).

    write_index (B, kept): ring index of each of the last `kept` new frames of the chunk.
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, rows: torch.Tensor, write_index: torch.Tensor):
        self.keys, self.values, self.rows, self.write_index = keys, values, rows, write_index

    def read(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.keys[layer].index_select(0, self.rows), self.values[layer].index_select(0, self.rows)

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """k, v (B, kv_heads, T, D): the last `kept` frames go to (row, :, write_index)."""
        kept = self.write_index.shape[1]
        where = (self.rows.view(-1, 1), slice(None), self.write_index)
        self.keys[layer][where] = k[:, :, k.shape[2] - kept:].transpose(1, 2)
        self.values[layer][where] = v[:, :, v.shape[2] - kept:].transpose(1, 2)


class WindowAttention(nn.Module):
    def __init__(self, cfg: CodecDecoderConfig):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, cfg.num_heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.hidden_size, cfg.num_kv_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.hidden_size, cfg.num_kv_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.num_heads * cfg.head_dim, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor,
                ring: RingView, layer: int) -> torch.Tensor:
        """x (B, T, hidden): attends over the ring rows and the new frames, then writes the newest frames in."""
        batch, frames, _ = x.shape
        q = self.q_proj(x).view(batch, frames, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(batch, frames, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, frames, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        past_k, past_v = ring.read(layer)
        out = F.scaled_dot_product_attention(q, torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2),
                                             attn_mask=mask, enable_gqa=self.num_heads != self.num_kv_heads)
        ring.write(layer, k, v)
        return self.o_proj(out.transpose(1, 2).reshape(batch, frames, -1))


class PreTransformerLayer(nn.Module):
    def __init__(self, cfg: CodecDecoderConfig):
        super().__init__()
        self.self_attn = WindowAttention(cfg)
        self.mlp = SwiGLU(cfg.hidden_size, cfg.intermediate_size)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn_layer_scale = LayerScale(cfg.hidden_size)
        self.mlp_layer_scale = LayerScale(cfg.hidden_size)

    def forward(self, x, cos, sin, mask, ring: RingView, layer: int):
        attn = self.self_attn(self.input_layernorm(x), cos, sin, mask, ring, layer)
        x = x + self.self_attn_layer_scale(attn)
        return x + self.mlp_layer_scale(self.mlp(self.post_attention_layernorm(x)))


class PreTransformer(nn.Module):
    """latent → hidden, sliding-window layers, RMSNorm, hidden → latent."""

    def __init__(self, cfg: CodecDecoderConfig):
        super().__init__()
        self.window, self.ring = cfg.sliding_window, ring_size(cfg)
        self.input_proj = nn.Linear(cfg.latent_dim, cfg.hidden_size)
        self.layers = nn.ModuleList(PreTransformerLayer(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.output_proj = nn.Linear(cfg.hidden_size, cfg.latent_dim)
        self.rotary = RotaryEmbedding(cfg.head_dim, cfg.rope_theta)

    def forward(self, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, rows: torch.Tensor,
                positions: torch.Tensor) -> torch.Tensor:
        """x (B, T, latent) of streams `rows` (B,) whose frame counts are `positions` (B,).

        keys/values (layers, streams, kv_heads, ring, D): the rows' rings, updated in place.
        """
        frames = x.shape[1]
        frame = positions.view(-1, 1) + torch.arange(frames, device=x.device)
        cos, sin = self.rotary(frame, x.dtype)
        mask = window_mask(positions, frames, self.ring, self.window)
        kept = min(frames, self.ring)
        ring = RingView(keys, values, rows, torch.remainder(frame[:, frames - kept:], self.ring))
        x = self.input_proj(x)
        for index, layer in enumerate(self.layers):
            x = layer(x, cos, sin, mask, ring, index)
        return self.output_proj(self.norm(x))
