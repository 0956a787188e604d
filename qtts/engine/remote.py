"""The engine in a process of its own, so the server's event loop and the engine loop never wait for
each other's GIL (every torch call lets the other thread in, and getting the GIL back from a busy
event loop costs up to a switch interval each time).

RemoteEngine has Engine's interface. Its child process loads the model, captures the CUDA graphs and
runs an Engine; requests go to it over a pipe and each stream's chunks and end come back over it,
where a reader thread hands them to ordinary Stream objects.
"""
from __future__ import annotations

import itertools
import logging
import multiprocessing
import pickle
import sys
import threading
import time
from pathlib import Path

from ..errors import InvalidRequestError, OverloadedError
from .engine import check_chunk_frames
from .model import ModelBundle
from .planning import check_request
from .request import SpeechRequest
from .stream import Stream

log = logging.getLogger("qtts.engine")

STATS_PERIOD_S = 0.25
IDLE_STATS = {"active": 0, "queued": 0, "generating": 0, "frames_per_second": 0.0, "completed": 0, "cancelled": 0,
              "failed": 0}


def _put(conn, message: tuple) -> None:
    """Plain pickle, tensors by value: Connection.send would share them through file descriptors."""
    conn.send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))


def _get(conn) -> tuple:
    return pickle.loads(conn.recv_bytes())


class EngineProcessError(RuntimeError):
    """The engine process failed to start, or exited while requests were in flight."""


class RemoteEngine:
    """An Engine in a child process, for `model` (which may be loaded with generator=False here).

    warmup() starts the process and waits until its graphs are captured; start() does the same if
    needed; stop() cancels what is in flight and ends the process. If the process dies, the requests
    in flight fail with EngineProcessError, and (with restart) a new process is started, again and
    again with backoff (restart_backoff_s: first and longest wait) until one serves; until then
    `alive` is False and submit raises EngineProcessError. Every process that ends is reaped.
    """

    def __init__(self, model: ModelBundle, max_batch: int = 32, max_queue: int = 256, chunk_frames=(1, 2, 4, 8, 12),
                 max_len: int | None = None, start_timeout_s: float = 1800.0, restart: bool = True, scheduler=None,
                 restart_backoff_s: tuple[float, float] = (0.5, 30.0), speculate_text: bool = True):
        self.model, self.max_batch, self.max_queue = model, max_batch, max_queue
        self.speculate_text = speculate_text
        self.max_len = model.max_len if max_len is None else max_len
        self.scheduler = scheduler
        self.chunk_frames = check_chunk_frames(chunk_frames)
        self.start_timeout_s = start_timeout_s
        self.restart, self.restart_backoff_s = restart, restart_backoff_s
        self._stopping = threading.Event()
        self._restarter: threading.Thread | None = None
        self._streams: dict[int, Stream] = {}
        self._keys = itertools.count()
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._stats = self._idle_stats()
        self._process = None
        self._conn = None
        self._reader: threading.Thread | None = None
        self._exited = False  # the process ended on its own

    @property
    def alive(self) -> bool:
        """Whether the engine process is running (False before start and after it exited or stopped)."""
        return self._process is not None and not self._exited

    @property
    def ready(self) -> bool:
        """Whether it serves without waiting for graph captures: the process says ready only after warm-up."""
        return self.alive

    # ----- Engine's interface -------------------------------------------------------------------
    def warmup(self) -> None:
        """Start the engine process and wait until it serves (model loaded, graphs captured)."""
        if self._process is not None:
            return
        self._stopping.clear()
        self._attach(*self._spawn())

    def start(self) -> None:
        self.warmup()

    def stop(self) -> None:
        """Cancel every request in flight and end the engine process."""
        with self._lock:
            self._stopping.set()  # no restart from here on; a start under way gives up within 0.2 s
            restarter = self._restarter
        if restarter is not None:
            restarter.join(30)
        with self._lock:
            process, reader = self._process, self._reader
        if process is None:
            return
        self._send(("stop",))
        process.join(30)
        _end(process)
        if reader is not None:
            reader.join(5)
        self._end_all("cancelled")
        with self._send_lock:
            self._conn.close()
            self._process = self._conn = self._reader = None
        self._exited = False

    def submit(self, request: SpeechRequest, chunk_frames: tuple[int, ...] | None = None) -> Stream:
        """Queue a request (checked here, as Engine.submit does); its Stream yields audio chunks."""
        request = check_request(self.model, request)
        schedule = self.chunk_frames if chunk_frames is None else check_chunk_frames(chunk_frames)
        with self._lock:  # the reader marks the process gone under this lock too
            if not self.alive:
                raise EngineProcessError("the engine process is not running")
            waiting = len(self._streams) - self.max_batch
            if waiting >= self.max_queue:
                raise OverloadedError(f"{waiting} requests are already waiting (max_queue={self.max_queue}); "
                                      "retry later")
            key = next(self._keys)
            stream = _ProxyStream(request, schedule, on_cancel=lambda: self._send(("cancel", key)),
                                  send_text=lambda message, key=key: self._send((message[0], key, *message[1:])))
            self._streams[key] = stream
        self._send(("submit", key, request, schedule))
        return stream

    def stats(self) -> dict:
        """The engine process's last report (every STATS_PERIOD_S), with this side's limits."""
        return dict(self._stats)

    # ----- the process --------------------------------------------------------------------------
    def _spawn(self):
        """A new engine process that serves, and the parent's end of its pipe."""
        context = multiprocessing.get_context("spawn")  # CUDA cannot be used in a forked child
        conn, child_conn = context.Pipe()
        # the bound on waiting requests is kept here; the child's queue also holds those not admitted yet,
        # and cancelled ones until its next iteration drops them
        engine_options = {"max_batch": self.max_batch, "max_queue": 2 * (self.max_batch + self.max_queue),
                          "chunk_frames": self.chunk_frames, "max_len": self.max_len, "scheduler": self.scheduler,
                          "speculate_text": self.speculate_text}
        process = context.Process(target=_serve_engine, name="qtts-engine", daemon=True,
                                  args=(child_conn, str(self.model.folder), self.model.load_options, engine_options,
                                        logging.getLogger().level, sys.getswitchinterval()))
        process.start()
        child_conn.close()
        try:
            message = self._wait_for_start(process, conn)
        except BaseException:
            _end(process)
            conn.close()
            raise
        if message[0] != "ready":
            _end(process)
            conn.close()
            raise EngineProcessError(f"the engine process failed to start: {message[1]}")
        return process, conn

    def _wait_for_start(self, process, conn) -> tuple:
        """The child's first message ("ready" or "failed"); EngineProcessError if it dies or hangs first."""
        deadline = time.monotonic() + self.start_timeout_s
        try:
            while not conn.poll(0.2):
                if self._stopping.is_set():
                    raise EngineProcessError("the engine is stopping")
                if not process.is_alive() or time.monotonic() > deadline:
                    raise EngineProcessError(f"the engine process did not start (exit code {process.exitcode})")
            return _get(conn)
        except (EOFError, OSError):  # it died after the pipe said there was something to read
            _end(process)
            raise EngineProcessError(f"the engine process exited while starting (exit code {process.exitcode})") \
                from None

    def _attach(self, process, conn) -> None:
        """Serve through this process (unless stop() came first: then end it)."""
        with self._lock:
            if self._stopping.is_set():
                _end(process)
                conn.close()
                return
            old_conn, self._process, self._conn, self._exited = self._conn, process, conn, False
        if old_conn is not None:
            old_conn.close()
        self._reader = threading.Thread(target=self._read, args=(process, conn), name="qtts-engine-reader",
                                        daemon=True)
        self._reader.start()

    def _respawn(self) -> None:
        """Start engine processes until one serves or stop() is called, waiting longer after each failure."""
        log.warning("the engine process exited; starting a new one")
        delay, longest = self.restart_backoff_s
        for attempt in itertools.count(1):
            try:
                self._attach(*self._spawn())
            except Exception as exc:  # whatever went wrong, a later attempt may succeed
                if self._stopping.is_set():
                    return
                log.error("engine process start %d failed (%s); next try in %.1f s", attempt, exc, delay)
            else:
                if not self._stopping.is_set():
                    log.info("the engine process serves again")
                return
            if self._stopping.wait(delay):
                return
            delay = min(2 * delay, longest)

    # ----- the pipe -----------------------------------------------------------------------------
    def _send(self, message: tuple) -> None:
        with self._send_lock:
            if self._conn is None:
                return
            try:
                _put(self._conn, message)
            except (BrokenPipeError, OSError):  # the process is gone; the reader fails the streams
                pass

    def _read(self, process, conn) -> None:
        stopped = False
        try:
            stopped = self._relay(conn)
        except Exception:
            log.exception("reading from the engine process failed")
        finally:
            if not stopped:
                _end(process)
            with self._lock:
                self._exited = True
                self._stats = self._idle_stats()  # nothing runs until a new process reports
                restart = self.restart and not self._stopping.is_set() and not stopped
                if restart:
                    self._restarter = threading.Thread(target=self._respawn, name="qtts-engine-restart",
                                                       daemon=True)
                    self._restarter.start()
            if stopped:
                self._end_all("cancelled")
            else:
                self._end_all("error", "the engine process exited")

    def _relay(self, conn) -> bool:
        """Hand the child's messages to the streams until the pipe ends; True when the child said it stopped."""
        while True:
            try:
                message = _get(conn)
            except (EOFError, OSError):
                return False
            kind = message[0]
            if kind == "chunk":
                _, key, chunk, frames = message
                stream = self._streams.get(key)
                if stream is not None:
                    stream.frames = frames
                    stream.push(chunk)
            elif kind == "finish":
                _, key, reason, error, frames, text_wait_s = message
                with self._lock:
                    stream = self._streams.pop(key, None)
                if stream is not None:
                    stream.frames, stream.text_wait_s = frames, text_wait_s
                    stream.finish(reason, error)
            elif kind == "stats":  # the child's max_queue also counts requests not admitted yet
                self._stats = {**message[1], "max_queue": self.max_queue}
            elif kind == "stopped":
                return True

    def _idle_stats(self) -> dict:
        return dict(IDLE_STATS, max_batch=self.max_batch, max_queue=self.max_queue)

    def _end_all(self, reason: str, error_message: str | None = None) -> None:
        """Finish every stream; each gets its own error (a shared one would grow a traceback per reader)."""
        with self._lock:
            streams, self._streams = list(self._streams.values()), {}
        for stream in streams:
            stream.finish(reason, None if error_message is None else EngineProcessError(error_message))


def _end(process) -> None:
    """Kill a process if it still runs, and reap it."""
    if process.is_alive():
        process.kill()
    process.join()


class _ProxyStream(Stream):
    """The parent's side of a stream: text still being written goes down the pipe to the engine's stream."""

    def __init__(self, request, chunk_frames, on_cancel, send_text):
        super().__init__(request, chunk_frames, on_cancel)
        self._send_text = send_text
        self.text_ended = not request.text_open

    def append_text(self, piece: str) -> None:
        if not isinstance(piece, str):
            raise InvalidRequestError("text pieces must be strings")
        if self.text_ended:
            raise InvalidRequestError("the text has ended: end_text() was called")
        self._send_text(("text", piece))

    def end_text(self) -> None:
        if not self.text_ended:
            self.text_ended = True
            self._send_text(("end_text",))


class _RelayStream(Stream):
    """The child's side of a stream: chunks and the end go straight down the pipe."""

    def __init__(self, request, chunk_frames, on_cancel, send, key: int, forget, **options):
        super().__init__(request, chunk_frames, on_cancel, **options)
        self._send, self._key, self._forget = send, key, forget

    def push(self, chunk) -> None:
        if self.finish_reason is None:
            if self.first_chunk_at is None:
                self.first_chunk_at = time.perf_counter()
            self._send(("chunk", self._key, chunk, self.frames))

    def finish(self, reason: str, error: Exception | None = None) -> bool:
        if not super().finish(reason, error):
            return False
        self._forget(self._key)
        self._send(("finish", self._key, reason, error, self.frames, self.text_wait_s))
        return True


def _serve_engine(conn, folder: str, load_options: dict, engine_options: dict, log_level: int,
                  switch_interval_s: float) -> None:
    """The engine process: load, warm up, then serve the pipe until told to stop or the parent goes."""
    import torch

    # the pipe reader below needs the GIL to hand a request over while the engine thread runs Python;
    # at the default 5 ms interval an arrival can wait that long before the engine sees it
    sys.setswitchinterval(switch_interval_s)

    from .engine import Engine
    from .model import load_model
    from .pauses import freeze_heap

    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s[engine]: %(message)s")
    try:
        engine = Engine(load_model(Path(folder), **load_options), **engine_options)
        engine.warmup()
        freeze_heap()
        engine.start()
    except BaseException as exc:  # report why, then exit
        _put(conn, ("failed", f"{type(exc).__name__}: {exc}"))
        raise
    send_lock = threading.Lock()
    streams: dict[int, Stream] = {}
    stopped = threading.Event()

    def send(message: tuple) -> None:
        with send_lock:
            try:
                _put(conn, message)
            except (BrokenPipeError, OSError):
                stopped.set()
            except Exception:  # e.g. an error object that does not pickle: send it as text
                if message[0] != "finish":
                    raise
                _, key, reason, error, frames, text_wait_s = message
                _put(conn, ("finish", key, reason, RuntimeError(f"{type(error).__name__}: {error}"), frames,
                            text_wait_s))

    def report_stats() -> None:
        while not stopped.wait(STATS_PERIOD_S):
            send(("stats", engine.stats()))

    send(("ready",))
    threading.Thread(target=report_stats, name="qtts-engine-stats", daemon=True).start()
    with torch.no_grad():
        while not stopped.is_set():
            try:
                message = _get(conn)
            except (EOFError, OSError):  # the parent is gone
                break
            kind = message[0]
            if kind == "submit":
                _, key, request, schedule = message

                def make(request, schedule, on_cancel, key=key, **options) -> _RelayStream:
                    # registered before the engine sees it, so an early end also unregisters it
                    stream = streams[key] = _RelayStream(request, schedule, on_cancel, send, key,
                                                         lambda k: streams.pop(k, None), **options)
                    return stream

                try:
                    engine.submit(request, schedule, make_stream=make)
                except Exception as exc:
                    streams.pop(key, None)
                    send(("finish", key, "error", exc, 0, 0.0))
            elif kind == "cancel":
                stream = streams.get(message[1])
                if stream is not None:
                    stream.cancel()
            elif kind in ("text", "end_text"):
                stream = streams.get(message[1])
                if stream is not None and not stream.done:
                    try:
                        stream.append_text(message[2]) if kind == "text" else stream.end_text()
                    except InvalidRequestError:  # text after its end: the parent refuses it first
                        pass
            elif kind == "stop":
                break
    stopped.set()
    engine.stop()
    send(("stopped",))
