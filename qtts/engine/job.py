"""One admitted request's state in the engine (its row, codec slot, text and audio), a frame in flight, and the
engine's frame rate."""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch

from ..text_stream import ROLE_TOKENS
from .planning import RowPlan
from .stream import Stream

RATE_WINDOW_S = 2.0


@dataclass(eq=False)  # one job is one row's run: a stream started again has another
class Job:
    """An admitted request: its row while it generates, its codec slot until its last chunk is out."""

    stream: Stream
    plan: RowPlan
    slot: int
    position: int  # next talker position of its row
    emitted: int = 0
    decoded: list[np.ndarray] = field(default_factory=list)  # audio of frames decoded, not yet sent
    chunks_sent: int = 0
    samples_sent: int = 0
    end_reason: str | None = None  # set when generation ended; its last frame may still be decoding
    joined: int = 0  # frames the engine had launched when this job was admitted
    text_tokens: int = 0  # trailing text tokens in its row of the step
    text_complete: bool = True  # its text has ended and its last text row (end of text) is in
    held_since: float | None = None  # when its row began waiting for text
    # the current frame's codes (16,), decoded while its row waited for the text row its talker half reads
    codes_ahead: torch.Tensor | None = None
    # started on text not settled yet: the ids its prefill read, until the settled ids confirm them (its
    # audio is held back until then); and the stream's text_version they were last checked at
    tentative_ids: list[int] | None = None
    text_checked: int = 0  # a stream with tentative text has had a piece: it is checked at least once

    @property
    def runnable(self) -> bool:
        """Whether its next frame can run: the text row it reads is in (or, past its text, padding)."""
        return self.text_complete or self.emitted < self.text_tokens

    def has_new_text(self) -> bool:
        """Whether its stream holds text its row has not been given (or, started on tentative text, not
        checked) yet."""
        if self.tentative_ids is not None:
            return self.stream.text_version != self.text_checked
        if self.text_complete:
            return False
        ids, ended = self.stream.text_state()
        return ended or ids - (ROLE_TOKENS + 1) > self.text_tokens

    def chunk_due(self) -> bool:
        """Enough decoded frames for the next chunk, or the last ones (frames decode in order, so once
        generation has ended the codec call that returns its audio holds its last frame); never while its
        audio is held back."""
        if self.tentative_ids is not None:
            return False
        schedule = self.stream.chunk_frames
        target = schedule[min(self.chunks_sent, len(schedule) - 1)]
        return bool(self.decoded) and (len(self.decoded) >= target or self.end_reason is not None)


@dataclass
class CodecCall:
    """A frame in flight: the jobs whose frame it decodes, their codes, the codec call decoding them, and the
    jobs whose talker half ran (a row waiting for text decodes its frame ahead of its talker half)."""

    jobs: list[Job]  # the rows whose frame the codec decodes
    rows: list[int]  # their rows in the step
    frames: torch.Tensor  # (B, 16) the frame's codes
    samples: torch.Tensor  # (B, samples per frame) float32, filled when `done` has passed
    done: torch.cuda.Event | None
    advanced: list[tuple[int, Job]] = field(default_factory=list)  # (row, job) whose talker half ran
    taken: set[int] = field(default_factory=set)  # rows whose audio was collected early (first frames)
    step_done: torch.cuda.Event | None = None  # recorded after the frame step that made these frames


class RateMeter:
    """Frames per second over the last RATE_WINDOW_S seconds."""

    def __init__(self):
        self.events: deque[tuple[float, int]] = deque()

    def add(self, count: int, now: float) -> None:
        self.events.append((now, count))
        while self.events and self.events[0][0] < now - RATE_WINDOW_S:
            self.events.popleft()

    def rate(self, now: float) -> float:
        return sum(count for t, count in list(self.events) if t >= now - RATE_WINDOW_S) / RATE_WINDOW_S
