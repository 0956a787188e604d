"""q/k RMSNorm + rotary embedding + KV-cache write for one decode token — Triton and reference.

Input is the fused q|k|v projection of B rows at one position each; q comes back normed and
rotated, k (normed, rotated) and v go straight into row b's cache slot (or slots[b]) at positions[b],
quantized when the cache stores int8 / int4 rows (kernels/kv_quant.py).
Rounding mirrors the eager path (norm in fp32, each RoPE product rounded to the dtype).
"""
from __future__ import annotations

import functools

import torch

from . import kv_quant


@functools.cache
def _qk_norm_rope_kernel():
    """Compiled lazily, so that the Triton interpreter setting is read when it is first used."""
    import triton
    import triton.language as tl

    @triton.jit
    def qk_norm_rope_kernel(qkv_ptr, q_weight_ptr, k_weight_ptr, cos_ptr, sin_ptr, positions_ptr, slots_ptr,
               q_out_ptr, k_cache_ptr, v_cache_ptr, rotation_ptr, codebook_ptr, eps,
               cache_slot_stride, cache_head_stride, cache_pos_stride,
               NUM_HEADS: tl.constexpr, NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
               HAS_SLOTS: tl.constexpr, KV_BITS: tl.constexpr):
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
        if head >= NUM_HEADS + NUM_KV_HEADS:  # v: stored as is
            y1, y2 = x1.to(tl.float32), x2.to(tl.float32)
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
            y1 = ((n1 * c1).to(dtype).to(tl.float32) + (-n2 * s1).to(dtype).to(tl.float32)).to(dtype).to(tl.float32)
            y2 = ((n2 * c2).to(dtype).to(tl.float32) + (n1 * s2).to(dtype).to(tl.float32)).to(dtype).to(tl.float32)
        if KV_BITS == 4:  # q, k and v all move to the rotated space: y <- R y
            rows_lo = lo[:, None] * HEAD_DIM
            rows_hi = (HALF + lo)[:, None] * HEAD_DIM
            r11 = tl.load(rotation_ptr + rows_lo + lo[None, :])
            r12 = tl.load(rotation_ptr + rows_lo + HALF + lo[None, :])
            r21 = tl.load(rotation_ptr + rows_hi + lo[None, :])
            r22 = tl.load(rotation_ptr + rows_hi + HALF + lo[None, :])
            y1, y2 = (tl.sum(r11 * y1[None, :], axis=1) + tl.sum(r12 * y2[None, :], axis=1),
                      tl.sum(r21 * y1[None, :], axis=1) + tl.sum(r22 * y2[None, :], axis=1))
        if head < NUM_HEADS:
            q_dst = q_out_ptr + (row * NUM_HEADS + head) * HEAD_DIM
            tl.store(q_dst + lo, y1.to(dtype))
            tl.store(q_dst + HALF + lo, y2.to(dtype))
        else:
            is_v = head >= NUM_HEADS + NUM_KV_HEADS
            kv_head = head - NUM_HEADS - NUM_KV_HEADS if is_v else head - NUM_HEADS
            cache_ptr = v_cache_ptr if is_v else k_cache_ptr
            dst = cache_ptr + slot * cache_slot_stride + kv_head * cache_head_stride + position * cache_pos_stride
            if KV_BITS == 16:
                tl.store(dst + lo, y1.to(dtype))
                tl.store(dst + HALF + lo, y2.to(dtype))
            elif KV_BITS == 8:  # symmetric int8, the fp32 scale after the coordinates
                absmax = tl.maximum(tl.max(tl.abs(y1), axis=0), tl.max(tl.abs(y2), axis=0))
                inverse = tl.where(absmax > 0, 127.0 / absmax, 0.0)
                q1 = tl.minimum(tl.maximum(tl.floor(y1 * inverse + 0.5), -127.0), 127.0)
                q2 = tl.minimum(tl.maximum(tl.floor(y2 * inverse + 0.5), -127.0), 127.0)
                tl.store(dst + lo, q1.to(tl.int8))
                tl.store(dst + HALF + lo, q2.to(tl.int8))
                tl.store((dst + HEAD_DIM).to(tl.pointer_type(tl.float32)), absmax / 127.0)
            else:  # Lloyd-Max indices of y / rms(y), two to a byte, then the least-squares scale
                rms = tl.sqrt((tl.sum(y1 * y1, axis=0) + tl.sum(y2 * y2, axis=0)) / HEAD_DIM)
                inverse = tl.where(rms > 0, 1.0 / rms, 0.0)
                u1, u2 = y1 * inverse, y2 * inverse
                index1 = tl.zeros((HALF,), tl.int32)
                index2 = tl.zeros((HALF,), tl.int32)
                for level in tl.static_range(15):
                    boundary = (tl.load(codebook_ptr + level) + tl.load(codebook_ptr + level + 1)) * 0.5
                    index1 += (u1 > boundary).to(tl.int32)
                    index2 += (u2 > boundary).to(tl.int32)
                tl.store(dst + lo, (index1 | (index2 << 4)).to(tl.uint8))
                chosen1, chosen2 = tl.load(codebook_ptr + index1), tl.load(codebook_ptr + index2)
                fit = tl.sum(y1 * chosen1, axis=0) + tl.sum(y2 * chosen2, axis=0)
                energy = tl.sum(chosen1 * chosen1, axis=0) + tl.sum(chosen2 * chosen2, axis=0)
                tl.store((dst + HALF).to(tl.pointer_type(tl.float32)), fit / energy)

    return qk_norm_rope_kernel


def qk_norm_rope_reference(qkv, q_weight, k_weight, cos, sin, positions, k_cache, v_cache, eps,
                           num_heads, num_kv_heads, slots=None, rotation=None):
    """qkv (B, (H+2K)*D); cos/sin (B, D); caches (slots, K, max_len, D) or quantized rows
    (kernels/kv_quant.py; int4 needs the cache's rotation, and q comes back rotated). Returns q (B, H, D)."""
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
    bits = kv_quant.stored_bits(k_cache)
    if bits != 16:
        k, v = (kv_quant.quantize(x, "int8" if bits == 8 else "int4", rotation) for x in (k, v))
    k_cache[rows, :, positions] = k
    v_cache[rows, :, positions] = v
    return (q.float() @ rotation.T).to(q.dtype) if bits == 4 else q


def qk_norm_rope_fused(qkv, q_weight, k_weight, cos, sin, positions, k_cache, v_cache, eps,
                       num_heads, num_kv_heads, slots=None, rotation=None, codebook=None):
    """slots: (B,) cache slot of each row, or None for slot b = row b. Quantized caches (int8 / int4
    rows, kernels/kv_quant.py) get quantized rows; int4 needs the cache's rotation and codebook, and
    returns q rotated."""
    batch = qkv.shape[0]
    head_dim = q_weight.shape[0]
    q_out = torch.empty(batch, num_heads, head_dim, device=qkv.device, dtype=qkv.dtype)
    positions = positions.contiguous()
    bits = kv_quant.stored_bits(k_cache)
    _qk_norm_rope_kernel()[(batch, num_heads + 2 * num_kv_heads)](
        qkv.contiguous(), q_weight, k_weight, cos.contiguous(), sin.contiguous(), positions,
        positions if slots is None else slots.contiguous(),
        q_out, k_cache, v_cache, rotation if bits == 4 else q_out, codebook if bits == 4 else q_out, eps,
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        NUM_HEADS=num_heads, NUM_KV_HEADS=num_kv_heads, HEAD_DIM=head_dim, HAS_SLOTS=slots is not None,
        KV_BITS=bits)
    return q_out
