"""One submitted request's audio as the engine produces it: iterate it from a thread or from asyncio."""
from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator

import numpy as np

from ..errors import InvalidRequestError
from ..text_stream import AssistantTextStream
from .request import SpeechRequest


def _wake(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


def _wake_soon(loop: asyncio.AbstractEventLoop, future: asyncio.Future) -> None:
    try:
        loop.call_soon_threadsafe(_wake, future)
    except RuntimeError:  # that reader's event loop has closed; nobody waits any more
        pass


class Stream:
    """Audio chunks of one request: float32 mono at 24 kHz, in order, then the end.

    Iteration raises the request's error if it failed and simply ends when it finished or was
    cancelled; `finish_reason` says which ("stop", "length", "cancelled" or "error").
    Times (`created_at`, `first_chunk_at`) are `time.perf_counter()` seconds.
    """

    def __init__(self, request: SpeechRequest, chunk_frames: tuple[int, ...], on_cancel: Callable[[], None],
                 keep_codes: bool = False, text: AssistantTextStream | None = None):
        self.id = uuid.uuid4().hex
        self.request = request
        self.chunk_frames = chunk_frames
        self.created_at = time.perf_counter()
        self.first_chunk_at: float | None = None
        self.frames = 0  # codec frames generated so far (12.5 per second of audio)
        self.codes: list | None = [] if keep_codes else None  # with keep_codes: each frame's (16,) codes
        # text still being written (request.text_open): its settled ids, and whether it has ended
        self._text = text
        self._text_pieces: list[str] = []
        self.text_ended = text is None
        self.text_version = 0  # counts the pieces and the end given so far: whether the text changed
        self.text_wait_s = 0.0  # time its row waited for text (not an engine stall)
        self.finish_reason: str | None = None
        self.error: Exception | None = None
        self.cancel_requested = False
        self._on_cancel = on_cancel
        self._chunks: deque[np.ndarray] = deque()
        self._changed = threading.Condition()
        self._async_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = []

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def cancel(self) -> None:
        """Stop generating: iteration ends now, the row and codec slot are freed at the next frame boundary."""
        self.cancel_requested = True
        if self.finish("cancelled"):
            self._on_cancel()

    # ----- text still being written ---------------------------------------------------------------
    def append_text(self, piece: str) -> None:
        """More of the text (a request made with text_open): it is spoken as soon as its tokens settle."""
        if not isinstance(piece, str):
            raise InvalidRequestError("text pieces must be strings")
        with self._changed:
            if self.text_ended:
                raise InvalidRequestError("the text has ended: end_text() was called")
            self._text.append(piece)
            self._text_pieces.append(piece)
            self.text_version += 1
        self._on_cancel()  # wakes the engine

    def end_text(self) -> None:
        """The text is complete (a request made with text_open); the rest is spoken, then the stream ends."""
        with self._changed:
            if self.text_ended:
                return
            self._text.end()
            self.text_ended = True
            self.text_version += 1
        self._on_cancel()

    def text_state(self) -> tuple[int, bool]:
        """How many ids of the assistant template up to the text have settled, and whether the text has ended."""
        with self._changed:
            return len(self._text.ids), self.text_ended

    def text_so_far(self) -> tuple[list[int], bool, str]:
        """The settled ids of the assistant template up to the text (text_stream.AssistantTextStream.ids),
        whether the text has ended, and the text itself."""
        with self._changed:
            return list(self._text.ids), self.text_ended, "".join(self._text_pieces)

    def tentative_ids(self) -> list[int]:
        """The ids of the assistant template up to the text as if it ended here (AssistantTextStream.tentative_ids):
        the settled ids, then those of the text after them, which more text may still change."""
        with self._changed:
            return list(self._text.tentative_ids())

    # ----- engine side --------------------------------------------------------------------------
    def push(self, chunk: np.ndarray) -> None:
        """Hand one decoded chunk to the reader (ignored once the stream has finished)."""
        with self._changed:
            if self.finish_reason is not None:
                return
            if self.first_chunk_at is None:
                self.first_chunk_at = time.perf_counter()
            self._chunks.append(chunk)
            self._notify()

    def finish(self, reason: str, error: Exception | None = None) -> bool:
        """End the stream once (later calls are ignored; returns whether this one counted).

        Chunks already pushed are still read, except after a cancellation, which drops them.
        """
        with self._changed:
            if self.finish_reason is not None:
                return False
            self.finish_reason, self.error = reason, error
            if reason == "cancelled":
                self._chunks.clear()
            self._notify()
            return True

    def _notify(self) -> None:
        self._changed.notify_all()
        for loop, future in self._async_waiters:
            _wake_soon(loop, future)
        self._async_waiters.clear()

    # ----- reader side --------------------------------------------------------------------------
    def _take(self) -> np.ndarray | None:
        """The next chunk, None at the end (raising the error of a failed request); call with the lock held."""
        if self._chunks:
            return self._chunks.popleft()
        if self.error is not None:
            raise self.error
        return None

    def take_ready(self) -> list[np.ndarray]:
        """The chunks that have arrived, without waiting (for a reader that drives the engine itself);
        raises the request's error once it failed and no chunk is left."""
        with self._changed:
            chunks = list(self._chunks)
            self._chunks.clear()
            if not chunks and self.error is not None:
                raise self.error
        return chunks

    def __iter__(self) -> Iterator[np.ndarray]:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._chunks or self.finish_reason is not None)
                chunk = self._take()
            if chunk is None:
                return
            yield chunk

    async def __aiter__(self) -> AsyncIterator[np.ndarray]:
        loop = asyncio.get_running_loop()
        while True:
            with self._changed:
                ready = bool(self._chunks) or self.finish_reason is not None
                chunk = self._take() if ready else None
                if not ready:
                    future = loop.create_future()
                    self._async_waiters.append((loop, future))
            if not ready:
                try:
                    await future
                finally:
                    with self._changed:
                        if (loop, future) in self._async_waiters:
                            self._async_waiters.remove((loop, future))
            elif chunk is None:
                return
            else:
                yield chunk
