"""Grouped-query attention with q/k RMSNorm over a preallocated KV cache."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..kernels import kv_quant
from ..kernels.fp8 import Fp8Weight
from ..kernels.gemv import linear
from .linear import stack_projections
from .norm import RMSNorm
from .rope import apply_rope


class KVCache:
    """Static K/V buffers for every layer: (slots, kv_heads, max_len, head_dim) each, views of one `storage`.

    Each slot holds one sequence, left-aligned (position p is stored at index p), so a
    decode step writes one index per row and attends over a prefix of the buffer.
    quantization "int8" or "int4" stores each vector as a row of bytes with its scale
    (kernels/kv_quant.py): (slots, kv_heads, max_len, row_bytes) int8 / uint8 buffers.
    """

    def __init__(self, num_layers: int, slots: int, kv_heads: int, max_len: int, head_dim: int,
                 device: torch.device | str, dtype: torch.dtype, quantization: str | None = None):
        width, storage = head_dim, dtype
        if quantization is not None:
            width, storage = kv_quant.row_bytes(quantization, head_dim), kv_quant.storage_dtype(quantization)
        # one buffer (K and V, layers, slots, ...), so moving or restoring a slot's positions is one copy
        self.storage = torch.zeros((2, num_layers, slots, kv_heads, max_len, width), device=device, dtype=storage)
        self.keys = [self.storage[0, layer] for layer in range(num_layers)]
        self.values = [self.storage[1, layer] for layer in range(num_layers)]
        self.max_len = max_len
        self.slots = slots
        self.dtype, self.quantization = dtype, quantization
        # int4 only: the rotation and codebook its kernels read
        self.rotation = kv_quant.rotation_matrix(head_dim, device) if quantization == "int4" else None
        self.codebook = kv_quant.codebook(device) if quantization == "int4" else None

    def store(self, x: torch.Tensor) -> torch.Tensor:
        """Vectors (..., head_dim) in the model dtype as the buffers store them."""
        return x if self.quantization is None else kv_quant.quantize(x, self.quantization, self.rotation)

    def load(self, stored: torch.Tensor) -> torch.Tensor:
        """Stored vectors back as (..., head_dim) in the model dtype."""
        return stored if self.quantization is None else kv_quant.dequantize(stored, self.rotation).to(self.dtype)

    def positions(self, slot: int, length: int) -> torch.Tensor:
        """K and V of every layer at positions 0..length-1 of `slot`: a view (2, layers, kv_heads, length, width)."""
        return self.storage[:, :, slot, :, :length]

    def copy_slot(self, source: int, target: int, length: int) -> None:
        """Move one sequence's cache between slots (used to keep active slots compact)."""
        self.positions(target, length).copy_(self.positions(source, length))


class CacheView:
    """Where one forward call reads and writes the cache.

    rows_slots: (B,) slot of each row, or None when rows are slots 0..B-1.
    write_positions: (B, S) cache index of each new token.
    attend_length: how many cache positions the call attends over (>= every position + 1).
    key_mask: (B, 1, S, attend_length) bool, True where a query may see a key; by default causal
    (each query sees every key at an index <= its position), built when first read, since the
    fused kernels never read it.
    """

    def __init__(self, cache: KVCache, write_positions: torch.Tensor, attend_length: int,
                 key_mask: torch.Tensor | None = None, rows_slots: torch.Tensor | None = None):
        self.cache = cache
        self.write_positions = write_positions
        self.attend_length = attend_length
        self._key_mask = key_mask
        self._causal = key_mask is None
        self.rows_slots = rows_slots

    @staticmethod
    def causal(cache: KVCache, positions: torch.Tensor, attend_length: int,
               rows_slots: torch.Tensor | None = None) -> "CacheView":
        """Each row's queries at `positions` (B, S) see every key at an index <= their position."""
        return CacheView(cache, positions, attend_length, rows_slots=rows_slots)

    @property
    def is_causal(self) -> bool:
        """Whether queries see exactly the keys up to their position (no mask was given)."""
        return self._causal

    @property
    def key_mask(self) -> torch.Tensor:
        if self._key_mask is None:
            key_index = torch.arange(self.attend_length, device=self.write_positions.device)
            self._key_mask = key_index.view(1, 1, 1, -1) <= self.write_positions.unsqueeze(1).unsqueeze(-1)
        return self._key_mask

    def token_rows(self) -> "CacheView":
        """The same call with each token as a row of its own (B*S rows of one token): row i of it is
        token i of the flattened (B, S), in its row's slot, so each sees the keys up to its position."""
        batch, seq = self.write_positions.shape
        if seq == 1 and self.rows_slots is None:
            return self
        device = self.write_positions.device
        slots = self.rows_slots.to(device) if self.rows_slots is not None else torch.arange(batch, device=device)
        return CacheView(self.cache, self.write_positions.reshape(-1, 1), self.attend_length,
                         rows_slots=slots.repeat_interleave(seq) if seq > 1 else slots)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, kv_heads, S, D) and return the attended keys and values."""
        cache = self.cache
        keys, values = cache.keys[layer], cache.values[layer]
        batch = k.shape[0]
        slots = self.rows_slots if self.rows_slots is not None else torch.arange(batch, device=k.device)
        slot_index = slots.view(-1, 1).expand_as(self.write_positions)
        with torch.no_grad():  # the cache is state, not part of any graph (its layers are views of one buffer)
            keys[slot_index, :, self.write_positions] = cache.store(k.transpose(1, 2))
            values[slot_index, :, self.write_positions] = cache.store(v.transpose(1, 2))
        attended = slice(0, batch) if self.rows_slots is None else slots
        return (cache.load(keys[attended, :, : self.attend_length]),
                cache.load(values[attended, :, : self.attend_length]))


class Attention(nn.Module):
    def __init__(self, hidden: int, num_heads: int, num_kv_heads: int, head_dim: int, eps: float):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.q_proj = nn.Linear(hidden, num_heads * head_dim, bias=False)
        self.k_proj = nn.Linear(hidden, num_kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(hidden, num_kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(num_heads * head_dim, hidden, bias=False)
        self.q_norm = RMSNorm(head_dim, eps)
        self.k_norm = RMSNorm(head_dim, eps)
        self.qkv_weight: torch.Tensor | Fp8Weight | None = None

    def fuse_projections(self) -> None:
        """One q|k|v weight for a single GEMM; the three projections become views into it."""
        self.qkv_weight = stack_projections((self.q_proj, self.k_proj, self.v_proj))

    def forward_decode_fused(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, view: CacheView,
                             layer: int) -> torch.Tensor:
        """One token per row (x: (B, H)) in slot view.rows_slots[b] (or b); two kernels plus two GEMMs."""
        return self.attend_decode_fused(linear(x, self.qkv_weight, gemv=False), cos, sin, view, layer)

    def attend_decode_fused(self, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, view: CacheView,
                            layer: int, gemv: bool = False) -> torch.Tensor:
        """forward_decode_fused from the q|k|v projection on: q/k norm, rotation, cache write, attention,
        o_proj (a fused GEMV with gemv, for one or two rows)."""
        from ..kernels.attention import decode_attention_fused
        from ..kernels.rope import qk_norm_rope_fused

        positions = view.write_positions.view(-1)
        cache = view.cache
        tables = dict(rotation=cache.rotation, codebook=cache.codebook)  # int4 caches only
        q = qk_norm_rope_fused(qkv, self.q_norm.weight, self.k_norm.weight, cos, sin, positions,
                               cache.keys[layer], cache.values[layer], self.q_norm.eps,
                               self.num_heads, self.num_kv_heads, view.rows_slots, **tables)
        # blocks no longer than the call attends: the code predictor's 16 positions fill a block of 16,
        # and the (group, block, head_dim) products stay in registers
        block_n = min(64, max(16, 1 << (view.attend_length - 1).bit_length()))
        out = decode_attention_fused(q, cache.keys[layer], cache.values[layer], positions,
                                     view.rows_slots, block_n=block_n, **tables)
        return linear(out.reshape(qkv.shape[0], -1), self.o_proj.weight, gemv=gemv)

    def forward_rows_fused(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, view: CacheView,
                           layer: int) -> torch.Tensor:
        """forward with one q|k|v GEMM and the q/k norms as single kernels (x: (B, S, H))."""
        from ..kernels.norm import rms_norm_fused

        batch, seq, _ = x.shape
        q, k, v = linear(x, self.qkv_weight, gemv=False).split(
            [self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim, self.num_kv_heads * self.head_dim],
            dim=-1)
        q = rms_norm_fused(q.reshape(batch, seq, self.num_heads, self.head_dim), self.q_norm.weight,
                           self.q_norm.eps)[0].transpose(1, 2)
        k = rms_norm_fused(k.reshape(batch, seq, self.num_kv_heads, self.head_dim), self.k_norm.weight,
                           self.k_norm.eps)[0].transpose(1, 2)
        v = v.reshape(batch, seq, self.num_kv_heads, self.head_dim).transpose(1, 2)
        return self._attend(q, k, v, cos, sin, view, layer)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, view: CacheView,
                layer: int) -> torch.Tensor:
        batch, seq, _ = x.shape
        q = self.q_norm(self.q_proj(x).view(batch, seq, self.num_heads, self.head_dim)).transpose(1, 2)
        k = self.k_norm(self.k_proj(x).view(batch, seq, self.num_kv_heads, self.head_dim)).transpose(1, 2)
        v = self.v_proj(x).view(batch, seq, self.num_kv_heads, self.head_dim).transpose(1, 2)
        return self._attend(q, k, v, cos, sin, view, layer)

    def _attend(self, q, k, v, cos, sin, view: CacheView, layer: int) -> torch.Tensor:
        """Rotate q, k (B, heads, S, D), store k, v in the cache, attend, project out."""
        batch, _, seq, _ = q.shape
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        keys, values = view.update(layer, k, v)
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=view.key_mask,
                                             enable_gqa=self.num_heads != self.num_kv_heads)
        return self.o_proj(out.transpose(1, 2).reshape(batch, seq, -1))
