"""Decode attention: one query position per row over that row's cached keys — Triton and reference.

Row b attends to cache positions 0..positions[b] of slot b (or of slots[b]: a prompt's tokens are rows
of one slot, each seeing the keys up to its own position, which is causal attention). Grouped-query
heads share one pass over their KV head; the softmax runs online in fp32 (flash-decoding without the
split), over only the blocks the row's length covers.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

import functools


@functools.cache
def _decode_attention_kernel():
    """Compiled lazily, so that the Triton interpreter setting is read when it is first used."""
    import triton
    import triton.language as tl

    @triton.jit
    def decode_attention_kernel(q_ptr, k_cache_ptr, v_cache_ptr, positions_ptr, slots_ptr, out_ptr, scale,
               cache_slot_stride, cache_head_stride, cache_pos_stride,
               NUM_HEADS: tl.constexpr, NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
               BLOCK_N: tl.constexpr, HAS_SLOTS: tl.constexpr):
        row = tl.program_id(0)
        kv_head = tl.program_id(1)
        GROUP: tl.constexpr = NUM_HEADS // NUM_KV_HEADS
        dims = tl.arange(0, HEAD_DIM)
        group = tl.arange(0, GROUP)
        q_rows = (row * NUM_HEADS + kv_head * GROUP + group)[:, None] * HEAD_DIM + dims[None, :]
        q = tl.load(q_ptr + q_rows).to(tl.float32) * scale  # (GROUP, D)
        length = tl.load(positions_ptr + row) + 1
        if HAS_SLOTS:
            slot = tl.load(slots_ptr + row).to(tl.int64)
        else:
            slot = row.to(tl.int64)  # slot * stride can pass 2**31 in a large cache
        base = slot * cache_slot_stride + kv_head * cache_head_stride
        m = tl.full((GROUP,), float("-inf"), tl.float32)
        denom = tl.zeros((GROUP,), tl.float32)
        acc = tl.zeros((GROUP, HEAD_DIM), tl.float32)
        block_start = 0
        while block_start < length:
            keys = block_start + tl.arange(0, BLOCK_N)
            valid = keys < length
            offsets = base + keys[:, None] * cache_pos_stride + dims[None, :]
            k = tl.load(k_cache_ptr + offsets, mask=valid[:, None], other=0.0).to(tl.float32)
            v = tl.load(v_cache_ptr + offsets, mask=valid[:, None], other=0.0).to(tl.float32)
            scores = tl.sum(q[:, None, :] * k[None, :, :], axis=2)  # (GROUP, BLOCK_N)
            scores = tl.where(valid[None, :], scores, float("-inf"))
            m_new = tl.maximum(m, tl.max(scores, axis=1))
            correction = tl.exp(m - m_new)
            p = tl.exp(scores - m_new[:, None])
            denom = denom * correction + tl.sum(p, axis=1)
            acc = acc * correction[:, None] + tl.sum(p[:, :, None] * v[None, :, :], axis=1)
            m = m_new
            block_start += BLOCK_N
        out = acc / denom[:, None]
        tl.store(out_ptr + q_rows, out.to(out_ptr.dtype.element_ty))


    return decode_attention_kernel


def decode_attention_reference(q, k_cache, v_cache, positions, slots=None):
    """q (B, H, D); caches (slots, K, max_len, D); row b sees slot b's (slots[b]'s) positions 0..positions[b]."""
    batch = q.shape[0]
    length = int(positions.max()) + 1
    slots = torch.arange(batch, device=q.device) if slots is None else slots
    keys, values = k_cache[slots, :, :length], v_cache[slots, :, :length]
    mask = torch.arange(length, device=q.device).view(1, 1, 1, -1) <= positions.view(-1, 1, 1, 1)
    out = F.scaled_dot_product_attention(q.unsqueeze(2), keys, values, attn_mask=mask,
                                         enable_gqa=q.shape[1] != k_cache.shape[1])
    return out.squeeze(2)


def decode_attention_fused(q, k_cache, v_cache, positions, slots=None, block_n: int = 64):
    """q (B, H, D); slots: (B,) cache slot of each row, or None for slot b = row b."""
    batch, num_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[1]
    out = torch.empty_like(q)
    positions = positions.contiguous()
    _decode_attention_kernel()[(batch, num_kv_heads)](
        q.contiguous(), k_cache, v_cache, positions, positions if slots is None else slots.contiguous(), out,
        head_dim ** -0.5, k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        NUM_HEADS=num_heads, NUM_KV_HEADS=num_kv_heads, HEAD_DIM=head_dim, BLOCK_N=block_n,
        HAS_SLOTS=slots is not None)
    return out
