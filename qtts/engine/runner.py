"""CUDA-graph capture of the frame step, one graph per (batch size, attended length bucket, sampling flags).

A frame is ~1,000 small kernels at batch 1; replaying them as one graph removes the launch
overhead that dominates single-stream decoding. Off CUDA the runner just calls the step.
"""
from __future__ import annotations

import torch

from .step import FrameStep

MIN_ATTEND_BUCKET = 64


def attend_bucket(needed: int, max_len: int) -> int:
    """Smallest power of two >= needed (at least MIN_ATTEND_BUCKET), capped at the cache size."""
    bucket = MIN_ATTEND_BUCKET
    while bucket < needed:
        bucket *= 2
    return min(bucket, max_len)


def capture_graph(fn, pool, stream: torch.cuda.Stream | None = None) -> torch.cuda.CUDAGraph:
    """fn's kernels captured as one CUDA graph (fn has run once before, outside capture), on `stream`
    (default: torch's shared capture stream; cuBLAS builds that stream's workspace into the graph)."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool, stream=stream):
        fn()
    return graph


def run_graphed(graphs: dict, warm: set, key, fn, pool, warmup_stream: torch.cuda.Stream | None = None,
                capture_stream: torch.cuda.Stream | None = None) -> None:
    """One CUDA graph of fn per key: the key's first call runs fn eagerly (on warmup_stream when given),
    which warms its kernels up; the second captures it into graphs[key] (on capture_stream when given);
    later ones replay."""
    graph = graphs.get(key)
    if graph is not None:
        graph.replay()
    elif key not in warm:
        warm.add(key)
        if warmup_stream is None:
            fn()
            return
        warmup_stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(warmup_stream):
            fn()
        torch.cuda.current_stream().wait_stream(warmup_stream)
    else:
        graph = graphs[key] = capture_graph(fn, pool, capture_stream)
        graph.replay()


class GraphRunner:
    """Drop-in for FrameStep in the decode loops: same prefill/state, graphed frame_step.

    concurrent_prompts: prompt prefills may replay while a frame step runs on another stream, so the
    prompt graphs get a memory pool and a capture stream (hence a cuBLAS workspace) of their own.
    """

    def __init__(self, step: FrameStep, use_graphs: bool | None = None, concurrent_prompts: bool = False):
        self.step = step
        device = step.codes.device
        self.use_graphs = device.type == "cuda" if use_graphs is None else use_graphs
        self._graphs: dict[tuple, torch.cuda.CUDAGraph] = {}
        self._warm: set[tuple] = set()
        self._pool = torch.cuda.graph_pool_handle() if self.use_graphs else None
        self._warmup_stream = torch.cuda.Stream(device) if self.use_graphs else None
        if self.use_graphs:
            from .prompt_graphs import PromptGraphs

            if concurrent_prompts:
                # torch hands streams out round-robin from per-priority pools; the frame graphs' capture and
                # warm-up streams come from the default-priority pool, this capture stream from the high one
                capture = torch.cuda.Stream(device, priority=-1)
                step.prompt_runner = PromptGraphs(step, torch.cuda.graph_pool_handle(), capture)
            else:
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

    def prefill_rows(self, first_row, items) -> None:
        self.step.prefill_rows(first_row, items)

    @torch.no_grad()
    def frame_step(self, batch: int, attend_length: int) -> torch.Tensor:
        length = attend_bucket(attend_length, self.step.max_len)
        self._run(("frame", batch, length, self.step.flags), lambda: self.step.frame_step(batch, length))
        return self.step.codes[:batch]

    @torch.no_grad()
    def predict_frame(self, batch: int) -> torch.Tensor:
        """frame_step's first half (the frame's codes), as a graph of its own: streaming can decode the
        first frame before the talker runs."""
        flags = self.step.flags  # the predictor's sampling only: the talker's does not change this graph
        self._run(("predict", batch, flags.predictor_sampling, flags.predictor_top_p),
                  lambda: self.step.predict_frame(batch))
        return self.step.codes[:batch]

    @torch.no_grad()
    def advance(self, batch: int, attend_length: int) -> None:
        """frame_step's second half (the talker and the next codebook 0)."""
        length = attend_bucket(attend_length, self.step.max_len)
        flags = self.step.flags
        self._run(("advance", batch, length, flags.talker_sampling, flags.talker_top_p),
                  lambda: self.step.advance(batch, length))

    def _run(self, key: tuple, fn) -> None:
        """fn eagerly off CUDA; on CUDA one graph per key (which names the sampling flags fn depends on):
        the first call runs on the warm-up stream (and warms up the kernels), the second captures,
        later ones replay."""
        if not self.use_graphs:
            fn()
            return
        run_graphed(self._graphs, self._warm, key, fn, self._pool, self._warmup_stream)
