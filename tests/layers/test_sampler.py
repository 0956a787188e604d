"""The sampler keeps upstream's (transformers') semantics and draws reproducibly per row."""
import numpy as np
import pytest
import torch

from qtts.kernels.noise import uniform_noise
from qtts.layers.sampler import SamplingTensors, apply_repetition_penalty, sample, warp

VOCAB = 64
CASES = [  # temperature, top_k, top_p
    (0.9, 50, 1.0),
    (0.7, 5, 1.0),
    (1.3, 0, 0.8),
    (1.0, 10, 0.5),
    (0.5, 3, 0.95),
]


def _params(rows, temperature, top_k, top_p, do_sample=True):
    return SamplingTensors(
        do_sample=torch.full((rows,), do_sample),
        temperature=torch.full((rows,), float(temperature)),
        top_k=torch.full((rows,), top_k, dtype=torch.int64),
        top_p=torch.full((rows,), float(top_p)),
    )


def _upstream_scores(logits, temperature, top_k, top_p):
    transformers = pytest.importorskip("transformers")
    from transformers.generation.logits_process import (TemperatureLogitsWarper, TopKLogitsWarper,
                                                        TopPLogitsWarper)

    del transformers
    ids = torch.zeros(logits.shape[0], 0, dtype=torch.long)
    scores = TemperatureLogitsWarper(temperature)(ids, logits.clone())
    if top_k:
        scores = TopKLogitsWarper(top_k)(ids, scores)
    if top_p < 1.0:
        scores = TopPLogitsWarper(top_p)(ids, scores)
    return scores


@pytest.mark.parametrize("temperature,top_k,top_p", CASES)
def test_warp_matches_transformers(temperature, top_k, top_p):
    logits = torch.randn(4, VOCAB, generator=torch.Generator().manual_seed(1)) * 3
    logits[0, :8] = logits[0, 0]  # ties at the top-k boundary are kept
    ours = warp(logits, _params(4, temperature, top_k, top_p))
    theirs = _upstream_scores(logits, temperature, top_k, top_p)
    assert torch.equal(torch.isinf(ours), torch.isinf(theirs))
    assert torch.allclose(ours.softmax(-1), theirs.softmax(-1), atol=1e-6)


def test_repetition_penalty_matches_transformers():
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

    logits = torch.randn(2, VOCAB, generator=torch.Generator().manual_seed(2))
    generated = torch.tensor([[3, 5, 5, 9], [0, 1, 2, 3]])
    seen = torch.zeros(2, VOCAB, dtype=torch.bool).scatter(1, generated, True)
    ours = apply_repetition_penalty(logits, seen, torch.full((2,), 1.3))
    theirs = RepetitionPenaltyLogitsProcessor(1.3)(generated, logits.clone())
    assert torch.allclose(ours, theirs)


@pytest.mark.parametrize("temperature,top_k,top_p", CASES[:3])
def test_draws_follow_the_warped_distribution(temperature, top_k, top_p):
    """Chi-square goodness of fit of 20,000 seeded draws against softmax(warped scores)."""
    draws = 20_000
    logits = torch.randn(1, VOCAB, generator=torch.Generator().manual_seed(4)).expand(draws, -1)
    params = _params(draws, temperature, top_k, top_p)
    tokens = sample(logits, params, seeds=torch.arange(draws), steps=torch.zeros(draws, dtype=torch.int64),
                    stream=0)
    probs = warp(logits[:1], params).softmax(-1)[0].double().numpy()
    counts = np.bincount(tokens.numpy(), minlength=VOCAB)
    assert counts[probs == 0].sum() == 0  # masked tokens never drawn
    keep = probs * draws >= 5
    expected = probs[keep] * draws
    chi2 = (((counts[keep] - expected) ** 2) / expected).sum()
    dof = max(int(keep.sum()) - 1, 1)
    assert chi2 < dof + 5 * np.sqrt(2 * dof)  # ~5 sigma: fails only on a wrong distribution


def test_greedy_rows_take_the_argmax():
    logits = torch.randn(3, VOCAB, generator=torch.Generator().manual_seed(5))
    tokens = sample(logits, _params(3, 0.9, 50, 1.0, do_sample=False), torch.arange(3), torch.zeros(3, dtype=torch.long), 0)
    assert torch.equal(tokens, logits.argmax(-1))


def test_noise_depends_only_on_seed_step_stream():
    seeds, steps = torch.tensor([11, 12, 11]), torch.tensor([0, 0, 0])
    noise = uniform_noise(seeds, steps, stream=3, vocab=VOCAB)
    assert torch.equal(noise[0], noise[2])  # same seed and step in another row
    assert not torch.equal(noise[0], noise[1])
    assert not torch.equal(noise[0], uniform_noise(seeds, steps + 1, 3, VOCAB)[0])
    assert not torch.equal(noise[0], uniform_noise(seeds, steps, 4, VOCAB)[0])
    assert noise.min() > 0 and noise.max() < 1
