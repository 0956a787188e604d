"""Continuous batching: many requests share one frame step; each streams its audio as it decodes.

One background thread runs the loop. Each iteration: drop cancelled requests, prefill a few
waiting ones into free rows, advance every active row by one frame, retire rows that ended
(the last active row moves into the freed one, so rows stay 0..batch-1), then decode the
chunks that are due in one codec call per chunk length, most urgent stream first.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace

import torch

from ..errors import InvalidRequestError, OverloadedError
from ..models.codec_streaming import StreamingCodecDecoder
from .generate import RowPlan
from .prompt import resolve_mode
from .request import SpeechRequest
from .rows import move_row
from .runner import GraphRunner, attend_bucket
from .scheduler import ChunkCandidate, Scheduler, playback_buffer_s
from .step import FrameStep, SamplingFlags
from .stream import Stream

log = logging.getLogger("qtts.engine")

RATE_WINDOW_S = 2.0
FINISH_COUNTERS = {"stop": "completed", "length": "completed", "cancelled": "cancelled", "error": "failed"}


@dataclass
class _Job:
    """An admitted request: its row while it generates, its codec slot until its last chunk is out."""

    stream: Stream
    plan: RowPlan
    slot: int
    position: int  # next talker position of its row
    emitted: int = 0
    pending: list[torch.Tensor] = field(default_factory=list)  # (16,) frames not yet decoded
    chunks_sent: int = 0
    samples_sent: int = 0
    end_reason: str | None = None  # set when generation ended; audio may still be pending

    def chunk_due(self) -> bool:
        schedule = self.stream.chunk_frames
        target = schedule[min(self.chunks_sent, len(schedule) - 1)]
        return len(self.pending) >= target or self.end_reason is not None


class _RateMeter:
    """Frames per second over the last RATE_WINDOW_S seconds."""

    def __init__(self):
        self.events: deque[tuple[float, int]] = deque()

    def add(self, count: int, now: float) -> None:
        self.events.append((now, count))
        while self.events and self.events[0][0] < now - RATE_WINDOW_S:
            self.events.popleft()

    def rate(self, now: float) -> float:
        return sum(count for t, count in list(self.events) if t >= now - RATE_WINDOW_S) / RATE_WINDOW_S


def graph_batch_buckets(max_batch: int) -> tuple[int, ...]:
    """1, 2, 4, 8, then steps of 8 up to max_batch: few graphs, at most 7 padded rows past 8."""
    sizes = [b for b in (1, 2, 4) if b < max_batch] + list(range(8, max_batch, 8))
    return tuple(sizes) + (max_batch,)


def check_chunk_frames(chunk_frames: tuple[int, ...]) -> tuple[int, ...]:
    chunk_frames = tuple(int(n) for n in chunk_frames)
    if not chunk_frames or min(chunk_frames) < 1:
        raise InvalidRequestError(f"chunk_frames must be positive frame counts, e.g. (1, 2, 4, 8); got {chunk_frames}")
    return chunk_frames


class Engine:
    """Serves many concurrent requests of one TTS model with continuous batching.

    max_batch rows decode together; up to max_queue requests wait for a row (more raise
    OverloadedError); max_len bounds each row's prompt + generated frames. chunk_frames is the
    default chunk schedule: chunk k holds chunk_frames[k] frames, the last size repeats.
    batch_buckets: the frame step runs on the smallest bucket that holds the active rows (the rest
    are idle padding), so CUDA graphs are captured per bucket; default: graph_batch_buckets with
    graphs, exact batch sizes without.
    """

    def __init__(self, tts, max_batch: int = 32, max_queue: int = 256, chunk_frames=(1, 2, 4, 8, 12),
                 max_len: int = 4096, scheduler: Scheduler | None = None,
                 batch_buckets: tuple[int, ...] | None = None):
        self.tts, self.max_batch, self.max_queue, self.max_len = tts, max_batch, max_queue, max_len
        if batch_buckets is None:
            batch_buckets = graph_batch_buckets(max_batch) if tts.use_graphs else range(1, max_batch + 1)
        self.batch_buckets = sorted(set(min(b, max_batch) for b in batch_buckets) | {max_batch})
        self.chunk_frames = check_chunk_frames(chunk_frames)
        self.scheduler = scheduler or Scheduler(max_batch)
        step = FrameStep(tts.talker, tts.config, rows=max_batch, max_len=max_len, max_text=max_len,
                         prefix_cache=tts.prefix_cache)
        self.runner = GraphRunner(step, tts.use_graphs)
        self.codec = StreamingCodecDecoder(tts.codec_decoder, max_streams=max_batch, use_graphs=tts.use_graphs,
                                           graph_chunk_frames=self.chunk_frames)
        self.code_limit = tts.codec_config.decoder.codebook_size - 1
        self._queue: deque[Stream] = deque()
        self._rows: list[_Job] = []  # index == row of the frame step
        self._draining: list[_Job] = []  # generation ended, last chunk not decoded yet
        self._wakeup = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._rate = _RateMeter()
        self._counts = {"completed": 0, "cancelled": 0, "failed": 0}

    # ----- public interface ---------------------------------------------------------------------
    def start(self) -> None:
        """Start the loop thread (does nothing if it runs already)."""
        with self._wakeup:
            if self._thread is not None:
                return
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="qtts-engine", daemon=True)
            self._thread.start()

    @torch.no_grad()
    def warmup(self, max_attend: int = 1024) -> None:
        """Capture the CUDA graphs requests will need (every batch bucket with attended lengths up to
        max_attend, prompt prefill, codec chunks), so no request waits behind a capture.

        Call it before start(); it writes garbage into every row, and does nothing without graphs.
        """
        if not self.tts.use_graphs or self._thread is not None:
            return
        started = time.perf_counter()
        state = self.runner.state
        self.runner.flags = SamplingFlags.of([self.tts.sampling()])
        lengths = sorted({attend_bucket(n, self.max_len) for n in (64, 128, 256, 512, 1024, 2048, 4096)
                          if n <= max_attend})
        for batch in self.batch_buckets:
            for length in lengths:
                for _ in range(2):  # eager warm-up, then capture
                    state.positions[:batch] = 0
                    self.runner.frame_step(batch, length)
        if self.runner.step.prompt_runner is not None:
            self.runner.step.prompt_runner.warmup()
        self.codec.warmup()
        torch.cuda.synchronize(self.tts.device)
        log.info("captured CUDA graphs in %.1f s", time.perf_counter() - started)

    def stop(self) -> None:
        """Cancel every queued and active request and wait for the loop thread to end."""
        with self._wakeup:
            thread, self._stopping = self._thread, True
            self._wakeup.notify_all()
        if thread is not None:
            thread.join()
        else:
            self._cancel_all()
        with self._wakeup:
            self._thread = None

    def submit(self, request: SpeechRequest, chunk_frames: tuple[int, ...] | None = None) -> Stream:
        """Queue a request; its Stream yields audio chunks as they decode.

        Raises InvalidRequestError for a request the model cannot take (checked here, before
        queueing, where it costs no model work) and OverloadedError when max_queue requests wait.
        """
        request = resolve_mode(self.tts.config, request.validated())
        schedule = self.chunk_frames if chunk_frames is None else check_chunk_frames(chunk_frames)
        stream = Stream(request, schedule, on_cancel=self._notify)
        with self._wakeup:
            if len(self._queue) >= self.max_queue:
                raise OverloadedError(f"{len(self._queue)} requests are already waiting (max_queue="
                                      f"{self.max_queue}); retry later")
            self._queue.append(stream)
            self._wakeup.notify_all()
        return stream

    def stats(self) -> dict:
        """Load and throughput: active/queued streams, frames_per_second, and finished counts."""
        cache = self.tts.prefix_cache.stats() if self.tts.prefix_cache is not None else {}
        return {"active": len(self._rows) + len(self._draining), "queued": len(self._queue),
                "generating": len(self._rows), "frames_per_second": self._rate.rate(time.perf_counter()),
                "max_batch": self.max_batch, "max_queue": self.max_queue, **self._counts,
                **{f"prefix_cache_{key}": value for key, value in cache.items()}}

    # ----- the loop -----------------------------------------------------------------------------
    def _notify(self) -> None:
        with self._wakeup:
            self._wakeup.notify_all()

    def _has_work(self) -> bool:
        return bool(self._queue or self._rows or self._draining)

    def _run(self) -> None:
        if self.tts.device.type == "cuda" and self.tts.device.index is not None:
            torch.cuda.set_device(self.tts.device)  # the current device is per thread
        with torch.no_grad():
            while True:
                with self._wakeup:
                    self._wakeup.wait_for(lambda: self._stopping or self._has_work())
                    if self._stopping:
                        break
                try:
                    self._iteration()
                except Exception as exc:  # a failure of batched work cannot be pinned on one request
                    log.exception("engine iteration failed; failing the requests in flight")
                    self._fail_all(exc)
            self._cancel_all()

    def _iteration(self) -> None:
        self._drop_cancelled()
        self._admit()
        if self._rows:
            self._step()
        self._emit_chunks()

    def _drop_cancelled(self) -> None:
        with self._wakeup:
            cancelled = [s for s in self._queue if s.cancel_requested]
            if cancelled:
                self._queue = deque(s for s in self._queue if not s.cancel_requested)
        for stream in cancelled:
            self._finish(stream, "cancelled")
        for row in reversed(range(len(self._rows))):
            if self._rows[row].stream.cancel_requested:
                self._close(self._release_row(row), "cancelled")
        for job in [j for j in self._draining if j.stream.cancel_requested]:
            self._draining.remove(job)
            self._close(job, "cancelled")

    def _admit(self) -> None:
        now = time.perf_counter()
        playing = [playback_buffer_s(j.samples_sent / self.tts.sample_rate, j.stream.first_chunk_at, now)
                   for j in self._rows if j.stream.first_chunk_at is not None]
        free_slots = self.max_batch - len(self._rows) - len(self._draining)
        count = min(self.scheduler.admissions(len(self._queue), len(self._rows), min(playing, default=None)),
                    free_slots)
        for _ in range(count):
            with self._wakeup:
                if not self._queue:
                    return
                stream = self._queue.popleft()
            try:
                self._start(stream)
            except Exception as exc:
                log.info("request %s failed: %s", stream.id, exc)
                self._finish(stream, "error", exc)

    def _start(self, stream: Stream) -> None:
        """Prefill a request into the next free row and give it a codec slot."""
        plan = self.tts.plans([stream.request])[0]
        length = plan.prompt.prefill.shape[0]
        room = self.max_len - length - 2
        if room < 1:
            raise InvalidRequestError(f"the prompt ({length} positions) does not fit max_len={self.max_len}; "
                                      "shorten the text or run the engine with a larger max_len")
        plan.max_frames = min(plan.max_frames, room)
        # text rows past the frame cap are never read; dropping them keeps every prompt within max_text
        plan.prompt = replace(plan.prompt, trailing=plan.prompt.trailing[: plan.max_frames])
        row = len(self._rows)
        self.runner.flags = SamplingFlags.of([j.plan.sampling for j in self._rows] + [plan.sampling])
        self.runner.prefill(row, plan.prompt, plan.sampling, plan.seed, plan.min_frames)
        slot = self.codec.allocate()
        job = _Job(stream, plan, slot, position=length)
        voice = stream.request.voice
        try:
            if voice is not None and voice.icl:  # the reference is the decoder's left context
                self.codec.decode([slot], voice.reference_codes.to(self.tts.device).T.unsqueeze(0))
        except Exception:
            self.codec.free(slot)
            raise
        if plan.min_frames == 0 and int(self.runner.state.c0[row]) == self.runner.eos_id:
            job.end_reason = "stop"
            self._draining.append(job)
        else:
            self._rows.append(job)

    def _step(self) -> None:
        """One frame for every active row, then retire the rows that ended (EOS next, or cap reached)."""
        batch = len(self._rows)
        padded = next(b for b in self.batch_buckets if b >= batch)
        # idle padding rows recompute position 0 of their own slot, which no active row reads
        self.runner.state.positions[batch:padded] = 0
        self.runner.flags = SamplingFlags.of([j.plan.sampling for j in self._rows])
        attend_length = max(j.position for j in self._rows) + 1
        frames = self.runner.frame_step(padded, attend_length)[:batch].clone().unbind(0)
        next_c0 = self.runner.state.c0[:batch].tolist()
        self._rate.add(batch, time.perf_counter())
        for job, frame in zip(self._rows, frames):
            job.pending.append(frame)
            job.position += 1
            job.emitted += 1
            job.stream.frames = job.emitted
        for row in reversed(range(batch)):
            job = self._rows[row]
            if next_c0[row] == self.runner.eos_id:
                job.end_reason = "stop"
            elif job.emitted >= job.plan.max_frames:
                job.end_reason = "length"
            if job.end_reason is not None:
                self._release_row(row)
                self._draining.append(job)

    def _release_row(self, row: int) -> _Job:
        """Free `row`, moving the last active row into it; returns the job that held it."""
        job, last = self._rows[row], self._rows.pop()
        if last is not job:
            move_row(self.runner.step, len(self._rows), row, last.position)
            self._rows[row] = last
        return job

    def _emit_chunks(self) -> None:
        """Decode the due chunks, most urgent first, in one codec call per chunk length."""
        now = time.perf_counter()
        candidates = [ChunkCandidate(job, len(job.pending),
                                     playback_buffer_s(job.samples_sent / self.tts.sample_rate,
                                                       job.stream.first_chunk_at, now), job.chunk_due())
                      for job in self._rows + self._draining if job.pending]
        groups: dict[tuple[int, bool], list[_Job]] = {}
        for candidate in self.scheduler.pick_chunks(candidates):
            job = candidate.stream
            groups.setdefault((candidate.pending_frames, job.end_reason is not None), []).append(job)
        decoded: list[tuple[list[_Job], torch.Tensor]] = []
        for (_, last), jobs in groups.items():
            codes = torch.stack([torch.stack(job.pending, dim=1) for job in jobs])  # (B, 16, t)
            waves = self.codec.decode([job.slot for job in jobs], codes.clamp(0, self.code_limit), last=last)
            decoded.append((jobs, waves.float().reshape(-1)))
        if decoded:
            self._push(decoded)
        for job in [j for j in self._draining if not j.pending]:
            self._draining.remove(job)
            self._close(job, job.end_reason)

    def _push(self, decoded: list[tuple[list[_Job], torch.Tensor]]) -> None:
        """Hand each job its decoded chunk; the samples of every group come over in one copy, since
        each blocking copy releases the GIL and taking it back from a busy server thread can cost
        a whole switch interval."""
        samples = torch.cat([waves for _, waves in decoded]).cpu().numpy()
        offset = 0
        for jobs, waves in decoded:
            rows = samples[offset: offset + waves.numel()].reshape(len(jobs), -1)
            offset += waves.numel()
            for job, chunk in zip(jobs, rows):
                job.pending = []
                job.chunks_sent += 1
                job.samples_sent += chunk.shape[0]
                job.stream.push(chunk)

    def _close(self, job: _Job, reason: str, error: Exception | None = None) -> None:
        """Free a job's codec slot and end its stream (its row is already released)."""
        self.codec.free(job.slot)
        self._finish(job.stream, reason, error)

    def _finish(self, stream: Stream, reason: str, error: Exception | None = None) -> None:
        # counted first, so a reader that sees its stream end also sees it in stats();
        # a stream cancelled by its reader has finished already and keeps that reason
        self._counts[FINISH_COUNTERS[stream.finish_reason or reason]] += 1
        stream.finish(reason, error)

    def _fail_all(self, error: Exception) -> None:
        jobs, self._rows, self._draining = self._rows + self._draining, [], []
        for job in jobs:
            self._close(job, "error", error)

    def _cancel_all(self) -> None:
        with self._wakeup:
            queued, self._queue = list(self._queue), deque()
        for stream in queued:
            self._finish(stream, "cancelled")
        jobs, self._rows, self._draining = self._rows + self._draining, [], []
        for job in jobs:
            self._close(job, "cancelled")
