"""CUDA-graph capture of the frame step, one graph per (batch size, attended length bucket, sampling flags).

A frame is ~1,000 small kernels at batch 1; replaying them as one graph removes the launch
overhead that dominates single-stream decoding. Off CUDA the runner just calls the step.
"""
from __future__ import annotations

import torch

from ..layers.attention import CacheView
from .step import FrameStep

MIN_ATTEND_BUCKET = 64
MAX_GRAPHED_PROMPT = 512  # longer prompt calls run eagerly


def attend_bucket(needed: int, max_len: int) -> int:
    """Smallest power of two >= needed (at least MIN_ATTEND_BUCKET), capped at the cache size."""
    bucket = MIN_ATTEND_BUCKET
    while bucket < needed:
        bucket *= 2
    return min(bucket, max_len)


class GraphRunner:
    """Drop-in for FrameStep in the decode loops: same prefill/state, graphed frame_step."""

    def __init__(self, step: FrameStep, use_graphs: bool | None = None):
        self.step = step
        device = step.codes.device
        self.use_graphs = device.type == "cuda" if use_graphs is None else use_graphs
        self._graphs: dict[tuple, torch.cuda.CUDAGraph] = {}
        self._warm: set[tuple] = set()
        self._pool = torch.cuda.graph_pool_handle() if self.use_graphs else None
        if self.use_graphs:
            step.prompt_runner = PromptGraphs(step, self._pool)

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

    @property
    def rows(self) -> int:
        return self.step.rows

    @property
    def max_len(self) -> int:
        return self.step.max_len

    def prefill(self, row, prompt, sampling, seed, min_frames: int = 2) -> None:
        self.step.prefill(row, prompt, sampling, seed, min_frames)

    @torch.no_grad()
    def frame_step(self, batch: int, attend_length: int) -> torch.Tensor:
        length = attend_bucket(attend_length, self.step.max_len)
        if not self.use_graphs:
            return self.step.frame_step(batch, length)
        key = (batch, length, self.step.flags)
        graph = self._graphs.get(key)
        if graph is not None:
            graph.replay()
            return self.step.codes[:batch]
        if key not in self._warm:
            # The first call is a real step run on a side stream; it also warms up kernels.
            self._warm.add(key)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                codes = self.step.frame_step(batch, length)
            torch.cuda.current_stream().wait_stream(side)
            return codes
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            self.step.frame_step(batch, length)
        self._graphs[key] = graph
        graph.replay()
        return self.step.codes[:batch]

    def warmup(self, batch: int, lengths: list[int]) -> None:
        """Capture graphs ahead of time (each capture needs one real step first).

        Warm-up steps write into the row state, so call this before any prefill that matters.
        """
        for length in lengths:
            for _ in range(2):
                self.frame_step(batch, length)


def capture_graph(fn, pool) -> torch.cuda.CUDAGraph:
    """fn's kernels captured as one CUDA graph (fn has run once before, outside capture)."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        fn()
    return graph


def prompt_bucket(rows: int) -> int:
    """Smallest power of two >= rows."""
    return 1 << (rows - 1).bit_length()


class PromptGraphs:
    """Prompt rows through the talker as CUDA graphs, one per (padded row count, attended length bucket).

    An eager prefill is ~1,000 launches (tens of ms); replayed, it is a few ms. Padding rows go
    after the real ones, so causal attention keeps them out of the real rows' results; the K/V
    they leave past the prompt are overwritten by the frames that follow before anything reads them.
    """

    def __init__(self, step: FrameStep, pool):
        self.step, self.pool = step, pool
        device = step.codes.device
        hidden = step.talker.cfg.hidden_size
        dtype = step.talker.codec_head.weight.dtype
        self.rows = torch.zeros(MAX_GRAPHED_PROMPT, hidden, device=device, dtype=dtype)
        self.start = torch.zeros((), dtype=torch.long, device=device)
        self.slot = torch.zeros(1, dtype=torch.long, device=device)
        self.last = torch.zeros(1, dtype=torch.long, device=device)
        self.out = torch.zeros(1, hidden, device=device, dtype=dtype)
        self._graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}
        self._warm: set[tuple[int, int]] = set()

    def __call__(self, row: int, rows: torch.Tensor, start: int) -> torch.Tensor:
        count = rows.shape[0]
        padded = prompt_bucket(count)
        if padded > MAX_GRAPHED_PROMPT or start + padded > self.step.max_len:
            return self.step.prompt_rows_eager(row, rows, start)[:, -1]
        key = (padded, attend_bucket(start + padded, self.step.max_len))
        self.rows[:count] = rows
        self.start.fill_(start)
        self.slot.fill_(row)
        self.last.fill_(count - 1)
        graph = self._graphs.get(key)
        if graph is None and key not in self._warm:
            self._warm.add(key)  # the first call runs eagerly and warms up the kernels
            self._forward(*key)
        elif graph is None:
            graph = self._graphs[key] = capture_graph(lambda: self._forward(*key), self.pool)
            graph.replay()
        else:
            graph.replay()
        return self.out.clone()

    def warmup(self, max_rows: int = 256) -> None:
        """Capture the graphs of prompt calls of up to max_rows rows starting near position 0.

        Runs garbage rows into slot 0, so call it before any request has a row.
        """
        rows = torch.zeros(1, self.rows.shape[1], device=self.rows.device, dtype=self.rows.dtype)
        padded = 1
        while padded <= min(max_rows, MAX_GRAPHED_PROMPT, self.step.max_len):
            for _ in range(2):  # eager warm-up, then capture
                self(0, rows.expand(padded, -1), 0)
            padded *= 2

    def _forward(self, padded: int, attend_length: int) -> None:
        positions = (self.start + torch.arange(padded, device=self.start.device)).unsqueeze(0)
        view = CacheView.causal(self.step.cache, positions, attend_length, rows_slots=self.slot)
        hidden = self.step.talker(self.rows[:padded].unsqueeze(0), positions, view)
        self.out.copy_(hidden[0].index_select(0, self.last))
