"""The audio of a text spoken in parts (longform.split_request): each part's chunks in order, a pause between.

Parts are submitted as reading reaches them, `ahead` parts before the one being read (None: all at once),
so they generate side by side while the listener hears the earlier ones. It reads like a Stream: from
a thread driving the engine (`take_ready`) or from asyncio (`async for`).
"""
from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable

import numpy as np

from .longform import PAUSE_SAMPLES
from .request import SpeechRequest
from .stream import Stream

ENDED = ("stop", "length")  # a part that finished on its own; any other reason ends the whole


def joined_finish_reason(reasons: list[str | None]) -> str | None:
    """A text's finish reason from its parts' (None: not ended yet): the first that did not end on its
    own (error, cancelled), else None while any goes on, else "length" if any stopped at its frame cap."""
    for reason in reasons:
        if reason is not None and reason not in ENDED:
            return reason
    if None in reasons:
        return None
    return "length" if "length" in reasons else "stop"


class LongformStream:
    """Audio chunks of the parts of one text, in order, PAUSE_SAMPLES of silence between two parts.

    `finish_reason`: None until every part has ended; then "length" if any part stopped at its frame cap,
    else "stop"; "error" or "cancelled" as soon as a part ends so (`error` holds the error).
    submit(part) queues one part on an engine and returns its Stream.
    """

    def __init__(self, submit: Callable[[SpeechRequest], Stream], parts: list[SpeechRequest],
                 ahead: int | None = None):
        self.id = uuid.uuid4().hex
        self.parts = parts
        self.streams: list[Stream] = []  # those of the parts submitted so far
        self._submit, self._ahead = submit, ahead
        self._reading = 0  # the part being read
        self._ended: str | None = None  # "cancelled" by cancel(), "error" when a part could not be submitted
        self._error: Exception | None = None

    def start(self) -> None:
        """Submit the first parts (reading does it too); raises what the engine's submit raises."""
        limit = len(self.parts) if self._ahead is None else min(len(self.parts), self._reading + 1 + self._ahead)
        while len(self.streams) < limit and self._ended is None:
            try:
                self.streams.append(self._submit(self.parts[len(self.streams)]))
            except Exception as exc:
                self._ended, self._error = "error", exc
                self.cancel()
                raise

    @property
    def frames(self) -> int:
        return sum(stream.frames for stream in self.streams)

    @property
    def text_wait_s(self) -> float:
        return sum(stream.text_wait_s for stream in self.streams)

    @property
    def first_chunk_at(self) -> float | None:
        return self.streams[0].first_chunk_at if self.streams else None

    @property
    def finish_reason(self) -> str | None:
        if self._ended is not None:
            return self._ended
        unsubmitted = [None] * (len(self.parts) - len(self.streams))
        return joined_finish_reason([stream.finish_reason for stream in self.streams] + unsubmitted)

    @property
    def error(self) -> Exception | None:
        return self._error or next((s.error for s in self.streams if s.error is not None), None)

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def cancel(self) -> None:
        """Stop every part: those submitted are cancelled, the others never start."""
        if self.finish_reason is None:
            self._ended = "cancelled"
        for stream in self.streams:
            stream.cancel()

    def take_ready(self) -> list[np.ndarray]:
        """The audio that has arrived, in order, without waiting (for a reader that drives the engine);
        raises a part's error once that part failed."""
        self.start()
        chunks = []
        while self._reading < len(self.streams):
            stream = self.streams[self._reading]
            chunks += stream.take_ready()
            if stream.finish_reason == "error":
                raise stream.error
            if stream.finish_reason not in ENDED:
                break
            if not self._next_part():
                break
            chunks.append(_pause())
        return chunks

    async def __aiter__(self) -> AsyncIterator[np.ndarray]:
        self.start()
        while True:
            stream = self.streams[self._reading]
            async for chunk in stream:  # raises the part's error
                yield chunk
            if stream.finish_reason not in ENDED or not self._next_part():
                return
            yield _pause()

    def _next_part(self) -> bool:
        """Move reading to the next part, submitting the parts now due; whether there is one."""
        if self._reading + 1 >= len(self.parts) or self._ended is not None:
            return False
        self._reading += 1
        self.start()
        return True


def _pause() -> np.ndarray:
    return np.zeros(PAUSE_SAMPLES, dtype=np.float32)
