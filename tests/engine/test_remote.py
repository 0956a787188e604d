"""The engine in a child process: same audio as in-process, same errors, cancellation, restarts, a clean stop."""
import time

import numpy as np
import pytest

from qtts.api import TTS
from qtts.engine.remote import EngineProcessError, RemoteEngine
from qtts.errors import InvalidRequestError, OverloadedError

TEXTS = ["Hello there.", "A somewhat longer sentence to speak aloud.", "Short."]


@pytest.fixture(scope="module")
def tts(tiny_custom_voice):
    return TTS.from_pretrained(tiny_custom_voice, device="cpu")


@pytest.fixture(scope="module")
def remote(tiny_custom_voice):
    # the parent only builds requests: no talker, no codec decoder
    front = TTS.from_pretrained(tiny_custom_voice, device="cpu", generator=False)
    engine = RemoteEngine(front.model, max_batch=2, max_queue=2, chunk_frames=(1, 3))
    engine.start()
    yield engine
    engine.stop()


def _request(tts, text, **options):
    return tts.request(text, speaker=tts.speakers[0], language="english", **options)


def test_concurrent_requests_sound_as_they_do_alone(tts, remote):
    requests = [_request(tts, text, greedy=True, max_frames=frames) for text, frames in zip(TEXTS, (9, 4, 7))]
    streams = [remote.submit(r) for r in requests]
    for request, stream in zip(requests, streams):
        chunks = list(stream)
        assert [len(c) // 1920 for c in chunks][:2] == [1, 3][: len(chunks)]
        solo = tts.generate(request)
        assert stream.finish_reason == solo.finish_reason and stream.frames == solo.codes.shape[0]
        np.testing.assert_allclose(np.concatenate(chunks), solo.samples, rtol=0, atol=1e-5)
        assert stream.first_chunk_at is not None
    stats = _settled(remote)
    assert stats["completed"] >= len(requests) and stats["active"] == 0


def test_bad_requests_fail_at_submit_and_cancelling_frees_the_row(tts, remote):
    with pytest.raises(InvalidRequestError):
        remote.submit(_request(tts, TEXTS[0]), chunk_frames=(0,))
    doomed = remote.submit(_request(tts, TEXTS[1], greedy=True, max_frames=200, min_frames=200))
    next(iter(doomed))
    doomed.cancel()
    assert list(doomed) == [] and doomed.finish_reason == "cancelled"
    kept_request = _request(tts, TEXTS[2], greedy=True, max_frames=5)
    kept = remote.submit(kept_request)
    np.testing.assert_allclose(np.concatenate(list(kept)), tts.generate(kept_request).samples, rtol=0, atol=1e-5)
    assert _settled(remote)["cancelled"] >= 1


def test_a_full_engine_answers_overloaded(tts, remote):
    long = [remote.submit(_request(tts, TEXTS[0], max_frames=400, min_frames=400)) for _ in range(4)]
    with pytest.raises(OverloadedError):
        remote.submit(_request(tts, TEXTS[0]))
    for stream in long:
        stream.cancel()
    _settled(remote)


def test_a_model_that_cannot_load_fails_the_start(tmp_path, tiny_custom_voice):
    front = TTS.from_pretrained(tiny_custom_voice, device="cpu", generator=False)
    front.folder = tmp_path  # empty: the engine process finds no checkpoint there
    engine = RemoteEngine(front.model, max_batch=1)
    with pytest.raises(EngineProcessError):
        engine.start()
    with pytest.raises(EngineProcessError):
        engine.submit(_request(front, TEXTS[0]))


def test_a_generator_free_tts_refuses_to_generate(tiny_custom_voice):
    front = TTS.from_pretrained(tiny_custom_voice, device="cpu", generator=False)
    with pytest.raises(RuntimeError, match="generator=False"):
        front.generate(_request(front, TEXTS[0]))


def _settled(remote, timeout_s: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        stats = remote.stats()
        if stats["active"] == 0 and stats["queued"] == 0:
            time.sleep(2 * 0.25)  # one more report, so the counters include the last finish
            return remote.stats()
        assert time.monotonic() < deadline, stats
        time.sleep(0.05)


def test_clone_voices_travel_to_the_engine_process(tiny_base):
    tts = TTS.from_pretrained(tiny_base, device="cpu")
    front = TTS.from_pretrained(tiny_base, device="cpu", generator=False)  # what the server process holds
    seconds = np.arange(24000, dtype=np.float32) / 24000
    reference = 0.3 * np.sin(2 * np.pi * 220 * seconds) * np.sin(2 * np.pi * 3 * seconds)
    voice = front.create_voice(reference, "A short reference sentence.", sample_rate=24000)  # ICL: codes too
    request = front.request(TEXTS[1], voice=voice, language="english", greedy=True, max_frames=6)
    engine = RemoteEngine(front.model, max_batch=1)
    engine.start()
    try:
        audio = np.concatenate(list(engine.submit(request)))
    finally:
        engine.stop()
    np.testing.assert_allclose(audio, np.concatenate(list(tts.stream(request))), rtol=0, atol=1e-5)


def test_streams_in_flight_fail_when_the_engine_process_dies(tiny_custom_voice):
    front = TTS.from_pretrained(tiny_custom_voice, device="cpu", generator=False)
    engine = RemoteEngine(front.model, max_batch=1, restart=False)
    engine.start()
    try:
        stream = engine.submit(_request(front, TEXTS[0], max_frames=400, min_frames=400))
        chunks = iter(stream)
        next(chunks)
        engine._process.kill()
        with pytest.raises(EngineProcessError, match="exited"):
            list(chunks)
        assert not engine.alive
        with pytest.raises(EngineProcessError, match="not running"):
            engine.submit(_request(front, TEXTS[0]))
    finally:
        engine.stop()
    assert engine._process is None


def test_a_dead_engine_process_is_replaced(tts, tiny_custom_voice):
    engine = RemoteEngine(TTS.from_pretrained(tiny_custom_voice, device="cpu", generator=False), max_batch=1)
    engine.start()
    try:
        first = engine._process
        first.kill()
        deadline = time.monotonic() + 60
        while not (engine.alive and engine._process is not first):
            assert time.monotonic() < deadline, "no new engine process"
            time.sleep(0.05)
        request = _request(tts, TEXTS[2], greedy=True, max_frames=4)
        audio = np.concatenate(list(engine.submit(request)))
        np.testing.assert_allclose(audio, tts.generate(request).samples, rtol=0, atol=1e-5)
    finally:
        engine.stop()
    assert engine._process is None and not first.is_alive()
