"""Decode attention: one query position per row over that row's cached keys — Triton and reference.

Row b attends to cache positions 0..positions[b] of slot b (or of slots[b]: a prompt's tokens are rows
of one slot, each seeing the keys up to its own position, which is causal attention). Grouped-query
heads share one pass over their KV head; the softmax runs online in fp32, over only the blocks the row's
length covers. When rows x KV heads leave most of the GPU idle (one stream: 8 programs on 132 SMs, each
walking the whole row serially), the blocks are split among programs (flash-decoding): split s takes blocks
s, s + S, ... and a second kernel merges the splits' partial softmaxes. Quantized caches (kernels/kv_quant.py) are read
as stored: int8 rows scale the scores and probabilities by each vector's scale; int4 rows are looked
up in the codebook and attended in the rotated space (q arrives rotated), the output rotated back.
"""
from __future__ import annotations

import functools
import os

import torch
from torch.nn import functional as F

from . import kv_quant


@functools.cache
def _decode_attention_kernel():
    """Compiled lazily, so that the Triton interpreter setting is read when it is first used."""
    import triton
    import triton.language as tl

    @triton.jit
    def decode_attention_kernel(q_ptr, k_cache_ptr, v_cache_ptr, positions_ptr, slots_ptr, out_ptr,
               partial_acc_ptr, partial_max_ptr, partial_sum_ptr, scale,
               cache_slot_stride, cache_head_stride, cache_pos_stride,
               NUM_HEADS: tl.constexpr, NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
               BLOCK_N: tl.constexpr, HAS_SLOTS: tl.constexpr, KV_BITS: tl.constexpr, SPLITS: tl.constexpr):
        row = tl.program_id(0)
        kv_head = tl.program_id(1)
        split = tl.program_id(2)
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
        block_start = split * BLOCK_N
        while block_start < length:
            keys = block_start + tl.arange(0, BLOCK_N)
            valid = keys < length
            offsets = base + keys[:, None] * cache_pos_stride + dims[None, :]
            k = tl.load(k_cache_ptr + offsets, mask=valid[:, None], other=0.0).to(tl.float32)
            v = tl.load(v_cache_ptr + offsets, mask=valid[:, None], other=0.0).to(tl.float32)
            scores = tl.sum(q[:, None, :] * k[None, :, :], axis=2)  # (GROUP, BLOCK_N)
            if KV_BITS == 8:  # each row's fp32 scale follows its HEAD_DIM int8 coordinates
                scale_offsets = base + keys * cache_pos_stride + HEAD_DIM
                k_scale = tl.load((k_cache_ptr + scale_offsets).to(tl.pointer_type(tl.float32)), mask=valid, other=0.0)
                v_scale = tl.load((v_cache_ptr + scale_offsets).to(tl.pointer_type(tl.float32)), mask=valid, other=0.0)
                scores = scores * k_scale[None, :]
            scores = tl.where(valid[None, :], scores, float("-inf"))
            m_new = tl.maximum(m, tl.max(scores, axis=1))
            correction = tl.exp(m - m_new)
            p = tl.exp(scores - m_new[:, None])
            denom = denom * correction + tl.sum(p, axis=1)
            if KV_BITS == 8:
                p = p * v_scale[None, :]
            acc = acc * correction[:, None] + tl.sum(p[:, :, None] * v[None, :, :], axis=1)
            m = m_new
            block_start += BLOCK_N * SPLITS
        if SPLITS == 1:
            out = acc / denom[:, None]
            tl.store(out_ptr + q_rows, out.to(out_ptr.dtype.element_ty))
        else:  # a split past the row's length leaves max -inf and sum 0: it weighs nothing in the merge
            parts = (row * NUM_HEADS + kv_head * GROUP + group) * SPLITS + split
            tl.store(partial_max_ptr + parts, m)
            tl.store(partial_sum_ptr + parts, denom)
            tl.store(partial_acc_ptr + parts[:, None] * HEAD_DIM + dims[None, :], acc)

    return decode_attention_kernel


@functools.cache
def _decode_attention_dot_kernel():
    """decode_attention_kernel on tensor cores, for 16-bit and int8 caches: the group's queries padded to BLOCK_G rows
    (the smallest tl.dot tile), scores and outputs as matrix products. The broadcast products of the other kernel
    hold (GROUP, BLOCK_N, HEAD_DIM) fp32 values in registers: at full batch that spills and starves occupancy.
    int8 coordinates are exact in bf16: they enter the products as they are, and each row's scale multiplies its
    scores and probabilities."""
    import triton
    import triton.language as tl

    @triton.jit
    def decode_attention_dot_kernel(q_ptr, k_cache_ptr, v_cache_ptr, positions_ptr, slots_ptr, out_ptr,
                                    partial_acc_ptr, partial_max_ptr, partial_sum_ptr, scale,
                                    cache_slot_stride, cache_head_stride, cache_pos_stride,
                                    NUM_HEADS: tl.constexpr, NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
                                    BLOCK_N: tl.constexpr, HAS_SLOTS: tl.constexpr, SPLITS: tl.constexpr,
                                    BLOCK_G: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
                                    KV_BITS: tl.constexpr):
        row = tl.program_id(0)
        kv_head = tl.program_id(1)
        split = tl.program_id(2)
        GROUP: tl.constexpr = NUM_HEADS // NUM_KV_HEADS
        dims = tl.arange(0, HEAD_DIM)
        group = tl.arange(0, BLOCK_G)
        in_group = group < GROUP
        heads = row * NUM_HEADS + kv_head * GROUP + group
        q_rows = heads[:, None] * HEAD_DIM + dims[None, :]
        q = tl.load(q_ptr + q_rows, mask=in_group[:, None], other=0.0)  # (BLOCK_G, D), rows past GROUP zero
        if UPCAST:
            q = q.to(tl.float32)
        length = tl.load(positions_ptr + row) + 1
        if HAS_SLOTS:
            slot = tl.load(slots_ptr + row).to(tl.int64)
        else:
            slot = row.to(tl.int64)
        base = slot * cache_slot_stride + kv_head * cache_head_stride
        m = tl.full((BLOCK_G,), float("-inf"), tl.float32)
        denom = tl.zeros((BLOCK_G,), tl.float32)
        acc = tl.zeros((BLOCK_G, HEAD_DIM), tl.float32)
        block_start = split * BLOCK_N
        while block_start < length:
            keys = block_start + tl.arange(0, BLOCK_N)
            valid = keys < length
            offsets = base + keys[:, None] * cache_pos_stride + dims[None, :]
            k = tl.load(k_cache_ptr + offsets, mask=valid[:, None], other=0).to(q.dtype)
            v = tl.load(v_cache_ptr + offsets, mask=valid[:, None], other=0).to(q.dtype)
            scores = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale  # (BLOCK_G, BLOCK_N)
            if KV_BITS == 8:  # each row's fp32 scale follows its HEAD_DIM int8 coordinates
                scale_offsets = base + keys * cache_pos_stride + HEAD_DIM
                k_scale = tl.load((k_cache_ptr + scale_offsets).to(tl.pointer_type(tl.float32)), mask=valid, other=0.0)
                v_scale = tl.load((v_cache_ptr + scale_offsets).to(tl.pointer_type(tl.float32)), mask=valid, other=0.0)
                scores = scores * k_scale[None, :]
            scores = tl.where(valid[None, :], scores, float("-inf"))
            m_new = tl.maximum(m, tl.max(scores, axis=1))
            correction = tl.exp(m - m_new)
            p = tl.exp(scores - m_new[:, None])
            denom = denom * correction + tl.sum(p, axis=1)
            if KV_BITS == 8:
                p = p * v_scale[None, :]
            acc = acc * correction[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
            m = m_new
            block_start += BLOCK_N * SPLITS
        if SPLITS == 1:
            out = acc / denom[:, None]
            tl.store(out_ptr + q_rows, out.to(out_ptr.dtype.element_ty), mask=in_group[:, None])
        else:
            parts = heads * SPLITS + split
            tl.store(partial_max_ptr + parts, m, mask=in_group)
            tl.store(partial_sum_ptr + parts, denom, mask=in_group)
            tl.store(partial_acc_ptr + parts[:, None] * HEAD_DIM + dims[None, :], acc, mask=in_group[:, None])

    return decode_attention_dot_kernel


@functools.cache
def _merge_splits_kernel():
    """One program per (row, head): the splits' partial softmaxes rescaled to their common maximum and summed."""
    import triton
    import triton.language as tl

    @triton.jit
    def merge_splits_kernel(partial_acc_ptr, partial_max_ptr, partial_sum_ptr, out_ptr,
                            HEAD_DIM: tl.constexpr, SPLITS: tl.constexpr):
        head_row = tl.program_id(0)  # row * NUM_HEADS + head, as out (B, H, D) is laid out
        parts = head_row * SPLITS + tl.arange(0, SPLITS)
        dims = tl.arange(0, HEAD_DIM)
        maxima = tl.load(partial_max_ptr + parts)
        weights = tl.exp(maxima - tl.max(maxima, axis=0))  # split 0 always holds the row's first key
        total = tl.sum(weights * tl.load(partial_sum_ptr + parts), axis=0)
        acc = tl.load(partial_acc_ptr + parts[:, None] * HEAD_DIM + dims[None, :])
        out = tl.sum(weights[:, None] * acc, axis=0) / total
        tl.store(out_ptr + head_row * HEAD_DIM + dims, out.to(out_ptr.dtype.element_ty))

    return merge_splits_kernel


@functools.cache
def _multiprocessors(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


MAX_SPLITS = 16


def attention_splits(batch: int, num_kv_heads: int, max_len: int, block_n: int, device: torch.device) -> int:
    """How many programs share a row's blocks: enough for about two programs per multiprocessor, a power of
    two, at most MAX_SPLITS and no more than the cache has blocks. 1 off CUDA and for short caches."""
    blocks = -(-max_len // block_n)
    if device.type != "cuda" or blocks < 2:
        return 1
    wanted = -(-2 * _multiprocessors(device.index or 0) // (batch * num_kv_heads))
    if wanted <= 1:
        return 1
    return min(1 << (wanted - 1).bit_length(), MAX_SPLITS, 1 << (blocks - 1).bit_length())


@functools.cache
def _decode_attention_int4_kernel():
    """decode_attention_kernel over int4 rows: each byte holds coordinate i (low nibble) and i + D/2."""
    import triton
    import triton.language as tl

    @triton.jit
    def decode_attention_int4_kernel(q_ptr, k_cache_ptr, v_cache_ptr, positions_ptr, slots_ptr, out_ptr,
               rotation_ptr, codebook_ptr, scale, cache_slot_stride, cache_head_stride, cache_pos_stride,
               NUM_HEADS: tl.constexpr, NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
               BLOCK_N: tl.constexpr, HAS_SLOTS: tl.constexpr):
        row = tl.program_id(0)
        kv_head = tl.program_id(1)
        GROUP: tl.constexpr = NUM_HEADS // NUM_KV_HEADS
        HALF: tl.constexpr = HEAD_DIM // 2
        lo = tl.arange(0, HALF)
        group = tl.arange(0, GROUP)
        q_rows = (row * NUM_HEADS + kv_head * GROUP + group)[:, None] * HEAD_DIM + lo[None, :]
        q1 = tl.load(q_ptr + q_rows).to(tl.float32) * scale  # (GROUP, HALF), rotated space
        q2 = tl.load(q_ptr + q_rows + HALF).to(tl.float32) * scale
        length = tl.load(positions_ptr + row) + 1
        if HAS_SLOTS:
            slot = tl.load(slots_ptr + row).to(tl.int64)
        else:
            slot = row.to(tl.int64)
        base = slot * cache_slot_stride + kv_head * cache_head_stride
        m = tl.full((GROUP,), float("-inf"), tl.float32)
        denom = tl.zeros((GROUP,), tl.float32)
        acc1 = tl.zeros((GROUP, HALF), tl.float32)
        acc2 = tl.zeros((GROUP, HALF), tl.float32)
        block_start = 0
        while block_start < length:
            keys = block_start + tl.arange(0, BLOCK_N)
            valid = keys < length
            offsets = base + keys[:, None] * cache_pos_stride + lo[None, :]
            k_bytes = tl.load(k_cache_ptr + offsets, mask=valid[:, None], other=0).to(tl.int32)
            v_bytes = tl.load(v_cache_ptr + offsets, mask=valid[:, None], other=0).to(tl.int32)
            scale_offsets = base + keys * cache_pos_stride + HALF
            k_scale = tl.load((k_cache_ptr + scale_offsets).to(tl.pointer_type(tl.float32)), mask=valid, other=0.0)
            v_scale = tl.load((v_cache_ptr + scale_offsets).to(tl.pointer_type(tl.float32)), mask=valid, other=0.0)
            k1 = tl.load(codebook_ptr + (k_bytes & 15))
            k2 = tl.load(codebook_ptr + (k_bytes >> 4))
            v1 = tl.load(codebook_ptr + (v_bytes & 15))
            v2 = tl.load(codebook_ptr + (v_bytes >> 4))
            scores = tl.sum(q1[:, None, :] * k1[None, :, :], axis=2) + tl.sum(q2[:, None, :] * k2[None, :, :], axis=2)
            scores = tl.where(valid[None, :], scores * k_scale[None, :], float("-inf"))
            m_new = tl.maximum(m, tl.max(scores, axis=1))
            correction = tl.exp(m - m_new)
            p = tl.exp(scores - m_new[:, None])
            denom = denom * correction + tl.sum(p, axis=1)
            p = p * v_scale[None, :]
            acc1 = acc1 * correction[:, None] + tl.sum(p[:, :, None] * v1[None, :, :], axis=1)
            acc2 = acc2 * correction[:, None] + tl.sum(p[:, :, None] * v2[None, :, :], axis=1)
            m = m_new
            block_start += BLOCK_N
        acc1 = acc1 / denom[:, None]
        acc2 = acc2 / denom[:, None]
        # back from the rotated space: out = acc @ R, R read in four HALF x HALF tiles
        rows_lo = lo[:, None] * HEAD_DIM
        rows_hi = (HALF + lo)[:, None] * HEAD_DIM
        r11 = tl.load(rotation_ptr + rows_lo + lo[None, :])
        r12 = tl.load(rotation_ptr + rows_lo + HALF + lo[None, :])
        r21 = tl.load(rotation_ptr + rows_hi + lo[None, :])
        r22 = tl.load(rotation_ptr + rows_hi + HALF + lo[None, :])
        out1 = tl.sum(acc1[:, :, None] * r11[None, :, :], axis=1) + tl.sum(acc2[:, :, None] * r21[None, :, :], axis=1)
        out2 = tl.sum(acc1[:, :, None] * r12[None, :, :], axis=1) + tl.sum(acc2[:, :, None] * r22[None, :, :], axis=1)
        dtype = out_ptr.dtype.element_ty
        tl.store(out_ptr + q_rows, out1.to(dtype))
        tl.store(out_ptr + q_rows + HALF, out2.to(dtype))

    return decode_attention_int4_kernel


def decode_attention_reference(q, k_cache, v_cache, positions, slots=None, rotation=None):
    """q (B, H, D); caches (slots, K, max_len, D) or quantized rows (kernels/kv_quant.py; int4 needs the
    cache's rotation and takes q in real space); row b sees slot b's (slots[b]'s) positions 0..positions[b]."""
    batch = q.shape[0]
    length = int(positions.max()) + 1
    slots = torch.arange(batch, device=q.device) if slots is None else slots
    keys, values = k_cache[slots, :, :length], v_cache[slots, :, :length]
    if kv_quant.stored_bits(k_cache) != 16:
        keys, values = (kv_quant.dequantize(x, rotation).to(q.dtype) for x in (keys, values))
    mask = torch.arange(length, device=q.device).view(1, 1, 1, -1) <= positions.view(-1, 1, 1, 1)
    out = F.scaled_dot_product_attention(q.unsqueeze(2), keys, values, attn_mask=mask,
                                         enable_gqa=q.shape[1] != k_cache.shape[1])
    return out.squeeze(2)


def interpreted() -> bool:
    """Under Triton's interpreter (3.6), which multiplies 16-bit tl.dot operands wrongly: the dot kernel then
    computes in fp32."""
    return os.environ.get("TRITON_INTERPRET") == "1"


DOT_BITS = (16, 8)  # the caches the tensor-core kernel reads (int4 rows need their codebook)


def use_dot_products(bits: int, splits: int, block_n: int) -> bool:
    """Whether a call runs on tensor cores (_decode_attention_dot_kernel): 16-bit or int8 caches, a row's blocks walked by
    one program (full batches; a split row's program walks few blocks either way), blocks of 32 keys or more
    (the code predictor's 16 positions stay on the lighter kernel). QTTS_ATTENTION_DOT=0/1 decides instead."""
    forced = os.environ.get("QTTS_ATTENTION_DOT")
    if forced in ("0", "1"):
        return forced == "1" and bits in DOT_BITS
    return bits in DOT_BITS and splits == 1 and block_n >= 32


def decode_attention_fused(q, k_cache, v_cache, positions, slots=None, block_n: int = 64, rotation=None,
                           codebook=None, splits: int | None = None, dot: bool | None = None):
    """q (B, H, D); slots: (B,) cache slot of each row, or None for slot b = row b. Over int4 rows q is
    in the rotated space (as qk_norm_rope_fused returns it), and rotation and codebook are the cache's.
    splits: programs per row and KV head (a power of two; by default attention_splits; int4 rows take 1).
    dot: the tensor-core kernel (16-bit and int8 caches; by default use_dot_products)."""
    batch, num_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[1]
    out = torch.empty_like(q)
    positions = positions.contiguous()
    shape = dict(NUM_HEADS=num_heads, NUM_KV_HEADS=num_kv_heads, HEAD_DIM=head_dim, BLOCK_N=block_n,
                 HAS_SLOTS=slots is not None)
    slots = positions if slots is None else slots.contiguous()  # a pointer the kernel never reads
    strides = (k_cache.stride(0), k_cache.stride(1), k_cache.stride(2))
    bits = kv_quant.stored_bits(k_cache)
    if dot and bits not in DOT_BITS:
        raise ValueError("the tensor-core decode attention reads 16-bit and int8 caches only")
    if bits == 4:
        shape["BLOCK_N"] = min(block_n, 32)  # four decoded (block, D/2) tiles live in registers at once
        _decode_attention_int4_kernel()[(batch, num_kv_heads)](
            q.contiguous(), k_cache, v_cache, positions, slots, out, rotation, codebook, head_dim ** -0.5,
            *strides, **shape)
        return out
    if splits is None:
        splits = attention_splits(batch, num_kv_heads, k_cache.shape[2], block_n, q.device)
    parts = batch * num_heads * splits
    if splits == 1:
        partial_acc = partial_max = partial_sum = out  # pointers the kernel never reads
    else:
        partial_acc = torch.empty(parts, head_dim, dtype=torch.float32, device=q.device)
        partial_max = torch.empty(parts, dtype=torch.float32, device=q.device)
        partial_sum = torch.empty(parts, dtype=torch.float32, device=q.device)
    if dot is None:
        dot = use_dot_products(bits, splits, block_n)
    if dot:
        group = num_heads // num_kv_heads
        kernel = _decode_attention_dot_kernel()
        variant = {"BLOCK_G": max(16, 1 << (group - 1).bit_length()), "UPCAST": interpreted(), "KV_BITS": bits,
                   # fp32 stays exact; 16-bit inputs ignore it
                   "PRECISION": "ieee" if q.dtype == torch.float32 else "tf32"}
    else:
        kernel, variant = _decode_attention_kernel(), {"KV_BITS": bits}
    kernel[(batch, num_kv_heads, splits)](
        q.contiguous(), k_cache, v_cache, positions, slots, out, partial_acc, partial_max, partial_sum,
        head_dim ** -0.5, *strides, **shape, SPLITS=splits, **variant)
    if splits > 1:
        _merge_splits_kernel()[(batch * num_heads,)](partial_acc, partial_max, partial_sum, out,
                                                   HEAD_DIM=head_dim, SPLITS=splits)
    return out
