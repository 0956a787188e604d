"""Prometheus metrics of one server: latency and speed of each request, and the engine's load.

Each app has its own registry, so several apps (tests, restarts) never clash.
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from ..engine.pauses import DurationHistogram, gc_pauses

FIRST_AUDIO_BUCKETS = (0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0)
RTF_BUCKETS = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0, 10.0)


def histogram_family(name: str, help_text: str, snapshot: dict | None) -> HistogramMetricFamily:
    """A DurationHistogram.snapshot() as a Prometheus histogram (cumulative buckets)."""
    family = HistogramMetricFamily(name, help_text)
    if snapshot:
        cumulative, buckets = 0, []
        for bound, count in zip([*snapshot["buckets"], float("inf")], snapshot["counts"]):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        family.add_metric([], buckets, snapshot["sum"])
    return family


class _EngineCollector:
    """Reads the engine's stats at scrape time: queue depth, active streams, frames/s, completed, and the
    engine loop's iteration times and garbage-collection pauses (where the engine runs), plus this
    process's own collection pauses."""

    def __init__(self, stats: Callable[[], dict], loop_lag: DurationHistogram):
        self.stats = stats
        self.gc_pauses = gc_pauses()  # timing starts now
        self.loop_lag = loop_lag

    def collect(self):
        stats = self.stats()
        for key, help_text in (("queued", "requests waiting for a slot"),
                               ("active", "streams being generated"),
                               ("frames_per_second", "codec frames generated per second, all streams"),
                               ("waiting_for_text", "streams whose next text has not arrived (not an engine "
                                                    "stall)")):
            yield GaugeMetricFamily(f"qtts_engine_{key}", help_text, value=float(stats.get(key, 0)))
        yield CounterMetricFamily("qtts_engine_text_wait_seconds", "time rows waited for text still being written",
                                  value=float(stats.get("text_wait_seconds", 0)))
        for key, help_text in (("late_graph_captures", "CUDA graphs captured after warm-up (every stream waited)"),
                               ("late_kernel_compiles", "Triton kernels compiled after warm-up (every stream waited)")):
            yield CounterMetricFamily(f"qtts_engine_{key}", help_text, value=float(stats.get(key, 0)))
        yield CounterMetricFamily("qtts_engine_completed", "requests the engine finished",
                                  value=float(stats.get("completed", 0)))
        for key, help_text in (("confirmations", "starts on a first word not settled yet that it settled as"),
                               ("rollbacks", "starts on a first word not settled yet, started again when it settled "
                                             "otherwise")):
            yield CounterMetricFamily(f"qtts_engine_text_speculation_{key}", help_text,
                                      value=float(stats.get(f"text_speculation_{key}", 0)))
        for key, help_text in (("hits", "voice prompt prefixes found in the K/V cache"),
                               ("misses", "voice prompt prefixes prefilled and stored")):
            yield CounterMetricFamily(f"qtts_prefix_cache_{key}", help_text,
                                      value=float(stats.get(f"prefix_cache_{key}", 0)))
        yield GaugeMetricFamily("qtts_prefix_cache_bytes", "bytes of prompt-prefix K/V held",
                                value=float(stats.get("prefix_cache_bytes", 0)))
        yield histogram_family("qtts_engine_iteration_seconds", "one engine loop iteration (a frame and its admissions)",
                         stats.get("iteration_seconds"))
        yield histogram_family("qtts_engine_gc_pause_seconds", "garbage collections in the engine's process (the "
                         "server's own when the engine runs in it)",
                         stats.get("gc_pause_seconds"))
        yield histogram_family("qtts_server_gc_pause_seconds", "garbage collections in the server's process",
                         self.gc_pauses.histogram.snapshot())
        yield histogram_family("qtts_server_loop_lag_seconds", "how late the server's event loop ran a 10 ms timer "
                         "(how long something held the loop, delaying every stream's chunks)", self.loop_lag.snapshot())


class ServerMetrics:
    """The server's metrics; `render()` is the /metrics body."""

    def __init__(self, engine_stats: Callable[[], dict]):
        self.registry = CollectorRegistry()
        self.first_audio = Histogram("qtts_first_audio_seconds", "from request arrival to the first audio chunk",
                                     ["endpoint"], buckets=FIRST_AUDIO_BUCKETS, registry=self.registry)
        self.real_time_factor = Histogram("qtts_real_time_factor",
                                          "generation wall time divided by audio duration (below 1 is faster "
                                          "than real time)", ["endpoint"], buckets=RTF_BUCKETS,
                                          registry=self.registry)
        self.requests = Counter("qtts_requests", "finished requests by endpoint and HTTP status "
                                "(499: the client went away)", ["endpoint", "status"], registry=self.registry)
        self.audio_seconds = Counter("qtts_audio_seconds", "seconds of audio sent", ["endpoint"],
                                     registry=self.registry)
        self.loop_lag = DurationHistogram()
        self.registry.register(_EngineCollector(engine_stats, self.loop_lag))

    def count(self, endpoint: str, status: int) -> None:
        """Count one finished request (or websocket utterance) with its status."""
        self.requests.labels(endpoint, str(status)).inc()

    def speed(self, endpoint: str, audio_seconds: float, elapsed_s: float) -> None:
        """Record the audio one request produced and how fast."""
        if audio_seconds > 0:
            self.audio_seconds.labels(endpoint).inc(audio_seconds)
            self.real_time_factor.labels(endpoint).observe(elapsed_s / audio_seconds)

    def render(self) -> tuple[bytes, str]:
        """The /metrics body and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


async def watch_loop_lag(histogram: DurationHistogram, period_s: float = 0.01) -> None:
    """Until cancelled: sleep period_s and record how much later than asked the event loop woke up."""
    loop = asyncio.get_running_loop()
    while True:
        asked = loop.time()
        await asyncio.sleep(period_s)
        histogram.observe(max(0.0, loop.time() - asked - period_s))


class ResponseAborted(Exception):
    """Raised by a response body that cannot finish (its status is in `request.state.status`):
    RequestCounter swallows it, so the connection closes without the body's end and no traceback."""


class RequestCounter:
    """ASGI middleware: counts every HTTP request by route and status.

    A handler that knows the outcome better than the response's status line (a stream that failed
    after its headers) sets `request.state.status`. Otherwise a response whose body never finished
    counts as 499 (the client went away) or 500 (it failed).
    """

    def __init__(self, app, metrics: ServerMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        seen = {"status": 500, "complete": False, "failed": False}

        async def watch(message):
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                seen["complete"] = True
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except ResponseAborted:
            pass
        except Exception:
            seen["failed"] = True
            raise
        finally:
            status = seen["status"]
            if not seen["complete"] and status < 400:
                status = 500 if seen["failed"] else 499
            status = scope.get("state", {}).get("status", status)
            route = scope.get("route")
            self.metrics.count(getattr(route, "path", "unmatched"), status)
