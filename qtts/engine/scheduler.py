"""Who runs next: how many waiting requests to prefill, and whose audio chunk is sent first.

Audio is played in real time, so a stream's urgency is its client-side playback buffer: the audio
already sent minus the time since its first chunk. A stream that has sent nothing yet is the most
urgent of all (its listener is waiting in silence), then the one closest to running dry.
"""
from __future__ import annotations

from dataclasses import dataclass

NOT_STARTED = float("-inf")  # buffer of a stream that has sent no audio yet


def playback_buffer_s(audio_sent_s: float, first_chunk_at: float | None, now: float) -> float:
    """Seconds of audio the client still holds, assuming it plays from the first chunk on."""
    if first_chunk_at is None:
        return NOT_STARTED
    return audio_sent_s - (now - first_chunk_at)


@dataclass
class ChunkCandidate:
    """A stream with decoded audio not sent yet."""

    stream: object
    buffer_s: float  # from playback_buffer_s
    due: bool  # its chunk schedule says send now (enough frames, or its generation ended)


class Scheduler:
    """FIFO admission with a per-frame prefill cap, and deadline-ordered chunk delivery.

    The prefills run between two frames are capped, so a burst of arrivals cannot stall the streams
    already playing: at one while any playing stream's buffer is below low_buffer_s or a stream is
    still waiting for its first chunk (low_buffer_s=0 turns this off), at burst_prefills_per_frame
    (default: twice max_prefills_per_frame) while every stream holds at least high_buffer_s or none is
    active, and at max_prefills_per_frame otherwise.
    """

    def __init__(self, max_batch: int, max_prefills_per_frame: int = 2, low_buffer_s: float = 0.0,
                 burst_prefills_per_frame: int | None = None, high_buffer_s: float = 1.0):
        if max_batch < 1 or max_prefills_per_frame < 1:
            raise ValueError("max_batch and max_prefills_per_frame must be >= 1")
        self.max_batch = max_batch
        self.max_prefills_per_frame = max_prefills_per_frame
        self.low_buffer_s = low_buffer_s
        burst = 2 * max_prefills_per_frame if burst_prefills_per_frame is None else burst_prefills_per_frame
        self.burst_prefills_per_frame = max(burst, max_prefills_per_frame)
        self.high_buffer_s = high_buffer_s

    def admissions(self, waiting: int, active: int, lowest_buffer_s: float | None) -> int:
        """How many waiting requests (taken first come, first served) to prefill before the next frame.

        lowest_buffer_s: the smallest playback buffer among active streams (NOT_STARTED for one that
        has sent nothing yet), None if none is active.
        """
        cap = self.max_prefills_per_frame
        if self.low_buffer_s > 0 and lowest_buffer_s is not None and lowest_buffer_s < self.low_buffer_s:
            cap = 1
        elif lowest_buffer_s is None or lowest_buffer_s >= self.high_buffer_s:
            cap = self.burst_prefills_per_frame
        return max(0, min(waiting, self.max_batch - active, cap))

    def pick_chunks(self, candidates: list[ChunkCandidate]) -> list[ChunkCandidate]:
        """The due candidates to send this frame, most urgent (lowest buffer) first."""
        return sorted((c for c in candidates if c.due), key=lambda c: c.buffer_s)
