"""The Qwen3-style decoder stack shared by the talker and the code predictor."""
from __future__ import annotations

import torch
from torch import nn

from ..config import DecoderLayerConfig
from .attention import Attention, CacheView
from .mlp import SwiGLU
from .norm import RMSNorm
from .rope import RotaryEmbedding


class DecoderLayer(nn.Module):
    def __init__(self, cfg: DecoderLayerConfig):
        super().__init__()
        self.self_attn = Attention(cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.rms_norm_eps)
        self.mlp = SwiGLU(cfg.hidden_size, cfg.intermediate_size)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, cos, sin, view: CacheView, layer: int):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, view, layer)
        return x + self.mlp(self.post_attention_layernorm(x))


class DecoderStack(nn.Module):
    """Layers + final norm. Input embeddings in, normed hidden states out."""

    def __init__(self, cfg: DecoderLayerConfig):
        super().__init__()
        self.cfg = cfg
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rotary = RotaryEmbedding(cfg.head_dim, cfg.rope_theta)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, view: CacheView) -> torch.Tensor:
        cos, sin = self.rotary(positions, x.dtype)
        for index, layer in enumerate(self.layers):
            x = layer(x, cos, sin, view, index)
        return self.norm(x)
