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

    def forward_fused(self, update, residual, cos, sin, view: CacheView, layer: int, single_token: bool):
        """(update, residual) → (update, residual): each layer's output is added in the next norm.

        single_token: one token per row, rows are slots 0..B-1 (the decode step's attention kernels);
        otherwise several tokens per row (prompts, the predictor's first step).
        """
        from ..kernels.norm import rms_norm_fused

        attention = self.self_attn.forward_decode_fused if single_token else self.self_attn.forward_rows_fused
        normed, residual = rms_norm_fused(update, self.input_layernorm.weight, self.input_layernorm.eps, residual)
        attn = attention(normed, cos, sin, view, layer)
        normed, residual = rms_norm_fused(attn, self.post_attention_layernorm.weight,
                                          self.post_attention_layernorm.eps, residual)
        return self.mlp.forward_fused(normed), residual


class DecoderStack(nn.Module):
    """Layers + final norm. Input embeddings in, normed hidden states out."""

    def __init__(self, cfg: DecoderLayerConfig):
        super().__init__()
        self.cfg = cfg
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rotary = RotaryEmbedding(cfg.head_dim, cfg.rope_theta)

        self.fused = False

    def fuse(self) -> None:
        """Run every call through the fused Triton kernels (CUDA only)."""
        for layer in self.layers:
            layer.self_attn.fuse_projections()
            layer.mlp.fuse_projections()
        self.fused = True

    def forward(self, x: torch.Tensor, positions: torch.Tensor, view: CacheView) -> torch.Tensor:
        cos, sin = self.rotary(positions, x.dtype)
        if self.fused:
            return self._forward_fused(x, cos, sin, view, single_token=x.shape[1] == 1 and view.rows_slots is None)
        for index, layer in enumerate(self.layers):
            x = layer(x, cos, sin, view, index)
        return self.norm(x)

    def _forward_fused(self, x, cos, sin, view: CacheView, single_token: bool) -> torch.Tensor:
        from ..kernels.norm import rms_norm_fused

        update, residual = x, None
        if single_token:
            update, cos, sin = x[:, 0], cos[:, 0], sin[:, 0]
        for index, layer in enumerate(self.layers):
            update, residual = layer.forward_fused(update, residual, cos, sin, view, index, single_token)
        normed, _ = rms_norm_fused(update, self.norm.weight, self.norm.eps, residual)
        return normed.unsqueeze(1) if single_token else normed
