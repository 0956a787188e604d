"""The fused sampling kernel against the PyTorch sampler (CPU runs use the Triton interpreter)."""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # before Triton is first imported
pytest.importorskip("triton")

from qtts.kernels.sampling import sample_fused  # noqa: E402
from qtts.layers.sampler import SamplingTensors, sample  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _params(batch, do_sample=True, temperature=0.9, top_k=50):
    return SamplingTensors(do_sample=torch.full((batch,), do_sample, device=DEVICE),
                           temperature=torch.full((batch,), temperature, device=DEVICE),
                           top_k=torch.full((batch,), top_k, dtype=torch.int64, device=DEVICE),
                           top_p=torch.ones(batch, device=DEVICE))


def _scores(batch, vocab, seed=0):
    scores = torch.randn(batch, vocab, generator=torch.Generator().manual_seed(seed)) * 3
    return scores.to(DEVICE)


@pytest.mark.parametrize("vocab", [2048, 3072])
def test_draws_equal_the_pytorch_sampler(vocab):
    batch = 8
    scores = _scores(batch, vocab)
    scores[1, 100:] = float("-inf")  # suppressed tokens, as the talker masks them
    params = _params(batch)
    params.do_sample[3] = False
    params.top_k[4] = 0
    params.top_k[5] = 1
    params.temperature[6] = 0.3
    seeds = torch.arange(batch, dtype=torch.int64, device=DEVICE) * 977 - 5
    for step in range(3):
        steps = torch.full((batch,), step, dtype=torch.int64, device=DEVICE)
        ours = sample_fused(scores, params, seeds, steps, stream=4)
        theirs = sample(scores, params, seeds, steps, stream=4, use_top_p=False)
        assert torch.equal(ours.cpu(), theirs.cpu())


def test_top_k_keeps_ties_at_the_boundary():
    scores = torch.tensor([[5.0, 4.0, 4.0, 4.0, -1.0, -2.0, 0.0, 1.0]], device=DEVICE).repeat(64, 1)
    params = _params(64, temperature=1.0, top_k=2)
    seeds = torch.arange(64, dtype=torch.int64, device=DEVICE)
    steps = torch.zeros(64, dtype=torch.int64, device=DEVICE)
    drawn = sample_fused(scores, params, seeds, steps, stream=0).cpu()
    assert set(drawn.tolist()) <= {0, 1, 2, 3}
    assert len(set(drawn.tolist()) & {1, 2, 3}) >= 2  # every tie with the 2nd largest may be drawn


def test_greedy_rows_take_the_first_maximum():
    scores = torch.zeros(2, 2048, device=DEVICE)
    scores[:, 7] = scores[:, 9] = 2.0
    params = _params(2, do_sample=False)
    token = sample_fused(scores, params, torch.zeros(2, dtype=torch.int64, device=DEVICE),
                         torch.zeros(2, dtype=torch.int64, device=DEVICE), stream=1)
    assert token.tolist() == [7, 7]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: the interpreter compiles nothing")
def test_rows_starting_anywhere_share_one_compiled_kernel():
    """A prefill samples rows from its first row on: every offset must reuse one kernel, since a compile under
    live traffic stalls every stream for half a second."""
    from qtts.kernels.compile_watch import compiles, watch_compiles

    assert watch_compiles()
    rows, vocab = 32, 3000  # a vocabulary no other test uses: its first call compiles
    scores, params = _scores(rows, vocab), _params(rows)
    seeds = torch.arange(rows, dtype=torch.int64, device=DEVICE)
    steps = torch.zeros(rows, dtype=torch.int64, device=DEVICE)
    sliced = lambda first: SamplingTensors(*(t[first:] for t in (params.do_sample, params.temperature,  # noqa: E731
                                                                  params.top_k, params.top_p)))
    sample_fused(scores[:1], sliced(0), seeds, steps, stream=1)
    seen = len(compiles())
    for first in range(1, 16):
        sample_fused(scores[first:first + 1], sliced(first), seeds[first:], steps[first:], stream=1)
    assert compiles()[seen:] == []
