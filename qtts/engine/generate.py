"""The frame loop for a fixed batch of requests: prefill each row, then step until EOS or the cap."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from .prompt import Prompt
from .request import SamplingParams
from .runner import GraphRunner
from .step import FrameStep, SamplingFlags

FRAMES_PER_SECOND = 12.5


def default_frame_cap(text: str) -> int:
    """A generous cap from the text length: ~0.4 s per character plus 5 s, at most 8191 frames.

    About 0.3-0.5% of generations never emit EOS; the cap stops them babbling for minutes.
    """
    return min(8191, int(FRAMES_PER_SECOND * (5 + 0.4 * len(text))))


@dataclass
class RowPlan:
    prompt: Prompt
    sampling: SamplingParams
    seed: int
    max_frames: int
    min_frames: int = 2


@dataclass
class FrameEvent:
    """One finished frame of one row, or the row's end (codes None, finish_reason set)."""

    row: int
    codes: torch.Tensor | None
    finish_reason: str | None = None  # "stop" (EOS) or "length" (cap reached)


def decode_rows(step: FrameStep | GraphRunner, plans: list[RowPlan]) -> Iterator[list[FrameEvent]]:
    """Prefill every row, then yield each frame's events until all rows have finished."""
    batch = len(plans)
    step.flags = SamplingFlags.of([plan.sampling for plan in plans])
    for row, plan in enumerate(plans):
        step.prefill(row, plan.prompt, plan.sampling, plan.seed, plan.min_frames)
    positions = [plan.prompt.prefill.shape[0] for plan in plans]
    emitted = [0] * batch
    live = [True] * batch
    eos = step.eos_id
    while any(live):
        current_c0 = step.state.c0[:batch].tolist()
        events = []
        for row in range(batch):
            if not live[row]:
                continue
            if current_c0[row] == eos:
                live[row] = False
                events.append(FrameEvent(row, None, "stop"))
            elif emitted[row] >= plans[row].max_frames:
                live[row] = False
                events.append(FrameEvent(row, None, "length"))
        if not any(live):
            if events:
                yield events
            return
        codes = step.frame_step(batch, attend_length=max(positions) + 1)
        for row in range(batch):
            positions[row] += 1
            if live[row]:
                emitted[row] += 1
                events.append(FrameEvent(row, codes[row].clone()))
        yield events
