"""One kernel per sampling call: temperature, top-k, Gumbel-max draw and the greedy fallback.

The PyTorch sampler (qtts/layers/sampler.py) spends ~50 small kernels on each call, and a frame
samples 16 times; this kernel does the same work in one launch per call. Top-p is not here:
the sampler keeps its PyTorch path for batches that use it.
"""
from __future__ import annotations

import functools
import torch

from .noise import GOLDEN, MASK64, MIX1, MIX2, STEP, STREAM


@functools.cache
def _sample_kernel():
    import triton
    import triton.language as tl

    # the per-row parameters are often slices starting at a prefill's first row: specialized on their
    # alignment, each row offset modulo 16 would compile a kernel of its own under live traffic
    @triton.jit(do_not_specialize_on_alignment=["out_ptr", "do_sample_ptr", "temperature_ptr", "top_k_ptr",
                                                 "seeds_ptr", "steps_ptr"])
    def sample_kernel(scores_ptr, out_ptr, do_sample_ptr, temperature_ptr, top_k_ptr, seeds_ptr, steps_ptr,
               stride, vocab, stream_key, golden, step_mul, mix1, mix2, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        stream_key = stream_key.to(tl.int64).to(tl.uint64, bitcast=True)
        golden = golden.to(tl.int64).to(tl.uint64, bitcast=True)
        step_mul = step_mul.to(tl.int64).to(tl.uint64, bitcast=True)
        mix1 = mix1.to(tl.int64).to(tl.uint64, bitcast=True)
        mix2 = mix2.to(tl.int64).to(tl.uint64, bitcast=True)
        cols = tl.arange(0, BLOCK)
        valid = cols < vocab
        scores = tl.load(scores_ptr + row * stride + cols, mask=valid, other=float("-inf")).to(tl.float32)
        greedy = tl.argmax(scores, 0)

        x = scores / tl.load(temperature_ptr + row) + 0.0  # + 0.0 turns -0.0 into +0.0 for the keys
        # top-k: the k-th largest value is the largest t with #(x >= t) >= k; binary search over
        # the floats' order-preserving integer keys keeps boundary ties, as transformers does.
        bits = x.to(tl.int32, bitcast=True)
        key = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF).to(tl.int64)
        key = tl.where(valid, key, -(2**31) - 1)
        top_k = tl.load(top_k_ptr + row)
        k = tl.where((top_k > 0) & (top_k < vocab), top_k, vocab)
        lo = tl.min(tl.where(valid, key, 2**31), 0)
        hi = tl.max(key, 0)
        for _ in range(33):
            mid = lo + (hi - lo + 1) // 2
            enough = tl.sum((key >= mid).to(tl.int32), 0) >= k
            lo = tl.where(enough, mid, lo)
            hi = tl.where(enough, hi, mid - 1)
        keep = valid & (key >= lo)

        seed = tl.load(seeds_ptr + row).to(tl.uint64, bitcast=True)
        step = tl.load(steps_ptr + row).to(tl.uint64, bitcast=True)
        x64 = seed * golden + step * step_mul + stream_key  # splitmix64, twice (as noise.uniform_noise)
        x64 = (x64 ^ (x64 >> 30)) * mix1
        x64 = (x64 ^ (x64 >> 27)) * mix2
        x64 = (x64 ^ (x64 >> 31)) + (cols.to(tl.uint64) + 1) * golden
        x64 = (x64 ^ (x64 >> 30)) * mix1
        x64 = (x64 ^ (x64 >> 27)) * mix2
        noise_bits = x64 ^ (x64 >> 31)
        uniform = ((noise_bits >> 40).to(tl.float32) + 0.5) * (1.0 / 16777216.0)
        gumbel = -tl.log(-tl.log(uniform))
        drawn = tl.argmax(tl.where(keep, x + gumbel, float("-inf")), 0)
        chosen = tl.where(tl.load(do_sample_ptr + row) != 0, drawn, greedy)
        tl.store(out_ptr + row, chosen.to(tl.int64))

    return sample_kernel


def _unsigned(value: int) -> int:
    return value & MASK64


def sample_fused(scores: torch.Tensor, params, seeds: torch.Tensor, steps: torch.Tensor, stream: int) -> torch.Tensor:
    """(B,) tokens as `sampler.sample(..., use_top_p=False)` draws them (same noise; log rounding may differ).

    params: the rows' sampling tensors (layers.sampler.SamplingTensors: do_sample, temperature, top_k).
    """
    scores = scores.contiguous()
    batch, vocab = scores.shape
    out = torch.empty(batch, dtype=torch.int64, device=scores.device)
    block = max(16, 1 << (vocab - 1).bit_length())
    _sample_kernel()[(batch,)](
        scores, out, params.do_sample, params.temperature.float().contiguous(), params.top_k.contiguous(),
        seeds.contiguous(), steps.contiguous(), scores.stride(0), vocab,
        _unsigned(stream * STREAM), _unsigned(GOLDEN), _unsigned(STEP), _unsigned(MIX1), _unsigned(MIX2),
        BLOCK=block, num_warps=8 if block >= 4096 else 4)
    return out
