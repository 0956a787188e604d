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
from ..kernels.noise import uniform_noise


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
    fused runs the Triton kernel on CUDA when top-p is not needed. Scores of any float dtype are
    sampled in fp32.
    """
    if not any_sampling:
        return scores.argmax(dim=-1)
    if fused and not use_top_p and scores.is_cuda and kernels_enabled(scores.device):
        from ..kernels.sampling import sample_fused

        return sample_fused(scores, params, seeds, steps, stream)
    scores = scores.float()
    greedy = scores.argmax(dim=-1)
    warped = warp(scores, params, use_top_p)
    gumbel = -torch.log(-torch.log(uniform_noise(seeds, steps, stream, scores.shape[-1])))
    drawn = (warped + gumbel).argmax(dim=-1)
    return torch.where(params.do_sample, drawn, greedy)
