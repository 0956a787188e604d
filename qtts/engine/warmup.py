"""What the engine runs before it says ready: every frame-step graph it can need, and the eager sampling of a
prefill in every variant, so that no request waits behind a capture or a Triton compile."""
from __future__ import annotations

import torch

from .model import ModelBundle
from .prompt import Prompt
from .runner import GraphRunner
from .step import PrefillItem, SamplingFlags

# every combination of sampling work a batch can need (talker or predictor: none, sampling, sampling + top-p)
SAMPLING_VARIANTS = ((False, False), (True, False), (True, True))


def capture_frame_steps(runner: GraphRunner, batch_buckets: list[int]) -> None:
    """Both halves of the frame step for every batch bucket in every sampling variant (and attended length),
    each run eagerly once and then captured. Writes garbage into every row."""
    state = runner.state
    lengths = runner.attend_lengths()
    for batch in batch_buckets:
        for predictor in SAMPLING_VARIANTS:
            runner.flags = SamplingFlags(predictor_sampling=predictor[0], predictor_top_p=predictor[1])
            for _ in range(2):  # eager warm-up, then capture
                runner.predict_frame(batch)
        for talker in SAMPLING_VARIANTS:
            runner.flags = SamplingFlags(talker_sampling=talker[0], talker_top_p=talker[1])
            for length in lengths:
                for _ in range(2):
                    state.positions[:batch] = 0
                    runner.advance(batch, length)


@torch.no_grad()
def warm_prefill_sampling(runner: GraphRunner, model: ModelBundle, max_batch: int) -> None:
    """Run the eager part of a prefill (the first codebook 0's sampling) in every sampling variant, from first
    rows of each alignment class: Triton compiles a kernel per pointer alignment where it is not told
    otherwise, and a compile in the loop stalls every stream for half a second."""
    hidden = model.config.talker.hidden_size
    rows = torch.zeros(4, hidden, device=model.device, dtype=model.dtype)
    prompt = Prompt(prefill=rows, trailing=rows[:0], pad_row=rows[0])
    for do_sample, top_p in SAMPLING_VARIANTS:
        sampling = model.sampling(do_sample=do_sample, top_p=0.9 if top_p else 1.0)
        runner.flags = SamplingFlags.of([sampling])
        for first_row in (row for row in (0, 1, 2, 4, 8) if row < max_batch):
            runner.prefill_rows(first_row, [PrefillItem(prompt, sampling, seed=0)])
