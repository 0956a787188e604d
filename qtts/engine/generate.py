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


def decode_rows(step: FrameStep | GraphRunner, plans: list[RowPlan], lookahead: bool = False,
                split_first: bool = False) -> Iterator[list[FrameEvent]]:
    """Prefill every row, then yield each frame's events until all rows have finished.

    Each frame's events are yielded as soon as its codes are queued; its EOS flags are read after.
    lookahead: launch frame k+1 before waiting for frame k, so the device never idles while
    the host reads the EOS flags (one wasted frame at the end).
    split_first: yield the first frame's codes as soon as the code predictor has them, before the
    talker runs over that frame (streaming's first audio; not with lookahead).
    """
    if split_first and lookahead:
        raise ValueError("split_first and lookahead do not go together")
    batch = len(plans)
    step.flags = SamplingFlags.of([plan.sampling for plan in plans])
    for row, plan in enumerate(plans):
        step.prefill(row, plan.prompt, plan.sampling, plan.seed, plan.min_frames)
    positions = [plan.prompt.prefill.shape[0] for plan in plans]
    emitted = [0] * batch
    live = [True] * batch
    eos = step.eos_id
    next_c0 = _NextCodebook0(step, batch)
    current_c0 = step.state.c0[:batch].tolist()
    launched = None
    while True:
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
        if launched is None:
            launched = _launch(step, batch, positions, next_c0, split=split_first and not any(emitted))
        codes, finish = launched
        launched = _launch(step, batch, positions, next_c0) if lookahead else None
        for row in range(batch):
            if live[row]:
                emitted[row] += 1
                events.append(FrameEvent(row, codes[row]))
        yield events
        current_c0 = finish()


def _launch(step, batch: int, positions: list[int], next_c0: "_NextCodebook0", split: bool = False):
    """Queue one frame for every row: its codes (a private copy) and a callable that returns the next c0s.

    split: queue only the code predictor's half now; the callable queues the talker's half first,
    so whoever reads the codes in between does not wait for the talker.
    """
    attend_length = max(positions) + 1
    for row in range(batch):
        positions[row] += 1
    if not split:
        codes = step.frame_step(batch, attend_length).clone()
        return codes, next_c0.fetch()
    codes = step.predict_frame(batch).clone()

    def finish() -> list[int]:
        step.advance(batch, attend_length)
        return next_c0.fetch()()

    return codes, finish


class _NextCodebook0:
    """Copies the sampled codebook 0 of the rows to the host without stalling the device queue."""

    def __init__(self, step, batch: int):
        self.step, self.batch = step, batch
        self.cuda = step.state.c0.is_cuda
        self.buffers = [torch.empty(batch, dtype=torch.int64, pin_memory=self.cuda) for _ in range(2)]
        self.turn = 0

    def fetch(self):
        if not self.cuda:
            values = self.step.state.c0[: self.batch].tolist()
            return lambda: values
        buffer = self.buffers[self.turn]
        self.turn ^= 1
        c0 = self.step.state.c0[: self.batch]
        buffer.copy_(c0, non_blocking=True)
        done = torch.cuda.Event()
        done.record(torch.cuda.current_stream(c0.device))

        def ready() -> list[int]:
            done.synchronize()
            return buffer.tolist()

        return ready
