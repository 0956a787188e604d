"""The engine in a child process: same audio as in-process, same errors, cancellation, restarts, a clean stop."""
import os
import signal
import time
from pathlib import Path

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
    front.model.folder = tmp_path  # empty: the engine process finds no checkpoint there
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
    engine = RemoteEngine(TTS.from_pretrained(tiny_custom_voice, device="cpu", generator=False).model, max_batch=1)
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


def _children() -> dict[int, str]:
    """This process's child processes and their states ('Z': a zombie nobody reaped), read from /proc
    (multiprocessing.active_children() would reap them)."""
    pids = set()
    for children in Path("/proc/self/task").glob("*/children"):
        pids.update(int(pid) for pid in children.read_text().split())
    states = {}
    for pid in pids:
        try:
            states[pid] = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, IndexError):
            pass  # ended and reaped meanwhile
    return states


def _kill_next_child(known: set[int], after_s: float, timeout_s: float = 60.0) -> int:
    """Wait for a child process not in `known`, let it run for after_s (still starting up), kill it."""
    deadline = time.monotonic() + timeout_s
    while True:
        new = [pid for pid, state in _children().items() if pid not in known and state != "Z"]
        if new:
            time.sleep(after_s)
            os.kill(new[0], signal.SIGKILL)
            return new[0]
        assert time.monotonic() < deadline, "no engine process was started"
        time.sleep(0.01)


def test_restarts_go_on_through_deaths_during_start_up(tts, tiny_custom_voice):
    before = set(_children())
    engine = RemoteEngine(TTS.from_pretrained(tiny_custom_voice, device="cpu", generator=False).model, max_batch=1,
                          restart_backoff_s=(0.05, 0.2))
    engine.start()
    try:
        killed = {engine._process.pid}
        os.kill(engine._process.pid, signal.SIGKILL)
        for after_s in (0.6, 0.0):  # each replacement dies while it loads
            killed.add(_kill_next_child(before | killed, after_s))
        deadline = time.monotonic() + 60
        while not engine.alive:
            assert time.monotonic() < deadline, "the engine never came back"
            time.sleep(0.05)
        request = _request(tts, TEXTS[2], greedy=True, max_frames=4)
        np.testing.assert_allclose(np.concatenate(list(engine.submit(request))), tts.generate(request).samples,
                                   rtol=0, atol=1e-5)
        assert not killed & set(_children()), "a killed engine process was never reaped"
    finally:
        engine.stop()
    assert set(_children()) <= before


def test_each_failed_stream_gets_its_own_error(tiny_custom_voice):
    front = TTS.from_pretrained(tiny_custom_voice, device="cpu", generator=False)
    engine = RemoteEngine(front.model, max_batch=2, restart=False)
    engine.start()
    try:
        streams = [engine.submit(_request(front, text, max_frames=400, min_frames=400)) for text in TEXTS]
        next(iter(streams[0]))
        engine._process.kill()
        for stream in streams:
            with pytest.raises(EngineProcessError):
                list(stream)
        assert len({id(stream.error) for stream in streams}) == len(streams)
    finally:
        engine.stop()


def test_stats_report_the_configured_queue_bound(remote):
    deadline = time.monotonic() + 10
    while "iteration_seconds" not in remote.stats():  # a report from the engine process
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert remote.stats()["max_queue"] == 2 and remote.stats()["max_batch"] == 2


def test_text_still_being_written_goes_down_the_pipe(tts, remote):
    text = "Hello there, how are you today?"
    whole = tts.generate(_request(tts, text, greedy=True, max_frames=10, non_streaming_mode=False))
    stream = remote.submit(_request(tts, text[:7], greedy=True, max_frames=10, text_open=True))
    for piece in (text[7:15], text[15:]):
        time.sleep(0.05)
        stream.append_text(piece)
    stream.end_text()
    audio = np.concatenate(list(stream))
    np.testing.assert_allclose(audio, whole.samples, rtol=0, atol=1e-5)
