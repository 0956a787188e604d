"""Continuous batching: many requests share one frame step; each streams its audio as it decodes.

Every path runs this loop: the server on a thread of its own (`start`), the Python API and the CLI
on the caller's thread (`step`). Each iteration: drop cancelled requests; confirm or start again the rows
started on text not settled yet, and give rows the text settled since; launch one frame for every
active row (the code predictor's half, then the codec on the new frames, then the talker's half);
while that runs, build the next prompts (on a stream of their own), prefill them into the rows after
the active ones (queued behind the step), and hand out the audio of the previous frame; then retire
rows that ended (the last active row moves into the freed one, so rows stay 0..batch-1), send the
first audio of streams that just started, and prefill a few more waiting requests.

The codec decodes every row's frame in one batched call per iteration, on its own CUDA stream, so
it overlaps the talker's half and the next frame; the chunk schedule only decides how the decoded
audio is grouped into the chunks a reader receives.
"""
from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
from collections import deque

import numpy as np
import torch

from ..errors import EngineFailedError, InvalidRequestError, OverloadedError
from ..graphs import batch_buckets as graph_batch_buckets
from ..graphs import bucket_for, to_device
from ..kernels.compile_watch import compiles, watch_compiles
from ..models.codec_streaming import StreamingCodecDecoder
from .job import CodecCall, Job, RateMeter
from .model import ModelBundle
from .pauses import DurationHistogram, gc_pauses
from ..text_stream import ROLE_TOKENS, AssistantTextStream
from .planning import RowPlan, check_request, default_frame_cap, plan_request, warm_requests
from .request import SpeechRequest
from .rows import move_row
from .runner import GraphRunner
from .scheduler import ChunkCandidate, Scheduler, playback_buffer_s
from .step import FrameStep, PrefillItem, SamplingFlags
from .stream import Stream
from .warmup import capture_frame_steps, warm_prefill_sampling

log = logging.getLogger("qtts.engine")

FINISH_COUNTERS = {"stop": "completed", "length": "completed", "cancelled": "cancelled", "error": "failed"}
# launching the next frame's codes before this frame's end is read back pays at few rows, where the host's
# turn is a large share of a frame; at many, an arrival mid-frame would waste a whole code predictor pass
SPECULATE_MAX_ROWS = 4
SLOW_ITERATION_S = 0.1  # an iteration this long after warm-up is logged: streams felt it
# a first frame is sent as soon as the codec has it, waiting for the codec if need be; past this many rows the
# codec's call outlasts the frame step by milliseconds the next frame would use, so a first frame the codec
# has not finished goes out with the next iteration's audio, after the next frame is launched
FIRST_AUDIO_WAIT_MAX_ROWS = 32


def _on(stream: torch.cuda.Stream | None):
    """Work queued in the block goes to `stream` (None: no CUDA, the block just runs)."""
    return torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()


def check_chunk_frames(chunk_frames: tuple[int, ...]) -> tuple[int, ...]:
    chunk_frames = tuple(int(n) for n in chunk_frames)
    if not chunk_frames or min(chunk_frames) < 1:
        raise InvalidRequestError(f"chunk_frames must be positive frame counts, e.g. (1, 2, 4, 8); got {chunk_frames}")
    return chunk_frames


class Engine:
    """Serves many concurrent requests of one model with continuous batching.

    max_batch rows decode together; up to max_queue requests wait for a row (more raise
    OverloadedError; None: no bound); max_len bounds each row's prompt + generated frames (default:
    the model's). chunk_frames is the default chunk schedule: chunk k holds chunk_frames[k] frames,
    the last size repeats. batch_buckets: the frame step runs on the smallest bucket that holds the
    active rows (the rest are idle padding), so CUDA graphs are captured per bucket; default:
    graphs.batch_buckets with graphs, exact batch sizes without. speculate_text: a request whose text is
    still being written starts on its first word before that word's tokens settle, its audio held back
    until they settle as they were (if not, it starts again from the settled text; the output is the same).

    Run it either on a loop thread of its own (start/stop) or from the caller's thread, one
    iteration per `step()` call, never both.
    """

    def __init__(self, model: ModelBundle, max_batch: int = 32, max_queue: int | None = 256,
                 chunk_frames=(1, 2, 4, 8, 12), max_len: int | None = None, scheduler: Scheduler | None = None,
                 batch_buckets: tuple[int, ...] | None = None, speculate_text: bool = True):
        if not model.has_generator:
            raise ValueError("the engine needs a model loaded with its generator")
        self.model, self.max_batch, self.max_queue = model, max_batch, max_queue
        self.max_len = model.max_len if max_len is None else max_len
        if batch_buckets is None:
            batch_buckets = graph_batch_buckets(max_batch) if model.use_graphs else range(1, max_batch + 1)
        self.batch_buckets = sorted(set(min(b, max_batch) for b in batch_buckets) | {max_batch})
        self.chunk_frames = check_chunk_frames(chunk_frames)
        self.speculate_text = speculate_text
        self.scheduler = scheduler or Scheduler(max_batch)
        on_cuda = model.device.type == "cuda"
        self._late_captures = 0
        self._late_compiles = 0
        if on_cuda:
            watch_compiles()
        step = FrameStep(model.talker, model.config, rows=max_batch, max_len=self.max_len, max_text=self.max_len,
                         prefix_cache=model.prefix_cache, kv_cache=model.kv_cache)
        self.runner = GraphRunner(step, model.use_graphs, on_late_capture=self._count_late_capture)
        # every call decodes one frame per stream; other lengths (ICL references) run eagerly
        self.codec = StreamingCodecDecoder(model.codec_decoder, max_streams=max_batch, use_graphs=model.use_graphs,
                                           graph_chunk_frames=(1,))
        # high priority: a stream's first audio should not queue behind the next frame step's kernels
        self._codec_stream = torch.cuda.Stream(model.device, priority=-1) if on_cuda else None
        # prompts are built on a stream of their own: their host<->device copies then wait for it
        # alone, not for the frame step in flight
        self._prompt_stream = torch.cuda.Stream(model.device) if on_cuda else None
        samples_per_frame = model.codec_config.decoder.samples_per_frame
        # two host buffers: a codec call is launched before the previous one's audio is read
        self._samples = [torch.zeros(max_batch, samples_per_frame, pin_memory=on_cuda) for _ in range(2)]
        self._turn = 0
        self._next_c0 = torch.zeros(max_batch, dtype=torch.long, pin_memory=on_cuda)  # each step's codebook 0
        self._admitted = 0  # requests admitted in this iteration (the scheduler's cap is per frame)
        self._frames_launched = 0
        self._in_flight: CodecCall | None = None
        # the next frame's codes, launched before this frame's end was read back: (jobs, codes (B, 16))
        self._speculative: tuple[list[Job], torch.Tensor] | None = None
        self._plans: dict[Stream, RowPlan | Exception] = {}  # prompts built ahead for queued streams
        self._queue: deque[Stream] = deque()
        self._rows: list[Job] = []  # index == row of the frame step
        self._draining: list[Job] = []  # generation ended, last frame still decoding
        self._wakeup = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._ready = not model.use_graphs  # without graphs there is nothing to warm up
        self._rows_held = False  # some row of the step is marked inactive (waiting for text)
        self._text_wait_s = 0.0
        self._rate = RateMeter()
        self._iteration_time = DurationHistogram()
        self._gc_pauses = gc_pauses()
        self._counts = {"completed": 0, "cancelled": 0, "failed": 0}
        self._speculations = {"confirmations": 0, "rollbacks": 0}

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
    def warmup(self) -> None:
        """Capture every CUDA graph requests can need (each batch bucket in every sampling variant, the
        prompt prefills, the codec's calls), so no request waits behind a capture; `ready` after it.

        Call it before any request runs: it writes garbage into every row. Does nothing without graphs.
        """
        if not self.model.use_graphs or self._ready:
            return
        started = time.perf_counter()
        capture_frame_steps(self.runner, self.batch_buckets)
        if self.runner.step.prompt_runner is not None:
            self.runner.step.prompt_runner.warmup()
        warm_prefill_sampling(self.runner, self.model, self.max_batch)
        self.codec.warmup()
        torch.cuda.synchronize(self.model.device)
        self.runner.graphs.mark_ready()
        self._warm_requests()
        self._ready = True
        log.info("captured %d CUDA graphs in %.1f s", len(self.runner.graphs.graphs) + len(self.codec.conv_layouts),
                 time.perf_counter() - started)

    def _warm_requests(self) -> None:
        """Serve a few short requests of every kind this model takes, in every sampling variant, two at a time
        (even and odd rows) and one with its text still coming: the eager work around the graphs (prompt
        building, prefills, prefix caching, the codec's first call) then compiles its Triton kernels here,
        not under a user's first requests. Their counts and cache entries are dropped afterwards."""
        for index, request in enumerate(warm_requests(self.model)):
            stream = self.submit(request)
            if request.text_open:  # the rest in pieces settling one token and several at a time
                for piece in (" there", ",", " my good", " friend."):
                    self.step()
                    stream.append_text(piece)
                stream.end_text()
            if index % 2:
                while self.step():
                    pass
        while self.step():
            pass
        if self.model.prefix_cache is not None:
            self.model.prefix_cache.clear(counters=True)
        self._counts = dict.fromkeys(self._counts, 0)
        self._iteration_time, self._rate, self._text_wait_s = DurationHistogram(), RateMeter(), 0.0

    @property
    def ready(self) -> bool:
        """Whether requests run without waiting for a graph capture (warmup done, or no graphs)."""
        return self._ready

    @property
    def alive(self) -> bool:
        """Whether the loop thread runs (RemoteEngine: whether its engine process serves)."""
        return self._thread is not None and self._thread.is_alive()

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

    def submit(self, request: SpeechRequest, chunk_frames: tuple[int, ...] | None = None,
               make_stream=Stream) -> Stream:
        """Queue a request; its Stream yields audio chunks as they decode.

        Raises InvalidRequestError for a request the model cannot take (checked here, before
        queueing, where it costs no model work) and OverloadedError when max_queue requests wait.
        make_stream(request, chunk_frames, on_cancel, **options) builds the stream (a Stream subclass).
        A request with text_open takes the rest of its text through the stream's append_text and end_text;
        it starts once its first words have settled (with speculate_text: once its first word has arrived),
        and its row waits (keeping its state, while the others go on) whenever its next text token has not
        arrived.
        """
        request = check_request(self.model, request)
        schedule = self.chunk_frames if chunk_frames is None else check_chunk_frames(chunk_frames)
        if request.text_open:
            stream = make_stream(request, schedule, on_cancel=self._notify,
                                 text=AssistantTextStream(self.model.tokenizer))
            if request.text:
                stream.append_text(request.text)
        else:
            stream = make_stream(request, schedule, on_cancel=self._notify)
        with self._wakeup:
            if self.max_queue is not None and len(self._queue) >= self.max_queue:
                raise OverloadedError(f"{len(self._queue)} requests are already waiting (max_queue="
                                      f"{self.max_queue}); retry later")
            self._queue.append(stream)
            self._wakeup.notify_all()
        return stream

    @torch.no_grad()
    def step(self) -> bool:
        """Run one iteration on the caller's thread (an engine without a loop thread); whether another
        would do more (False when idle, or when every request left waits for text)."""
        if self._thread is not None:
            raise RuntimeError("this engine runs its own loop thread; read its streams instead of stepping it")
        if self._can_progress():
            self._guarded_iteration()
        return self._can_progress()

    def stats(self) -> dict:
        """Load and throughput: active/queued streams, frames_per_second, finished counts, graphs captured
        late, and the histograms (DurationHistogram.snapshot) of loop iteration times and GC pauses."""
        cache = self.model.prefix_cache.stats() if self.model.prefix_cache is not None else {}
        return {"active": len(self._rows) + len(self._draining), "queued": len(self._queue),
                "generating": len(self._rows), "frames_per_second": self._rate.rate(time.perf_counter()),
                "max_batch": self.max_batch, "max_queue": self.max_queue, **self._counts,
                "late_graph_captures": self._late_captures, "late_kernel_compiles": self._late_compiles,
                "waiting_for_text": sum(not job.runnable for job in self._rows), "text_wait_seconds": self._text_wait_s,
                **{f"text_speculation_{key}": value for key, value in self._speculations.items()},
                **{f"prefix_cache_{key}": value for key, value in cache.items()},
                "iteration_seconds": self._iteration_time.snapshot(),
                "gc_pause_seconds": self._gc_pauses.histogram.snapshot()}

    # ----- the loop -----------------------------------------------------------------------------
    def _notify(self) -> None:
        with self._wakeup:
            self._wakeup.notify_all()

    def _count_late_capture(self, key, seconds: float) -> None:
        self._late_captures += 1
        log.warning("captured a CUDA graph after warm-up (%s, %.0f ms): requests waited for it", key, 1000 * seconds)

    def _has_work(self) -> bool:
        return bool(self._queue or self._rows or self._draining or self._in_flight)

    def _can_progress(self) -> bool:
        """Whether an iteration would do anything: not when every request waits for text."""
        if self._in_flight or any(job.stream.cancel_requested for job in self._rows + self._draining):
            return True
        # a draining row started on tentative text waits for it to settle
        if any(job.tentative_ids is None or job.has_new_text() for job in self._draining):
            return True
        if any(job.runnable or job.codes_ahead is None or job.has_new_text() for job in self._rows):
            return True
        with self._wakeup:
            return any(stream.cancel_requested or self._text_ready(stream) for stream in self._queue)

    def _text_ready(self, stream: Stream) -> bool:
        """Whether a stream has text the engine has not taken yet: all of it, or (open text) enough to start."""
        if not stream.request.text_open:
            return True
        ids, ended = stream.text_state()
        if ended:
            return True
        voice = stream.request.voice
        if voice is not None and voice.icl:  # its text rows lie over the reference in the prefill: all of them
            return False
        return ids > ROLE_TOKENS or (self.speculate_text and len(stream.tentative_ids()) > ROLE_TOKENS)

    def _run(self) -> None:
        if self.model.device.type == "cuda" and self.model.device.index is not None:
            torch.cuda.set_device(self.model.device)  # the current device is per thread
        with torch.no_grad():
            while True:
                with self._wakeup:
                    self._wakeup.wait_for(lambda: self._stopping or self._can_progress())
                    if self._stopping:
                        break
                self._guarded_iteration()
            self._cancel_all()

    def _guarded_iteration(self) -> None:
        started = time.perf_counter()
        # only an engine that warmed up (graphs) can call a compile or a slow iteration late
        watching = self._ready and self.model.use_graphs and self.model.device.type == "cuda"
        compiled_before = len(compiles()) if watching else 0
        try:
            self._iteration()
        except Exception as exc:  # a failure of batched work cannot be pinned on one request
            log.exception("engine iteration failed; failing the requests in flight")
            self._fail_all(exc)
        seconds = time.perf_counter() - started
        self._iteration_time.observe(seconds)
        if watching:
            self._report_late_compiles(compiled_before)
            if seconds > SLOW_ITERATION_S:
                log.warning("an engine iteration took %.0f ms (%d rows, %d queued, %d admitted)",
                            1000 * seconds, len(self._rows), len(self._queue), self._admitted)

    def _report_late_compiles(self, seen: int) -> None:
        late = compiles()[seen:]
        self._late_compiles += len(late)
        for compiled in late:
            log.warning("compiled a Triton kernel after warm-up (%.0f ms; every stream waited): %s",
                        1000 * compiled.seconds, compiled.kernel)

    def _iteration(self) -> None:
        self._admitted = 0
        self._drop_cancelled()
        self._settle_tentative_starts()
        self._feed_text()
        call = self._launch_step() if self._rows else None
        self._prepare_prompts()  # host work for the next prefills, while this frame runs
        self._collect_audio()  # the previous frame's audio, also while this frame runs
        if call is not None:
            self._in_flight = call
            self._finish_step(call)
            self._send_first_audio(call)
        self._admit()  # new rows prefill while the codec runs, and join the next frame

    def _drop_cancelled(self) -> None:
        with self._wakeup:
            cancelled = [s for s in self._queue if s.cancel_requested]
            if cancelled:
                self._queue = deque(s for s in self._queue if not s.cancel_requested)
        for stream in cancelled:
            self._plans.pop(stream, None)
            self._finish(stream, "cancelled")
        for row in reversed(range(len(self._rows))):
            if self._rows[row].stream.cancel_requested:
                self._close(self._release_row(row), "cancelled")
        for job in [j for j in self._draining if j.stream.cancel_requested]:
            self._draining.remove(job)
            self._close(job, "cancelled")

    def _settle_tentative_starts(self) -> None:
        """Check the rows started on tentative text against the text that arrived since: confirm those whose
        prefill read what has settled (their held audio goes out now), start the others again."""
        for job in [j for j in self._rows + self._draining if j.tentative_ids is not None and j.has_new_text()]:
            job.text_checked = job.stream.text_version  # read first: a piece arriving meanwhile is checked next
            ids, ended, _ = job.stream.text_so_far()
            if len(ids) > ROLE_TOKENS:
                if ids[: ROLE_TOKENS + 1] == job.tentative_ids:
                    self._confirm_start(job)
                else:
                    self._start_again(job)
            elif ended or job.stream.tentative_ids()[: ROLE_TOKENS + 1] != job.tentative_ids:
                self._start_again(job)  # its first word grew into other tokens: start on those

    def _confirm_start(self, job: Job) -> None:
        """The tentative ids a job's prefill read have settled as they were: send what it holds back."""
        job.tentative_ids = None
        self._speculations["confirmations"] += 1
        if job.chunk_due():
            self._push(job)
        if job in self._draining and not self._in_flight_holds(job):  # it ended, its last audio is in
            self._draining.remove(job)
            self._close(job, job.end_reason)

    def _start_again(self, job: Job) -> None:
        """Drop a job whose prefill read tentative ids that settled (or are about to settle) otherwise: its row,
        codec slot and held audio go, and its stream returns to the head of the queue, to start on the text
        as it is now. None of its audio was sent, so the output is that of a start on the settled text."""
        if job in self._rows:
            self._release_row(self._rows.index(job))
        else:
            self._draining.remove(job)
        self.codec.free(job.slot)
        stream = job.stream
        if job.held_since is not None:
            self._count_text_wait(job, time.perf_counter())
        stream.frames = 0
        if stream.codes is not None:
            stream.codes.clear()
        self._speculations["rollbacks"] += 1
        with self._wakeup:
            self._queue.appendleft(stream)

    def _in_flight_holds(self, job: Job) -> bool:
        """Whether the frame in flight decodes or advances `job` (its audio is collected with that call)."""
        call = self._in_flight
        return call is not None and (job in call.jobs or any(other is job for _, other in call.advanced))

    def _admit(self) -> None:
        if not self._queue:  # nothing to admit: skip the per-row buffer scan below
            return
        now = time.perf_counter()
        # a row that has sent nothing yet counts as the least buffered (NOT_STARTED): no burst then.
        # Rows admitted since the last launch are left out: the per-frame cap already counts them
        playing = [playback_buffer_s(j.samples_sent / self.model.sample_rate, j.stream.first_chunk_at, now)
                   for j in self._rows if j.joined < self._frames_launched]
        free_slots = self.max_batch - len(self._rows) - len(self._draining)
        count = min(self.scheduler.admissions(len(self._queue), len(self._rows), min(playing, default=None))
                    - self._admitted, free_slots)  # the cap is per frame; some may have been admitted while it ran
        starting = []
        for stream in self._take_ready(count):
            try:
                starting.append(self._job_for(stream))
            except Exception as exc:
                log.info("request %s failed: %s", stream.id, exc)
                self._finish(stream, "error", exc)
        if starting:
            self._admitted += len(starting)
            self._start(starting)

    def _take_ready(self, count: int) -> list[Stream]:
        """Up to `count` queued streams that can start (first come, first served), out of the queue."""
        with self._wakeup:
            ready = list(itertools.islice((s for s in self._queue if self._text_ready(s)), max(count, 0)))
            if ready:
                taken = set(map(id, ready))
                self._queue = deque(s for s in self._queue if id(s) not in taken)
        return ready

    def _prepare_prompts(self) -> bool:
        """Build the prompts (and prefix keys) of the requests that may be admitted at the end of this
        iteration, on the prompt stream, so the frame step in flight keeps running meanwhile; whether
        there were any to build."""
        with self._wakeup:
            head = list(itertools.islice((s for s in self._queue if self._text_ready(s)),
                                         self.scheduler.burst_prefills_per_frame))
        # a plan of text still being written is built when it starts: the text may have grown by then
        head = [stream for stream in head if stream not in self._plans and not stream.request.text_open]
        if not head:
            return False
        self._build_plans(head)
        return True

    def _build_plans(self, streams: list[Stream], open_text: tuple[list[int], bool, str] | None = None) -> None:
        """Each stream's plan (or the error building it raised) into self._plans, built on the prompt
        stream and finished before this returns: prefills read them on another stream. open_text: the text
        so far of a (single) request whose text is still being written."""
        with _on(self._prompt_stream):
            for stream in streams:
                try:
                    self._plans[stream] = plan_request(self.model, stream.request, self.max_len, open_text)
                except Exception as exc:  # raised again when the request is started
                    self._plans[stream] = exc
        if self._prompt_stream is not None:
            self._prompt_stream.synchronize()

    def _job_for(self, stream: Stream) -> Job:
        """A request's plan and a codec slot: a job ready to prefill."""
        tentative = None
        if stream.request.text_open:  # planned as it starts: the text may have grown since it was queued
            text, tentative = self._text_to_start_on(stream)
            self._build_plans([stream], text)
        elif stream not in self._plans:  # arrived after the last _prepare_prompts
            self._build_plans([stream])
        plan = self._plans.pop(stream)
        if isinstance(plan, Exception):
            raise plan
        if self._prompt_stream is not None:  # made on the prompt stream, freed after use on the prefill's
            prefill_stream = torch.cuda.current_stream(self.model.device)
            for tensor in (plan.prompt.prefill, plan.prompt.trailing, plan.prompt.pad_row):
                tensor.record_stream(prefill_stream)
        voice = stream.request.voice
        with _on(self._codec_stream):  # slot state is only touched in codec-stream order
            slot = self.codec.allocate()
            try:
                if voice is not None and voice.icl:  # the reference is the decoder's left context
                    self.codec.decode([slot], voice.reference_codes.T.unsqueeze(0))
            except Exception:
                self.codec.free(slot)
                raise
        job = Job(stream, plan, slot, position=plan.prompt.prefill.shape[0])
        if plan.text_open:  # its trailing rows hold the text tokens settled so far, no end-of-text row yet
            job.text_tokens, job.text_complete = plan.prompt.trailing.shape[0], False
            job.tentative_ids = tentative  # checked against the text at the next iteration (text_checked 0)
        return job

    def _text_to_start_on(self, stream: Stream) -> tuple[tuple[list[int], bool, str], list[int] | None]:
        """The text so far (Stream.text_so_far) to plan an open-text request on, and, when it starts before
        its first text token settled (speculate_text), the tentative ids its prefill reads."""
        ids, ended, text = stream.text_so_far()
        if ended or len(ids) > ROLE_TOKENS:
            return (ids, ended, text), None
        # the prefill reads the role ids and the first text id; later text rows are fed once settled
        tentative = stream.tentative_ids()[: ROLE_TOKENS + 1]
        return (tentative, False, text), tentative

    def _start(self, jobs: list[Job]) -> None:
        """Prefill jobs, their prompts through the talker together, into the rows after the active ones;
        they join the next frame."""
        first = len(self._rows)
        self.runner.flags = SamplingFlags.of([j.plan.sampling for j in self._rows + jobs])
        items = [PrefillItem(j.plan.prompt, j.plan.sampling, j.plan.seed, j.plan.min_frames) for j in jobs]
        try:
            self.runner.prefill_rows(first, items)
        except Exception as exc:
            if len(jobs) == 1:
                log.info("request %s failed at its prefill: %s", jobs[0].stream.id, exc)
                self._close(jobs[0], "error", exc)
                return
            for job in jobs:  # one request's failure must not fail the others admitted with it
                self._start([job])
            return
        for job in jobs:
            job.joined = self._frames_launched
        self._rows.extend(jobs)
        self._close_ended_at_prefill(first)

    def _close_ended_at_prefill(self, first: int) -> None:
        """Close the new rows from `first` on whose prefill sampled EOS; EOS is masked before min_frames
        samples, so only min_frames=0 can end there."""
        for row in reversed(range(first, len(self._rows))):
            job = self._rows[row]
            if job.plan.min_frames == 0 and int(self.runner.state.c0[row]) == self.runner.eos_id:
                self._release_row(row)
                if job.tentative_ids is None:
                    self._close(job, "stop")
                else:  # it ends with no audio if its tentative text settles as it was
                    job.end_reason = "stop"
                    self._draining.append(job)

    def _launch_step(self) -> CodecCall | None:
        """Launch one frame for every row that can run (None if every row waits for text): the code
        predictor's half, the codec on its new frame (on the codec stream), then the talker's half, which
        the codec overlaps. A row waiting for text runs along in the step but keeps its state; its frame's
        codes do not depend on the text row it waits for, so the codec decodes them at once (codes_ahead),
        and its talker half runs on those codes once the text row is in."""
        jobs = list(self._rows)
        batch = len(jobs)
        runnable = self._mark_waiting_for_text(jobs)
        decode = [job.codes_ahead is None for job in jobs]
        if not any(runnable) and not any(decode):
            return None
        self._frames_launched += 1
        padded = bucket_for(batch, self.batch_buckets)
        # idle padding rows recompute position 0 of their own slot, which no active row reads
        self.runner.state.positions[batch:padded].fill_(0)
        self.runner.flags = SamplingFlags.of([j.plan.sampling for j in jobs])
        frames = self._take_speculative(jobs)
        if frames is None:
            # a copy: the codec reads it on its own stream while the next frame overwrites the step's codes
            frames = self.runner.predict_frame(padded)[:batch].clone()
        self._use_codes_ahead(jobs, runnable, frames)
        rows = [row for row, ok in enumerate(decode) if ok]
        if len(rows) == batch:
            decoded = frames
        else:
            decoded = frames[to_device(torch.tensor(rows, dtype=torch.long), frames.device)]
        call = self._launch_codec([jobs[row] for row in rows], rows, decoded)
        for row in rows:
            if not runnable[row]:
                jobs[row].codes_ahead = frames[row].clone()
        if not any(runnable):
            return call
        call.advanced = [(row, job) for row, job in enumerate(jobs) if runnable[row]]
        self.runner.advance(padded, max(j.position for j in jobs) + 1)
        # read after the step without waiting for what is queued behind it (prefills admitted meanwhile)
        self._next_c0[:batch].copy_(self.runner.state.c0[:batch], non_blocking=self._codec_stream is not None)
        if self.model.device.type == "cuda":
            call.step_done = torch.cuda.Event()
            call.step_done.record()
        if not self._queue and batch <= SPECULATE_MAX_ROWS:
            # nobody waits to join: the next frame's codes go now, so the device keeps working while the host
            # reads this frame's end; rows that end meanwhile only drop out of them (_take_speculative)
            self._speculative = (jobs, self.runner.predict_frame(padded)[:batch].clone())
        return call

    def _use_codes_ahead(self, jobs: list[Job], runnable: list[bool], frames: torch.Tensor) -> None:
        """Rows that run now on a frame decoded while they waited: that frame's codes, not the ones predicted
        again, go to the talker's half (frames (B, 16) and the step's codes)."""
        rows = [row for row, job in enumerate(jobs) if runnable[row] and job.codes_ahead is not None]
        if not rows:
            return
        index = to_device(torch.tensor(rows, dtype=torch.long), frames.device)
        codes = torch.stack([jobs[row].codes_ahead for row in rows])
        frames[index] = codes
        self.runner.step.codes[index] = codes
        for row in rows:
            jobs[row].codes_ahead = None

    def _feed_text(self) -> None:
        """Give the rows of text still being written the tokens settled since (and the end-of-text row once
        it ended): the same rows a prompt of the whole text has."""
        for row, job in enumerate(self._rows):
            if not job.has_new_text():
                continue
            ids, ended, text = job.stream.text_so_far()
            new = ids[ROLE_TOKENS + 1 + job.text_tokens:]
            rows = self._text_embeddings(new)
            if ended:
                rows = torch.cat([rows, self._end_of_text_row()])
                if job.stream.request.max_frames is None:  # the cap a prompt of the whole text gets
                    job.plan.max_frames = min(job.plan.max_frames, default_frame_cap(text))
            state = self.runner.state
            start = job.text_tokens
            stop = min(start + rows.shape[0], state.text_rows.shape[1])
            state.text_rows[row, start:stop] = rows[: stop - start]
            job.text_tokens += len(new)
            job.text_complete = ended
            state.text_len[row].fill_(min(job.text_tokens + int(ended), state.text_rows.shape[1]))

    def _text_embeddings(self, ids: list[int]) -> torch.Tensor:
        """Text rows (n, H) of token ids, as a prompt's trailing rows are made."""
        device = self.model.device
        return self.model.talker.embed_text(to_device(torch.tensor([ids], dtype=torch.long), device))[0]

    def _end_of_text_row(self) -> torch.Tensor:
        """The tts_eos text row (1, H), made in the same call as in a prompt (with tts_bos and tts_pad)."""
        tokens = self.model.config.tokens
        return self._text_embeddings([tokens.tts_bos, tokens.tts_eos, tokens.tts_pad])[1:2]

    def _mark_waiting_for_text(self, jobs: list[Job]) -> list[bool]:
        """Which rows can run this frame; the others are marked inactive in the step (their state stays),
        and the time each waits for its text is counted."""
        runnable = [job.runnable for job in jobs]
        now = time.perf_counter()
        for job, ok in zip(jobs, runnable):
            if not ok and job.held_since is None:
                job.held_since = now
            elif ok and job.held_since is not None:
                self._count_text_wait(job, now)
        active = self.runner.state.active
        if not all(runnable):
            active[: len(jobs)] = to_device(torch.tensor(runnable, dtype=torch.bool), active.device)
            self._rows_held = True
        elif self._rows_held:
            active.fill_(True)
            self._rows_held = False
        return runnable

    def _count_text_wait(self, job: Job, now: float) -> None:
        """Its row stops waiting for text: count the time it waited."""
        waited = now - job.held_since
        job.stream.text_wait_s += waited
        self._text_wait_s += waited
        job.held_since = None

    def _take_speculative(self, jobs: list[Job]) -> torch.Tensor | None:
        """The codes launched ahead for `jobs`, if they were launched for the same requests (some of which may
        have left since, their rows taken by others): re-ordered to the rows as they are now, and put where
        the talker's half reads them."""
        speculative, self._speculative = self._speculative, None
        if speculative is None:
            return None
        launched_for, frames = speculative
        index = {id(job): row for row, job in enumerate(launched_for)}
        if any(id(job) not in index for job in jobs):  # a new row: its codes were never predicted
            return None
        order = [index[id(job)] for job in jobs]
        if order != list(range(len(launched_for))):
            frames = frames[to_device(torch.tensor(order, dtype=torch.long), frames.device)]
        self.runner.step.codes[: len(jobs)] = frames
        return frames

    def _wait_for_step(self, call: CodecCall) -> None:
        """Wait for the frame step, admitting waiting requests meanwhile (their prompts built on the prompt
        stream, their prefills queued behind the step), so they join the next frame with no host work in
        between."""
        if call.step_done is None:
            return
        while not call.step_done.query():
            if self._queue:
                self._admit()
            if not self._prepare_prompts():
                call.step_done.synchronize()
                return

    def _finish_step(self, call: CodecCall) -> None:
        """Count the frames the call decodes and the rows it advanced, retire the rows that ended (EOS next,
        or cap reached)."""
        self._wait_for_step(call)
        self._rate.add(len(call.jobs), time.perf_counter())
        frames = None  # the rows' codes as views made in one call, for streams that keep them
        for index, job in enumerate(call.jobs):
            job.stream.frames += 1
            if job.stream.codes is not None:
                frames = call.frames.unbind(0) if frames is None else frames
                job.stream.codes.append(frames[index])
        if not call.advanced:
            return
        next_c0 = self._next_c0[: max(row for row, _ in call.advanced) + 1].tolist()
        for _, job in call.advanced:
            job.position += 1
            job.emitted += 1
        for row, job in sorted(call.advanced, key=lambda pair: pair[0], reverse=True):
            if next_c0[row] == self.runner.eos_id:
                job.end_reason = "stop"
            elif job.emitted >= job.plan.max_frames:
                job.end_reason = "length"
            if job.end_reason is not None:
                self._release_row(row)
                self._draining.append(job)

    def _release_row(self, row: int) -> Job:
        """Free `row`, moving the last active row into it; returns the job that held it."""
        job, last = self._rows[row], self._rows.pop()
        if last is not job:
            move_row(self.runner.step, len(self._rows), row, last.position)
            self._rows[row] = last
        return job

    def _launch_codec(self, jobs: list[Job], rows: list[int], frames: torch.Tensor) -> CodecCall:
        """Decode one frame (B, 16) of each job in one call, on the codec stream; collected next iteration."""
        samples = self._samples[self._turn][: len(jobs)]
        if not jobs:  # every row runs on a frame decoded while it waited for text
            return CodecCall(jobs, rows, frames, samples, None)
        self._turn ^= 1
        done = None
        if self._codec_stream is not None:
            self._codec_stream.wait_stream(torch.cuda.current_stream(self.model.device))  # the step's stream
            frames.record_stream(self._codec_stream)
        with _on(self._codec_stream):
            waves = self.codec.decode([job.slot for job in jobs],
                                      frames.clamp(0, self.model.code_limit).unsqueeze(-1))
            samples.copy_(waves, non_blocking=self._codec_stream is not None)
            if self._codec_stream is not None:
                done = torch.cuda.Event()
                done.record(self._codec_stream)
        return CodecCall(jobs, rows, frames, samples, done)

    def _send_first_audio(self, call: CodecCall) -> None:
        """Streams whose first frame is in `call` get its audio now, not with the rest next iteration:
        the codec ran alongside the talker's half, so it is (nearly) done."""
        rows = [row for row, job in enumerate(call.jobs) if job.chunks_sent == 0 and not job.decoded]
        if not rows:
            return
        if call.done is not None and not call.done.query():
            if len(call.jobs) > FIRST_AUDIO_WAIT_MAX_ROWS:
                return  # _collect_audio sends it
            call.done.synchronize()
        for row in rows:
            job = call.jobs[row]
            job.decoded.append(call.samples[row].numpy().copy())
            call.taken.add(row)
            if job.chunk_due():
                self._push(job)

    def _collect_audio(self) -> None:
        """Take the audio of the codec call in flight; send the chunks that are due, most urgent first."""
        call, self._in_flight = self._in_flight, None
        if call is None:
            return
        if call.done is not None:
            call.done.synchronize()
        for row, (job, samples) in enumerate(zip(call.jobs, call.samples.numpy())):
            if row not in call.taken:  # a copy of its own: a view would keep every row's frame alive
                job.decoded.append(samples.copy())
        now = time.perf_counter()
        # a row advanced on a frame decoded earlier may have ended with it: its last chunk is due now
        jobs = list({id(job): job for job in call.jobs + [job for _, job in call.advanced]}.values())
        candidates = [ChunkCandidate(job, playback_buffer_s(job.samples_sent / self.model.sample_rate,
                                                            job.stream.first_chunk_at, now), True)
                      for job in jobs if job.chunk_due()]
        for candidate in self.scheduler.pick_chunks(candidates):
            self._push(candidate.stream)
        for job in jobs:
            # its last frame is out (one started on tentative text ends once that text is confirmed)
            if job.end_reason is not None and job in self._draining and job.tentative_ids is None:
                self._draining.remove(job)
                self._close(job, job.end_reason)

    def _push(self, job: Job) -> None:
        """Send a job's decoded audio as its next chunk."""
        chunk = np.concatenate(job.decoded) if len(job.decoded) > 1 else job.decoded[0]
        job.decoded = []
        job.chunks_sent += 1
        job.samples_sent += chunk.shape[0]
        job.stream.push(chunk)

    def _close(self, job: Job, reason: str, error: Exception | None = None) -> None:
        """Free a job's codec slot and end its stream (its row is already released)."""
        self.codec.free(job.slot)
        self._finish(job.stream, reason, error)

    def _finish(self, stream: Stream, reason: str, error: Exception | None = None) -> None:
        # counted first, so a reader that sees its stream end also sees it in stats();
        # a stream cancelled by its reader has finished already and keeps that reason
        self._counts[FINISH_COUNTERS[stream.finish_reason or reason]] += 1
        stream.finish(reason, error)

    def _fail_all(self, error: Exception) -> None:
        self._in_flight = self._speculative = None
        jobs, self._rows, self._draining = self._rows + self._draining, [], []
        for job in jobs:  # each stream its own error: one object re-raised by many readers grows its traceback
            failure = EngineFailedError(f"the engine failed: {type(error).__name__}: {error}")
            failure.__cause__ = error
            self._close(job, "error", failure)

    def _cancel_all(self) -> None:
        with self._wakeup:
            queued, self._queue = list(self._queue), deque()
        self._plans.clear()
        for stream in queued:
            self._finish(stream, "cancelled")
        self._in_flight = self._speculative = None
        jobs, self._rows, self._draining = self._rows + self._draining, [], []
        for job in jobs:
            self._close(job, "cancelled")
