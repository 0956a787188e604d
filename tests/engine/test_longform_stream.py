"""A text's parts read as one stream: in order whatever order they finish in, a pause between, parts
submitted as reading reaches them, and one part's failure or a cancel ending the whole."""
import asyncio

import numpy as np
import pytest

from qtts.engine.longform import PAUSE_SAMPLES
from qtts.engine.longform_stream import LongformStream
from qtts.engine.request import SpeechRequest
from qtts.engine.stream import Stream
from qtts.errors import EngineFailedError, OverloadedError


class FakeEngine:
    """Hands out Streams that the test fills and finishes by hand."""

    def __init__(self, refuse_after: int | None = None):
        self.streams: list[Stream] = []
        self.refuse_after = refuse_after

    def submit(self, request: SpeechRequest) -> Stream:
        if self.refuse_after is not None and len(self.streams) >= self.refuse_after:
            raise OverloadedError("no room")
        stream = Stream(request, (1,), on_cancel=lambda: None)
        self.streams.append(stream)
        return stream


def _parts(count: int) -> list[SpeechRequest]:
    return [SpeechRequest(text=f"Part {index}.") for index in range(count)]


def _chunk(value: float, size: int = 4) -> np.ndarray:
    return np.full(size, value, dtype=np.float32)


def _finish(stream: Stream, value: float, reason: str = "stop") -> None:
    stream.push(_chunk(value))
    stream.push(_chunk(value, 2))
    stream.finish(reason)


def _expected(values: list[float]) -> np.ndarray:
    pieces = []
    for value in values:
        if pieces:
            pieces.append(np.zeros(PAUSE_SAMPLES, dtype=np.float32))
        pieces += [_chunk(value), _chunk(value, 2)]
    return np.concatenate(pieces)


def test_parts_come_in_order_with_a_pause_between_whatever_order_they_finish_in():
    engine = FakeEngine()
    stream = LongformStream(engine.submit, _parts(3))
    assert stream.take_ready() == [] and len(engine.streams) == 3  # all at once without `ahead`
    _finish(engine.streams[2], 3.0, "length")
    _finish(engine.streams[1], 2.0)
    assert stream.take_ready() == [] and not stream.done  # part 0 has not spoken yet
    engine.streams[0].push(_chunk(1.0))
    first = stream.take_ready()
    engine.streams[0].push(_chunk(1.0, 2))
    engine.streams[0].finish("stop")
    audio = np.concatenate(first + stream.take_ready())
    np.testing.assert_array_equal(audio, _expected([1.0, 2.0, 3.0]))
    assert stream.done and stream.finish_reason == "length"  # part 2 stopped at its cap


def test_parts_are_submitted_as_reading_reaches_them():
    engine = FakeEngine()
    stream = LongformStream(engine.submit, _parts(4), ahead=1)
    stream.start()
    assert [s.request.text for s in engine.streams] == ["Part 0.", "Part 1."]
    _finish(engine.streams[1], 2.0)
    stream.take_ready()
    assert len(engine.streams) == 2  # part 1 is done, but part 0 is still being heard
    _finish(engine.streams[0], 1.0)
    stream.take_ready()  # part 0 read, part 1 read: parts 2 and 3 are due
    assert len(engine.streams) == 4 and not stream.done
    _finish(engine.streams[2], 3.0)
    _finish(engine.streams[3], 4.0)
    stream.take_ready()
    assert stream.finish_reason == "stop" and stream.frames == 0


def test_async_reading_gives_the_same_audio():
    engine = FakeEngine()
    stream = LongformStream(engine.submit, _parts(3), ahead=0)

    async def read() -> np.ndarray:
        return np.concatenate([chunk async for chunk in stream])

    async def produce() -> None:  # each part once it has been submitted (ahead=0: when the last was read)
        for number in range(3):
            while len(engine.streams) <= number:
                await asyncio.sleep(0.001)
            _finish(engine.streams[number], number + 1.0)

    async def both():
        audio, _ = await asyncio.gather(read(), produce())
        return audio

    np.testing.assert_array_equal(asyncio.run(both()), _expected([1.0, 2.0, 3.0]))
    assert stream.finish_reason == "stop"


def test_a_failed_part_fails_the_text_and_cancel_stops_every_part():
    engine = FakeEngine()
    stream = LongformStream(engine.submit, _parts(3))
    stream.start()
    _finish(engine.streams[0], 1.0)
    error = EngineFailedError("the engine failed")
    engine.streams[1].finish("error", error)
    with pytest.raises(EngineFailedError):
        stream.take_ready()
    assert stream.finish_reason == "error" and stream.error is error
    stream.cancel()
    assert engine.streams[2].finish_reason == "cancelled"

    engine = FakeEngine()
    stream = LongformStream(engine.submit, _parts(3), ahead=1)
    stream.start()
    stream.cancel()
    assert stream.finish_reason == "cancelled" and [s.finish_reason for s in engine.streams] == ["cancelled"] * 2
    assert stream.take_ready() == [] and len(engine.streams) == 2  # no part starts after a cancel


def test_a_part_the_engine_refuses_ends_the_text_with_that_error():
    engine = FakeEngine(refuse_after=2)
    stream = LongformStream(engine.submit, _parts(3), ahead=1)
    stream.start()
    _finish(engine.streams[0], 1.0)
    with pytest.raises(OverloadedError):
        stream.take_ready()
    assert stream.finish_reason == "error" and isinstance(stream.error, OverloadedError)
    assert engine.streams[1].finish_reason == "cancelled"
