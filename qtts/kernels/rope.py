"""q/k RMSNorm + rotary embedding + KV-cache write for one decode token — Triton and reference.

Input is the fused q|k|v projection of B rows at one position each; q comes back normed and
rotated, k (normed, rotated) and v go straight into row b's cache slot (or slots[b]) at positions[b].
Rounding mirrors the eager path (norm in fp32, each RoPE product rounded to the dtype).
"""
from __future__ import annotations

import torch

import functools


@functools.cache
def _qk_norm_rope_kernel():
    """Compiled lazily, so that the Triton interpreter setting is read when it is first used."""
    import triton
    import triton.language as tl

    @triton.jit
    def qk_norm_rope_kernel(qkv_ptr, q_weight_ptr, k_weight_ptr, cos_ptr, sin_ptr, positions_ptr, slots_ptr,
               q_out_ptr, k_cache_ptr, v_cache_ptr, eps,
               cache_slot_stride, cache_head_stride, cache_pos_stride,
               NUM_HEADS: tl.constexpr, NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
               HAS_SLOTS: tl.constexpr):
        row = tl.program_id(0)
        head = tl.program_id(1)
        HALF: tl.constexpr = HEAD_DIM // 2
        total: tl.constexpr = (NUM_HEADS + 2 * NUM_KV_HEADS) * HEAD_DIM
        lo = tl.arange(0, HALF)
        base = qkv_ptr + row * total + head * HEAD_DIM
        x1 = tl.load(base + lo)
        x2 = tl.load(base + HALF + lo)
        dtype = x1.dtype
        position = tl.load(positions_ptr + row)
        if HAS_SLOTS:
            slot = tl.load(slots_ptr + row).to(tl.int64)
        else:
            slot = row.to(tl.int64)  # slot * stride can pass 2**31 in a large cache
        if head >= NUM_HEADS + NUM_KV_HEADS:  # v: copied into the cache as is
            dst = v_cache_ptr + slot * cache_slot_stride + (head - NUM_HEADS - NUM_KV_HEADS) * cache_head_stride \
                + position * cache_pos_stride
            tl.store(dst + lo, x1)
            tl.store(dst + HALF + lo, x2)
        else:
            is_q = head < NUM_HEADS
            weight_ptr = q_weight_ptr if is_q else k_weight_ptr
            f1, f2 = x1.to(tl.float32), x2.to(tl.float32)
            inv = tl.rsqrt((tl.sum(f1 * f1, axis=0) + tl.sum(f2 * f2, axis=0)) / HEAD_DIM + eps)
            n1 = (f1 * inv).to(dtype).to(tl.float32) * tl.load(weight_ptr + lo).to(tl.float32)
            n2 = (f2 * inv).to(dtype).to(tl.float32) * tl.load(weight_ptr + HALF + lo).to(tl.float32)
            n1 = n1.to(dtype).to(tl.float32)
            n2 = n2.to(dtype).to(tl.float32)
            c1 = tl.load(cos_ptr + row * HEAD_DIM + lo).to(tl.float32)
            c2 = tl.load(cos_ptr + row * HEAD_DIM + HALF + lo).to(tl.float32)
            s1 = tl.load(sin_ptr + row * HEAD_DIM + lo).to(tl.float32)
            s2 = tl.load(sin_ptr + row * HEAD_DIM + HALF + lo).to(tl.float32)
            r1 = ((n1 * c1).to(dtype).to(tl.float32) + (-n2 * s1).to(dtype).to(tl.float32)).to(dtype)
            r2 = ((n2 * c2).to(dtype).to(tl.float32) + (n1 * s2).to(dtype).to(tl.float32)).to(dtype)
            if is_q:
                dst = q_out_ptr + (row * NUM_HEADS + head) * HEAD_DIM
            else:
                dst = k_cache_ptr + slot * cache_slot_stride + (head - NUM_HEADS) * cache_head_stride \
                    + position * cache_pos_stride
            tl.store(dst + lo, r1)
            tl.store(dst + HALF + lo, r2)


    return qk_norm_rope_kernel


def qk_norm_rope_reference(qkv, q_weight, k_weight, cos, sin, positions, k_cache, v_cache, eps,
                           num_heads, num_kv_heads, slots=None):
    """qkv (B, (H+2K)*D); cos/sin (B, D); caches (slots, K, max_len, D). Returns q (B, H, D)."""
    from ..layers.rope import rotate_half

    batch = qkv.shape[0]
    head_dim = q_weight.shape[0]
    q, k, v = qkv.view(batch, num_heads + 2 * num_kv_heads, head_dim).split(
        [num_heads, num_kv_heads, num_kv_heads], dim=1)

    def norm(x, weight):
        x32 = x.float()
        return weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)

    c, s = cos.unsqueeze(1), sin.unsqueeze(1)
    q = norm(q, q_weight)
    k = norm(k, k_weight)
    q = q * c + rotate_half(q) * s
    k = k * c + rotate_half(k) * s
    rows = torch.arange(batch, device=qkv.device) if slots is None else slots
    k_cache[rows, :, positions] = k
    v_cache[rows, :, positions] = v
    return q


def qk_norm_rope_fused(qkv, q_weight, k_weight, cos, sin, positions, k_cache, v_cache, eps,
                       num_heads, num_kv_heads, slots=None):
    """slots: (B,) cache slot of each row, or None for slot b = row b."""
    batch = qkv.shape[0]
    head_dim = q_weight.shape[0]
    q_out = torch.empty(batch, num_heads, head_dim, device=qkv.device, dtype=qkv.dtype)
    positions = positions.contiguous()
    _qk_norm_rope_kernel()[(batch, num_heads + 2 * num_kv_heads)](
        qkv.contiguous(), q_weight, k_weight, cos.contiguous(), sin.contiguous(), positions,
        positions if slots is None else slots.contiguous(),
        q_out, k_cache, v_cache, eps, k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        NUM_HEADS=num_heads, NUM_KV_HEADS=num_kv_heads, HEAD_DIM=head_dim, HAS_SLOTS=slots is not None)
    return q_out
