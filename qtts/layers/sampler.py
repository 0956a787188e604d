"""Token sampling on the device, with per-row parameters and no host synchronisation.

Semantics follow transformers' processors as upstream uses them: repetition penalty,
temperature, top-k (boundary ties kept), top-p, then a draw from softmax. The draw is
Gumbel-max with noise from a counter-based hash of (seed, step, stream, token), so a row's
tokens depend only on its own seed and position, never on the batch it shares.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..kernels import kernels_enabled

_MASK64 = (1 << 64) - 1


def _signed(value: int) -> int:
    value &= _MASK64
    return value - (1 << 64) if value >= 1 << 63 else value


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_MIX1 = _signed(0xBF58476D1CE4E5B9)
_MIX2 = _signed(0x94D049BB133111EB)
_STEP = _signed(0xD1B54A32D192ED03)
_STREAM = 0x8CB92BA72F3D8DD7


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 (torch shifts arithmetically)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def _splitmix64(x: torch.Tensor) -> torch.Tensor:
    x = (x ^ _shift_right(x, 30)) * _MIX1
    x = (x ^ _shift_right(x, 27)) * _MIX2
    return x ^ _shift_right(x, 31)


def uniform_noise(seeds: torch.Tensor, steps: torch.Tensor, stream: int, vocab: int) -> torch.Tensor:
    """(B, vocab) uniforms in (0, 1), a pure function of (seed, step, stream, token index)."""
    key = _splitmix64(seeds * _GOLDEN + steps * _STEP + _signed(stream * _STREAM))
    token = torch.arange(vocab, device=seeds.device, dtype=torch.int64)
    bits = _splitmix64(key.unsqueeze(1) + (token + 1) * _GOLDEN)
    return (_shift_right(bits, 40).float() + 0.5) * (1.0 / (1 << 24))


@dataclass
class SamplingTensors:
    """Per-row sampling parameters as device tensors (B,)."""

    do_sample: torch.Tensor  # bool
    temperature: torch.Tensor  # float32, > 0
    top_k: torch.Tensor  # int64, 0 = off
    top_p: torch.Tensor  # float32, 1.0 = off


def apply_repetition_penalty(scores: torch.Tensor, seen: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
    """Tokens already generated (seen, bool (B, V)) get s*p if s < 0 else s/p."""
    penalty = penalty.unsqueeze(1)
    penalized = torch.where(scores < 0, scores * penalty, scores / penalty)
    return torch.where(seen, penalized, scores)


def warp(scores: torch.Tensor, params: SamplingTensors, use_top_p: bool = True) -> torch.Tensor:
    """Temperature → top-k → top-p, masking removed tokens with -inf.

    use_top_p=False skips the top-p pass (exact when every row has top_p == 1).
    """
    vocab = scores.shape[-1]
    scores = scores / params.temperature.unsqueeze(1)
    sorted_desc = scores.sort(dim=-1, descending=True).values
    k = torch.where(params.top_k > 0, params.top_k.clamp(max=vocab), torch.full_like(params.top_k, vocab))
    kth = sorted_desc.gather(1, (k - 1).unsqueeze(1))
    scores = scores.masked_fill(scores < kth, float("-inf"))
    if not use_top_p:
        return scores
    # top-p as transformers does it: drop the low tail whose mass is <= 1 - top_p.
    ascending, order = scores.sort(dim=-1, descending=False)
    cumulative = ascending.softmax(dim=-1).cumsum(dim=-1)
    remove_sorted = cumulative <= (1 - params.top_p).unsqueeze(1)
    remove_sorted[:, -1] = False
    remove = remove_sorted.scatter(1, order, remove_sorted)
    return scores.masked_fill(remove, float("-inf"))


def sample(scores: torch.Tensor, params: SamplingTensors, seeds: torch.Tensor, steps: torch.Tensor,
           stream: int, any_sampling: bool = True, use_top_p: bool = True, fused: bool = False) -> torch.Tensor:
    """(B,) token ids: argmax for greedy rows, a seeded draw from softmax(warped) for the others.

    any_sampling=False (every row greedy) and use_top_p=False (no row uses top-p) skip work;
    fused runs the Triton kernel on CUDA when top-p is not needed.
    """
    if not any_sampling:
        return scores.argmax(dim=-1)
    if fused and not use_top_p and scores.is_cuda and kernels_enabled(scores.device):
        from ..kernels.sampling import sample_fused

        return sample_fused(scores, params, seeds, steps, stream)
    greedy = scores.argmax(dim=-1)
    warped = warp(scores, params, use_top_p)
    gumbel = -torch.log(-torch.log(uniform_noise(seeds, steps, stream, scores.shape[-1])))
    drawn = (warped + gumbel).argmax(dim=-1)
    return torch.where(params.do_sample, drawn, greedy)
