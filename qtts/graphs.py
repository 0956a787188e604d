"""CUDA-graph capture and the shape buckets graphs are captured for, shared by the engine and the codec, and the
host-to-device copy both use between replays.

A graph replays fixed shapes, so every call is padded up to a bucket: powers of two for lengths,
a few batch sizes for rows. One GraphCache per caller keeps its graphs by key.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Hashable

import torch


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`tensor` on `device`; a host tensor is copied through pinned memory, so the copy does not wait for the work
    already queued on the stream (a copy from pageable memory would)."""
    if device.type != "cuda" or tensor.is_cuda:
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def pow2_bucket(needed: int, minimum: int = 1, maximum: int | None = None) -> int:
    """Smallest power of two >= needed (and >= minimum), capped at maximum."""
    bucket = max(1, minimum)
    while bucket < needed:
        bucket *= 2
    return bucket if maximum is None else min(bucket, maximum)


def batch_buckets(max_batch: int) -> tuple[int, ...]:
    """1, 2, 4, 8, then steps of 8 up to max_batch: few graphs, at most 7 padded rows past 8."""
    sizes = [b for b in (1, 2, 4) if b < max_batch] + list(range(8, max_batch, 8))
    return tuple(sizes) + (max_batch,)


def bucket_for(needed: int, buckets) -> int:
    """The smallest bucket that holds `needed`."""
    return next(b for b in buckets if b >= needed)


def capture_graph(fn: Callable[[], object], pool, stream: torch.cuda.Stream | None = None) -> torch.cuda.CUDAGraph:
    """fn's kernels captured as one CUDA graph (fn has run once before, outside capture), on `stream`
    (default: torch's shared capture stream; cuBLAS builds that stream's workspace into the graph)."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool, stream=stream):
        fn()
    return graph


class GraphCache:
    """One CUDA graph per key, sharing a memory pool.

    `run(key, fn)`: the key's first call runs fn eagerly (on a warm-up stream, which warms its kernels
    up and lets cuBLAS pick its algorithms), the second captures it, later calls replay. Captures made
    after `mark_ready()` are counted and logged as late: each one stalls whoever waits for that call.
    """

    def __init__(self, device: torch.device, capture_stream: torch.cuda.Stream | None = None,
                 on_late_capture: Callable[[Hashable, float], None] | None = None):
        self.device = device
        on_cuda = device.type == "cuda"  # elsewhere only tests run it, with capture_graph replaced
        self.pool = torch.cuda.graph_pool_handle() if on_cuda else None
        self.capture_stream = capture_stream
        self.warmup_stream = torch.cuda.Stream(device) if on_cuda else None
        self.graphs: dict[Hashable, torch.cuda.CUDAGraph] = {}
        self._warm: set[Hashable] = set()
        self._ready = False
        self._on_late_capture = on_late_capture

    def __contains__(self, key: Hashable) -> bool:
        return key in self.graphs

    def mark_ready(self) -> None:
        """Warm-up is over: from now on a capture is a late one."""
        self._ready = True

    def run(self, key: Hashable, fn: Callable[[], object]) -> None:
        graph = self.graphs.get(key)
        if graph is not None:
            graph.replay()
        elif key not in self._warm:
            self._warm.add(key)
            if self.warmup_stream is None:
                fn()
                return
            self.warmup_stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(self.warmup_stream):
                fn()
            torch.cuda.current_stream(self.device).wait_stream(self.warmup_stream)
        else:
            self.capture(key, fn).replay()

    def capture(self, key: Hashable, fn: Callable[[], object]) -> torch.cuda.CUDAGraph:
        """Capture fn (which has run at least once before, outside capture) as the graph of `key`."""
        started = time.perf_counter()
        graph = self.graphs[key] = capture_graph(fn, self.pool, self.capture_stream)
        if self._ready and self._on_late_capture is not None:
            self._on_late_capture(key, time.perf_counter() - started)
        return graph
