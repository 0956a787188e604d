"""The Qwen3-style decoder stack shared by the talker and the code predictor."""
from __future__ import annotations

import torch
from torch import nn

from ..config import DecoderLayerConfig
from .attention import Attention, CacheView
from .mlp import SwiGLU
from .norm import RMSNorm
from .rope import RotaryEmbedding

# Fused calls run each token as a row of the decode kernels (its own pass over its slot's keys);
# past this many tokens in one call, SDPA over the whole slot does less work.
MAX_TOKEN_ROWS = 1024


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

    def forward_fused(self, update, residual, cos, sin, view: CacheView, layer: int, single_token: bool,
                      gemv: bool = False):
        """(update, residual) → (update, residual): each layer's output is added in the next norm.

        single_token: one token per row, in slot view.rows_slots[b] (the decode attention kernels);
        otherwise several tokens per row (long prompts, through SDPA). gemv: one or two rows run
        their projections as fused GEMVs.
        """
        from ..kernels.gemv import gemv_fused, skinny
        from ..kernels.norm import rms_norm_fused

        attn_norm, mlp_norm = self.input_layernorm, self.post_attention_layernorm
        if gemv and single_token and skinny(update):  # each norm rides in the projection after it
            qkv, residual = gemv_fused(update, self.self_attn.qkv_weight, norm_weight=attn_norm.weight,
                                       eps=attn_norm.eps, residual=residual)
            attn = self.self_attn.attend_decode_fused(qkv, cos, sin, view, layer, gemv=True)
            hidden, residual = gemv_fused(attn, self.mlp.gate_up_weight, norm_weight=mlp_norm.weight,
                                          eps=mlp_norm.eps, residual=residual, silu_mul=True)
            return gemv_fused(hidden, self.mlp.down_proj.weight)[0], residual
        attention = self.self_attn.forward_decode_fused if single_token else self.self_attn.forward_rows_fused
        normed, residual = rms_norm_fused(update, attn_norm.weight, attn_norm.eps, residual)
        attn = attention(normed, cos, sin, view, layer)
        normed, residual = rms_norm_fused(attn, mlp_norm.weight, mlp_norm.eps, residual)
        return self.mlp.forward_fused(normed), residual


class DecoderStack(nn.Module):
    """Layers + final norm. Input embeddings in, normed hidden states out."""

    def __init__(self, cfg: DecoderLayerConfig):
        super().__init__()
        self.cfg = cfg
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rotary = RotaryEmbedding(cfg.head_dim, cfg.rope_theta)

        self.fused = self.gemv = False

    def fuse(self, gemv: bool = False) -> None:
        """Run every call through the fused Triton kernels (CUDA only); gemv: calls of one or two rows
        run their projections as fused GEMVs (faster than cuBLAS for the small matrices of the code
        predictor, slower for the talker's on an H200)."""
        for layer in self.layers:
            layer.self_attn.fuse_projections()
            layer.mlp.fuse_projections()
        self.fused, self.gemv = True, gemv

    def forward(self, x: torch.Tensor, positions: torch.Tensor, view: CacheView) -> torch.Tensor:
        cos, sin = self.rotary(positions, x.dtype)
        if self.fused:
            return self._forward_fused(x, cos, sin, view)
        for index, layer in enumerate(self.layers):
            x = layer(x, cos, sin, view, index)
        return self.norm(x)

    def _forward_fused(self, x, cos, sin, view: CacheView) -> torch.Tensor:
        from ..kernels.norm import rms_norm_fused

        batch, seq, hidden = x.shape
        # token rows attend causally, so a call with a mask of its own goes through SDPA
        single_token = batch * seq <= MAX_TOKEN_ROWS and view.is_causal
        update, residual = x, None
        if single_token:
            view = view.token_rows()
            update, cos, sin = x.reshape(-1, hidden), cos.reshape(batch * seq, -1), sin.reshape(batch * seq, -1)
        for index, layer in enumerate(self.layers):
            update, residual = layer.forward_fused(update, residual, cos, sin, view, index, single_token, self.gemv)
        normed, _ = rms_norm_fused(update, self.norm.weight, self.norm.eps, residual)
        return normed.view(batch, seq, hidden)
