"""CUDA-graph replay of the frame step: one graph per (half, batch bucket, attended length bucket, sampling flags).

A frame is ~1,000 small kernels at batch 1; replaying them as one graph removes the launch
overhead that dominates single-stream decoding. Off CUDA the runner just calls the step.
"""
from __future__ import annotations

import torch

from ..graphs import GraphCache, pow2_bucket
from .prompt_graphs import PromptGraphs
from .step import FrameStep

MIN_ATTEND_BUCKET = 64


WARMUP_MAX_ATTEND = 1024  # without the fused kernels, warm-up captures attended lengths up to this


def attend_bucket(needed: int, max_len: int) -> int:
    """The attended length a frame runs at: a power of two >= needed (at least MIN_ATTEND_BUCKET), at most max_len."""
    return pow2_bucket(needed, MIN_ATTEND_BUCKET, max_len)


class GraphRunner:
    """A FrameStep whose two halves (and prompt prefills) replay as CUDA graphs when use_graphs is on."""

    def __init__(self, step: FrameStep, use_graphs: bool | None = None, on_late_capture=None):
        self.step = step
        device = step.codes.device
        self.use_graphs = device.type == "cuda" if use_graphs is None else use_graphs
        self.graphs = GraphCache(device, on_late_capture=on_late_capture) if self.use_graphs else None
        if self.graphs is not None:
            step.prompt_runner = PromptGraphs(step, self.graphs)

    @property
    def state(self):
        return self.step.state

    @property
    def flags(self):
        return self.step.flags

    @flags.setter
    def flags(self, value) -> None:
        self.step.flags = value

    @property
    def eos_id(self) -> int:
        return self.step.eos_id

    def prefill_rows(self, first_row, items) -> None:
        self.step.prefill_rows(first_row, items)

    def attend_length(self, needed: int) -> int:
        """The attended length a call that needs `needed` positions runs at. The fused decode attention
        reads each row's length from its position, so with it every call can run at max_len: one graph
        per batch then serves every length."""
        if self.step.talker.model.fused:
            return self.step.max_len
        return attend_bucket(needed, self.step.max_len)

    def attend_lengths(self) -> list[int]:
        """The attended lengths warm-up captures."""
        needed = (MIN_ATTEND_BUCKET * 2 ** k for k in range(8))
        return sorted({self.attend_length(n) for n in needed if n <= WARMUP_MAX_ATTEND})

    @torch.no_grad()
    def predict_frame(self, batch: int) -> torch.Tensor:
        """The current frame's codes (B, 16): the code predictor's half of a frame."""
        flags = self.step.flags  # the predictor's sampling only: the talker's does not change this graph
        self._run(("predict", batch, flags.predictor_sampling, flags.predictor_top_p),
                  lambda: self.step.predict_frame(batch))
        return self.step.codes[:batch]

    @torch.no_grad()
    def advance(self, batch: int, attend_length: int) -> None:
        """The talker's half: the talker over the frame and the next codebook 0."""
        length = self.attend_length(attend_length)
        flags = self.step.flags
        self._run(("advance", batch, length, flags.talker_sampling, flags.talker_top_p),
                  lambda: self.step.advance(batch, length))

    def _run(self, key: tuple, fn) -> None:
        if self.graphs is None:
            fn()
        else:
            self.graphs.run(key, fn)
