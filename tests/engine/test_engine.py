"""Continuous batching: every request sounds exactly as it would alone, whoever shares its batch."""
import asyncio
import threading

import numpy as np
import pytest
import torch

from qtts.api import TTS
from qtts.engine import engine as engine_module
from qtts.engine.engine import Engine
from qtts.engine.planning import plan_request
from qtts.engine.prompt import build_prompt
from qtts.engine.request import SpeechRequest
from qtts.engine.scheduler import Scheduler
from qtts.errors import InvalidRequestError, OverloadedError, UnknownSpeakerError

TEXTS = ["Hello there.", "A somewhat longer sentence to speak aloud.", "Short.", "One two three four five.",
         "The quick brown fox.", "Good morning to you all."]


@pytest.fixture(scope="module")
def tts(tiny_custom_voice):
    return TTS.from_pretrained(tiny_custom_voice, device="cpu")


@pytest.fixture(scope="module")
def eos_tts(tiny_custom_voice):
    """A model that stops early: EOS outranks the first code greedy decoding picks for TEXTS[0]."""
    tts = TTS.from_pretrained(tiny_custom_voice, device="cpu")
    token = int(tts.generate(_request(tts, TEXTS[0], greedy=True, max_frames=1)).codes[0, 0])
    with torch.no_grad():
        head = tts.talker.codec_head.weight
        head[tts.config.talker.codec_eos_id] = head[token] * 1.5
    return tts


@pytest.fixture
def engine_factory(tts):
    """Engines on the module's model, stopped at the end of the test."""
    engines = []

    def make(**options) -> Engine:
        engine = Engine(tts.model, **options)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.stop()


def _request(tts, text, **options):
    return tts.request(text, speaker=tts.speakers[0], language="english", **options)


def _plan(tts, request):
    return plan_request(tts.model, request, tts.max_len)


def _audio(stream) -> np.ndarray:
    chunks = list(stream)
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)


def _assert_same_as_solo(tts, request, stream, audio):
    solo = tts.generate(request)
    assert stream.finish_reason == solo.finish_reason
    assert stream.frames == solo.codes.shape[0]
    assert audio.shape == solo.samples.shape
    np.testing.assert_allclose(audio, solo.samples, rtol=0, atol=1e-5)


@pytest.mark.parametrize("batch_buckets", [None, (4,)], ids=["exact batch", "padded to 4 rows"])
def test_concurrent_greedy_requests_equal_their_solo_runs(tts, engine_factory, batch_buckets):
    engine = engine_factory(max_batch=4, chunk_frames=(1, 2, 3), batch_buckets=batch_buckets)
    engine.start()
    requests = [_request(tts, text, greedy=True, max_frames=frames)
                for text, frames in zip(TEXTS, (12, 5, 17, 8, 3, 10))]
    streams = [engine.submit(r) for r in requests[:2]]
    first = iter(streams[0])
    head = [next(first)]  # later requests join a batch that is already running
    streams += [engine.submit(r, chunk_frames=(2, 5)) for r in requests[2:]]
    audio = [np.concatenate(head + list(first))] + [_audio(s) for s in streams[1:]]
    for request, stream, samples in zip(requests, streams, audio):
        _assert_same_as_solo(tts, request, stream, samples)
    stats = engine.stats()
    assert stats["active"] == 0 and stats["queued"] == 0 and stats["completed"] == len(requests)
    iterations = stats["iteration_seconds"]  # one frame of every active row per iteration, at most
    assert sum(iterations["counts"]) >= max(s.frames for s in streams)
    assert 0 < iterations["max"] and iterations["sum"] >= iterations["max"]


def test_requests_that_stop_early_leave_and_others_take_their_rows(eos_tts):
    engine = Engine(eos_tts.model, max_batch=2, chunk_frames=(2,))
    engine.start()
    try:
        requests = [_request(eos_tts, text, greedy=True, max_frames=frames)
                    for text, frames in zip(TEXTS, (20, 2, 20, 1, 20, 3))]
        requests.append(_request(eos_tts, TEXTS[0], greedy=True, min_frames=0))  # ends before its first frame
        streams = [engine.submit(r) for r in requests]
        for request, stream in zip(requests, streams):
            _assert_same_as_solo(eos_tts, request, stream, _audio(stream))
    finally:
        engine.stop()
    reasons = [s.finish_reason for s in streams]
    assert "stop" in reasons[:-1] and "length" in reasons
    assert streams[-1].finish_reason == "stop" and streams[-1].frames == 0


def test_first_chunk_follows_the_schedule(tts, engine_factory):
    engine = engine_factory(chunk_frames=(1, 4))
    engine.start()
    stream = engine.submit(_request(tts, TEXTS[1], greedy=True, max_frames=10))
    sizes = [len(chunk) // 1920 for chunk in stream]
    assert sizes == [1, 4, 4, 1]
    assert stream.first_chunk_at is not None and stream.first_chunk_at >= stream.created_at


class CodecStillRunning:
    """The CUDA event of a codec call that has not finished when the engine polls it."""

    def __init__(self, rows: int):
        self.rows, self.polled, self.waited = rows, 0, 0

    def query(self) -> bool:
        self.polled += 1
        return False

    def synchronize(self) -> None:
        self.waited += 1


@pytest.mark.parametrize("wait_max_rows", [1, 8], ids=["sent next iteration", "waited for"])
def test_a_first_frame_still_decoding_reaches_its_stream_whole(tts, engine_factory, monkeypatch, wait_max_rows):
    """Past FIRST_AUDIO_WAIT_MAX_ROWS rows, a first frame the codec has not finished goes out with the next
    iteration's audio instead of holding the loop; either way every stream gets all its audio."""
    events = []
    launch = Engine._launch_codec

    def launch_still_running(self, jobs, rows, frames):
        call = launch(self, jobs, rows, frames)
        if jobs:
            call.done = CodecStillRunning(len(jobs))
            events.append(call.done)
        return call

    monkeypatch.setattr(Engine, "_launch_codec", launch_still_running)
    monkeypatch.setattr(engine_module, "FIRST_AUDIO_WAIT_MAX_ROWS", wait_max_rows)
    engine = engine_factory(max_batch=4, chunk_frames=(1, 2, 3))
    engine.start()
    requests = [_request(tts, text, greedy=True, max_frames=frames) for text, frames in zip(TEXTS, (9, 4, 7))]
    streams = [engine.submit(r) for r in requests]
    for request, stream in zip(requests, streams):
        _assert_same_as_solo(tts, request, stream, _audio(stream))
        assert stream.first_chunk_at is not None
    # the loop waits once per call for its audio; a call with first frames is polled first, and waited for a
    # second time only up to FIRST_AUDIO_WAIT_MAX_ROWS rows
    with_first_frames = [event for event in events if event.polled]
    assert with_first_frames
    assert all(event.waited == (2 if event.rows <= wait_max_rows else 1) for event in with_first_frames)
    assert any(event.rows > wait_max_rows for event in with_first_frames) == (wait_max_rows == 1)


def test_a_seeded_sampled_request_does_not_depend_on_its_batch_mates(tts, engine_factory):
    request = _request(tts, TEXTS[0], seed=1234, max_frames=12)
    engine = engine_factory(max_batch=4)
    engine.start()
    alone = _audio(engine.submit(request))
    mates = [engine.submit(_request(tts, text, seed=seed, max_frames=15)) for seed, text in enumerate(TEXTS[1:4])]
    together = _audio(engine.submit(request))
    for mate in mates:
        _audio(mate)
    np.testing.assert_allclose(together, alone, rtol=0, atol=1e-5)
    np.testing.assert_allclose(alone, tts.generate(request).samples, rtol=0, atol=1e-5)


def test_cancelling_frees_the_row_and_the_others_continue(tts, engine_factory):
    engine = engine_factory(max_batch=2, chunk_frames=(1,))
    engine.start()
    doomed = engine.submit(_request(tts, TEXTS[0], greedy=True, max_frames=20))
    kept_request = _request(tts, TEXTS[1], greedy=True, max_frames=16)
    kept = engine.submit(kept_request)
    waiting_request = _request(tts, TEXTS[2], greedy=True, max_frames=6)
    waiting = engine.submit(waiting_request)  # no free row until the cancelled one leaves
    next(iter(doomed))
    doomed.cancel()
    assert list(doomed) == [] and doomed.finish_reason == "cancelled" and doomed.error is None
    _assert_same_as_solo(tts, kept_request, kept, _audio(kept))
    _assert_same_as_solo(tts, waiting_request, waiting, _audio(waiting))
    stats = engine.stats()
    assert stats["cancelled"] == 1 and stats["completed"] == 2 and stats["active"] == 0


def test_a_full_queue_answers_overloaded(tts, engine_factory):
    engine = engine_factory(max_queue=2)  # not started: everything waits
    waiting = [engine.submit(_request(tts, text, max_frames=4)) for text in TEXTS[:2]]
    with pytest.raises(OverloadedError):
        engine.submit(_request(tts, TEXTS[2], max_frames=4))
    assert engine.stats()["queued"] == 2
    engine.stop()
    assert [s.finish_reason for s in waiting] == ["cancelled", "cancelled"]
    assert [list(s) for s in waiting] == [[], []]


def _prompt_length(tts, request) -> int:
    return build_prompt(tts.talker, tts.config, tts.tokenizer, request).prefill.shape[0]


def test_an_invalid_request_fails_alone(tts, engine_factory):
    good_request = _request(tts, TEXTS[0], greedy=True, max_frames=6)
    engine = engine_factory(max_len=_prompt_length(tts, good_request) + 10)
    with pytest.raises(UnknownSpeakerError):
        engine.submit(SpeechRequest(text="hi", speaker="nobody"))
    engine.start()
    good = engine.submit(good_request)
    too_long = engine.submit(_request(tts, " ".join(TEXTS * 4), greedy=True, max_frames=6))
    with pytest.raises(InvalidRequestError, match="max_len"):
        list(too_long)
    assert too_long.finish_reason == "error" and isinstance(too_long.error, InvalidRequestError)
    _assert_same_as_solo(tts, good_request, good, _audio(good))
    again = engine.submit(good_request)  # the loop survived
    _assert_same_as_solo(tts, good_request, again, _audio(again))
    assert engine.stats()["failed"] == 1


def test_the_frame_cap_is_clamped_to_max_len(tts, engine_factory):
    request = _request(tts, TEXTS[0], greedy=True, max_frames=200)
    engine = engine_factory(max_len=_prompt_length(tts, request) + 12)
    engine.start()
    stream = engine.submit(request)
    audio = _audio(stream)
    assert stream.finish_reason == "length" and stream.frames == 10 and len(audio) == 10 * 1920


def test_stop_cancels_everything_in_flight(tts, engine_factory):
    engine = engine_factory(max_batch=2)
    engine.start()
    streams = [engine.submit(_request(tts, text, max_frames=20)) for text in TEXTS[:4]]
    next(iter(streams[0]))
    engine.stop()
    assert all(s.done for s in streams)
    assert streams[0].finish_reason == "cancelled" and streams[3].finish_reason == "cancelled"
    assert engine.stats()["active"] == 0 and engine.stats()["queued"] == 0
    engine.start()  # and it can start again
    again = engine.submit(_request(tts, TEXTS[0], max_frames=3))
    assert len(_audio(again)) == 3 * 1920


def test_async_iteration_does_not_block_the_event_loop(tts, engine_factory):
    engine = engine_factory(max_batch=2)
    engine.start()
    requests = [_request(tts, text, greedy=True, max_frames=frames) for text, frames in zip(TEXTS, (7, 4))]

    async def collect(stream):
        return np.concatenate([chunk async for chunk in stream])

    async def main():
        ticks = 0
        streams = [engine.submit(r) for r in requests]
        tasks = [asyncio.create_task(collect(s)) for s in streams]
        while not all(t.done() for t in tasks):
            ticks += 1
            await asyncio.sleep(0.001)
        return streams, [t.result() for t in tasks], ticks

    streams, audio, ticks = asyncio.run(main())
    assert ticks > 1
    for request, stream, samples in zip(requests, streams, audio):
        _assert_same_as_solo(tts, request, stream, samples)


def test_many_readers_on_threads(tts, engine_factory):
    engine = engine_factory(max_batch=4)
    engine.start()
    requests = [_request(tts, text, greedy=True, max_frames=5 + i) for i, text in enumerate(TEXTS)]
    results = [None] * len(requests)

    def read(index):
        results[index] = _audio(engine.submit(requests[index]))

    threads = [threading.Thread(target=read, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for request, samples in zip(requests, results):
        np.testing.assert_allclose(samples, tts.generate(request).samples, rtol=0, atol=1e-5)


def test_an_async_reader_that_gives_up_leaves_the_stream_readable(tts, engine_factory):
    engine = engine_factory()  # not started yet: the first read has to wait
    request = _request(tts, TEXTS[0], greedy=True, max_frames=4)
    stream = engine.submit(request)

    async def impatient():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(anext(aiter(stream)), timeout=0.05)

    asyncio.run(impatient())  # its event loop is closed afterwards
    engine.start()
    _assert_same_as_solo(tts, request, stream, _audio(stream))


def test_cloned_voices_with_and_without_reference_codes_match_their_solo_runs(tiny_base):
    tts = TTS.from_pretrained(tiny_base, device="cpu")
    seconds = np.arange(24000, dtype=np.float32) / 24000
    reference = 0.3 * np.sin(2 * np.pi * 220 * seconds) * np.sin(2 * np.pi * 3 * seconds)
    icl_voice = tts.create_voice(reference, "A short reference sentence.", sample_rate=24000)
    xvector_voice = tts.create_voice(reference, sample_rate=24000)
    requests = [tts.request(text, voice=voice, language="english", greedy=True, max_frames=frames)
                for text, voice, frames in ((TEXTS[1], icl_voice, 9), (TEXTS[0], xvector_voice, 6),
                                            (TEXTS[3], icl_voice, 4))]
    engine = Engine(tts.model, max_batch=2, chunk_frames=(1, 3))
    engine.start()
    try:
        streams = [engine.submit(r) for r in requests]
        audio = [_audio(s) for s in streams]
    finally:
        engine.stop()
    for request, samples in zip(requests, audio):
        solo = np.concatenate(list(tts.stream(request)))
        np.testing.assert_allclose(samples, solo, rtol=0, atol=1e-5)
        speech = tts.generate(request)  # the engine's streamed decode equals a one-pass decode of its codes
        voice = request.voice
        one_pass = tts.decode_codes(speech.codes, voice.reference_codes if voice.icl else None)
        np.testing.assert_allclose(samples, one_pass, rtol=0, atol=1e-5)


def test_prompts_are_built_ahead_and_a_failing_one_fails_alone(tts, engine_factory, monkeypatch):
    # two prompts are built ahead per iteration, so the third waits for the busy row's next frame
    engine = engine_factory(max_batch=1, scheduler=Scheduler(1, max_prefills_per_frame=2, burst_prefills_per_frame=2))
    requests = [_request(tts, text, greedy=True, max_frames=frames) for text, frames in zip(TEXTS, (8, 4, 5))]
    built_while_busy = []

    def plan_or_fail(model, request, max_len, text_so_far=None):
        built_while_busy.append((request.text, len(engine._rows)))
        if request.text == TEXTS[1]:
            raise InvalidRequestError("this prompt cannot be built")
        return plan_request(model, request, max_len, text_so_far)

    monkeypatch.setattr(engine_module, "plan_request", plan_or_fail)
    streams = [engine.submit(r) for r in requests]
    engine.start()
    with pytest.raises(InvalidRequestError, match="cannot be built"):
        list(streams[1])
    monkeypatch.undo()
    for index in (0, 2):
        _assert_same_as_solo(tts, requests[index], streams[index], _audio(streams[index]))
    # each prompt was built once, the last one while the single row was still generating
    assert sorted(text for text, _ in built_while_busy) == sorted(TEXTS[:3])
    assert (TEXTS[2], 1) in built_while_busy


def test_a_failed_prefill_fails_only_its_own_request(tts, engine_factory, monkeypatch):
    """Requests admitted together share one prefill; when it fails, each is tried alone."""
    engine = engine_factory(max_batch=4)
    requests = [_request(tts, text, greedy=True, max_frames=5) for text in (TEXTS[0], TEXTS[1], TEXTS[3])]
    lengths = [_plan(tts, r).prompt.prefill.shape[0] for r in requests]
    assert len(set(lengths)) == 3
    real, calls = engine.runner.prefill_rows, []

    def prefill_rows(first_row, items):
        calls.append(len(items))
        if any(item.prompt.prefill.shape[0] == lengths[1] for item in items):
            raise RuntimeError("this prompt cannot be prefilled")
        return real(first_row, items)

    monkeypatch.setattr(engine.runner, "prefill_rows", prefill_rows)
    streams = [engine.submit(r) for r in requests]
    engine.start()
    with pytest.raises(RuntimeError, match="cannot be prefilled"):
        list(streams[1])
    for index in (0, 2):
        _assert_same_as_solo(tts, requests[index], streams[index], _audio(streams[index]))
    assert calls == [3, 1, 1, 1]  # together, then each alone
    assert engine.stats()["failed"] == 1 and engine.codec.active == 0


def test_requests_ending_at_their_prefill_leave_the_rows_admitted_with_them_intact(tts, engine_factory,
                                                                                   monkeypatch):
    """EOS right at the prefill (possible with min_frames=0) closes a request among others prefilled with it;
    the rows after it move into the freed ones and still speak as they do alone."""
    engine = engine_factory(max_batch=4)
    texts = (TEXTS[0], TEXTS[1], TEXTS[3], TEXTS[4])
    requests = [_request(tts, text, greedy=True, max_frames=6, min_frames=0 if index % 2 == 0 else 2)
                for index, text in enumerate(texts)]
    ending = {_plan(tts, requests[index]).prompt.prefill.shape[0] for index in (0, 2)}
    assert len(ending) == 2 and all(_plan(tts, r).prompt.prefill.shape[0] not in ending for r in requests[1::2])
    real = engine.runner.prefill_rows

    def prefill_rows(first_row, items):
        real(first_row, items)
        for row, item in enumerate(items, first_row):
            if item.prompt.prefill.shape[0] in ending:
                engine.runner.state.c0[row] = engine.runner.eos_id

    monkeypatch.setattr(engine.runner, "prefill_rows", prefill_rows)
    streams = [engine.submit(r) for r in requests]
    engine.start()
    audio = [_audio(stream) for stream in streams]
    for index in (0, 2):
        assert streams[index].finish_reason == "stop" and streams[index].frames == 0 and audio[index].size == 0
    for index in (1, 3):
        _assert_same_as_solo(tts, requests[index], streams[index], audio[index])


def test_requests_admitted_within_one_frame_share_its_cap(tts, engine_factory):
    """A frame's admissions may come in several calls (requests whose prompts are built while the frame
    runs join at once): together they get the scheduler's cap, and the ones admitted earlier in the frame
    do not count as streams waiting for their first chunk, which would cut the cap to one."""
    engine = engine_factory(max_batch=4, scheduler=Scheduler(4, max_prefills_per_frame=2, burst_prefills_per_frame=3))
    requests = [_request(tts, text, greedy=True, max_frames=4) for text in TEXTS[:5]]
    streams = [engine.submit(requests[0])]
    engine._admit()
    admitted = lambda: len(engine._rows)  # noqa: E731
    assert admitted() == 1
    streams += [engine.submit(r) for r in requests[1:]]
    engine._admit()  # the same frame: its burst cap of 3 leaves room for 2
    assert admitted() == 3
    engine._admit()
    assert admitted() == 3
    engine.start()
    for request, stream in zip(requests, streams):
        _assert_same_as_solo(tts, request, stream, _audio(stream))


class _SlowStep:
    """Stands in for a frame step's CUDA event: reports "still running" `polls` times, then done."""

    def __init__(self, polls: int):
        self.polls = polls

    def query(self) -> bool:
        self.polls -= 1
        return self.polls < 0

    def synchronize(self) -> None:
        self.polls = -1


def test_requests_admitted_while_a_frame_runs_equal_their_solo_runs(tts, engine_factory, monkeypatch):
    """Requests waiting while a frame runs are admitted before it ends; the rows that end with that frame
    are retired after them (the last row moving into a freed one), and every stream still sounds as it
    does alone."""
    engine = engine_factory(max_batch=4, scheduler=Scheduler(4, low_buffer_s=0.2))  # one prefill per frame
    real_launch = engine._launch_step

    def launch():
        call = real_launch()
        call.step_done = _SlowStep(2)
        return call

    real_start, started_while_running = engine._start, []

    def start(jobs):
        call = engine._in_flight
        started_while_running.append(call is not None and call.step_done.polls >= 0)
        real_start(jobs)

    monkeypatch.setattr(engine, "_launch_step", launch)
    monkeypatch.setattr(engine, "_start", start)
    requests = [_request(tts, text, greedy=True, max_frames=frames)
                for text, frames in zip(TEXTS, (1, 6, 3, 5))]
    streams = [engine.submit(requests[0])]
    engine._iteration()  # admits the first request
    assert len(engine._rows) == 1
    streams += [engine.submit(r) for r in requests[1:3]]
    # its only frame runs; one more is admitted meanwhile (the cap is one while a stream waits for its
    # first chunk), then the first request ends and the new row moves into its place
    engine._iteration()
    assert engine._admitted == 1 and started_while_running == [False, True]
    streams.append(engine.submit(requests[3]))
    while engine._has_work():
        engine._iteration()
    for request, stream in zip(requests, streams):
        _assert_same_as_solo(tts, request, stream, _audio(stream))
