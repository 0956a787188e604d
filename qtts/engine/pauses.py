"""Where a serving process stalls: how long each engine iteration and each garbage collection took.

A stream underruns when its next chunk comes late, and one long pause is enough: a full garbage
collection of a heap that holds torch's modules scans every object in it, tens of milliseconds.
freeze_heap() moves what is alive after warm-up out of the collector's reach; the histograms
(Prometheus, through the engine's stats) show whether pauses remain.
"""
from __future__ import annotations

import gc
import time
from bisect import bisect_left

PAUSE_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.1, 0.25, 1.0)


class DurationHistogram:
    """Counts of durations per bucket (upper bounds in seconds; one more count above the last), sum and max."""

    def __init__(self, buckets: tuple[float, ...] = PAUSE_BUCKETS_S):
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)
        self.sum = 0.0
        self.max = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.buckets, seconds)] += 1
        self.sum += seconds
        self.max = max(self.max, seconds)

    def snapshot(self) -> dict:
        """Plain data (it crosses the engine process's pipe): buckets, counts, sum, max."""
        return {"buckets": list(self.buckets), "counts": list(self.counts), "sum": self.sum, "max": self.max}


class GcPauses:
    """Times every garbage collection of this process through gc.callbacks."""

    def __init__(self):
        self.histogram = DurationHistogram()
        self._started: float | None = None
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif self._started is not None:
            self.histogram.observe(time.perf_counter() - self._started)
            self._started = None


_process_gc_pauses: GcPauses | None = None


def gc_pauses() -> GcPauses:
    """This process's GcPauses (started on first use)."""
    global _process_gc_pauses
    if _process_gc_pauses is None:
        _process_gc_pauses = GcPauses()
    return _process_gc_pauses


def freeze_heap() -> None:
    """Collect once, then exempt every surviving object from later collections (gc.freeze): a server
    calls it after warm-up, so a full collection scans only what requests allocated since."""
    gc.collect()
    gc.freeze()
