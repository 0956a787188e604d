"""Text that arrives while it is spoken: whatever the pieces and their pace, the codes equal those of the
whole text given at once in streaming text mode, and a row waiting for text holds up no one else."""
import random
import threading
import time

import numpy as np
import pytest
import torch

from qtts.api import TTS, _code_keeping_stream
from qtts.engine.engine import Engine

TEXT = "Hello there, how are you today? I am fine, thanks. 12 birds, 3 cats!"
FRAMES = 24


@pytest.fixture(scope="module")
def models(tiny_custom_voice, tiny_voice_design, tiny_base):
    return {"custom_voice": TTS.from_pretrained(tiny_custom_voice, device="cpu", dtype="fp32", max_batch=4),
            "voice_design": TTS.from_pretrained(tiny_voice_design, device="cpu", dtype="fp32", max_batch=4),
            "base": TTS.from_pretrained(tiny_base, device="cpu", dtype="fp32", max_batch=4)}


def _mode(tts, icl: bool = False) -> dict:
    if tts.model_type == "custom_voice":
        return {"speaker": "aiden"}
    if tts.model_type == "voice_design":
        return {"instruct": "A calm, low voice."}
    seconds = np.arange(24000, dtype=np.float32) / 24000
    reference = 0.3 * np.sin(2 * np.pi * 220 * seconds)
    return {"voice": tts.create_voice(reference, "A short reference." if icl else None, sample_rate=24000)}


def _pieces(text: str, seed: int) -> list[str]:
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(text)), rng.randint(1, 12)))
    return [text[a:b] for a, b in zip([0] + cuts, cuts + [len(text)])]


def _whole(tts, mode: dict, **sampling):
    request = tts.request(TEXT, language="english", non_streaming_mode=False, max_frames=FRAMES, **mode, **sampling)
    return tts.generate(request)


@pytest.mark.parametrize("model_type,icl", [("custom_voice", False), ("voice_design", False), ("base", False),
                                            ("base", True)])
@pytest.mark.parametrize("sampling", [{"greedy": True}, {"seed": 5}], ids=["greedy", "seeded"])
def test_text_in_pieces_speaks_as_the_whole_text(models, model_type, icl, sampling):
    tts = models[model_type]
    mode = _mode(tts, icl)
    whole = _whole(tts, mode, **sampling)
    for seed in range(3):
        engine = tts.engine()
        request = tts.request("", language="english", max_frames=FRAMES, text_open=True, **mode, **sampling)
        stream = engine.submit(request, make_stream=_code_keeping_stream)
        audio = []
        for piece in _pieces(TEXT, seed):
            stream.append_text(piece)
            for _ in range(random.Random(seed).randint(0, 3)):  # a few frames (or none) before the next piece
                engine.step()
            audio += stream.take_ready()
        stream.end_text()
        while engine.step():
            audio += stream.take_ready()
        audio += stream.take_ready()
        assert torch.equal(torch.stack(stream.codes).cpu(), whole.codes), f"pieces {_pieces(TEXT, seed)}"
        np.testing.assert_allclose(np.concatenate(audio), whole.samples, rtol=0, atol=1e-5)


def test_stream_text_from_an_iterator_equals_the_whole_text(models):
    tts = models["custom_voice"]
    whole = _whole(tts, {"speaker": "aiden"}, seed=3)
    chunks = tts.stream_text(iter(_pieces(TEXT, 7)), speaker="aiden", language="english", seed=3,
                             max_frames=FRAMES)
    np.testing.assert_allclose(np.concatenate(list(chunks)), whole.samples, rtol=0, atol=1e-5)


def test_a_row_waiting_for_text_holds_up_no_one(models):
    """On the engine's own thread: one request's text comes slowly from another thread; the others finish
    meanwhile, and the slow one still equals its whole text."""
    tts = models["custom_voice"]
    engine = Engine(tts.model, max_batch=3, chunk_frames=(2,))
    engine.start()
    try:
        slow = engine.submit(tts.request("", speaker="aiden", language="english", greedy=True, max_frames=FRAMES,
                                         text_open=True))
        fast = [engine.submit(tts.request(text, speaker="aiden", language="english", greedy=True, max_frames=8))
                for text in ("Short one.", "Another short one.")]

        def write() -> None:
            first, rest = TEXT[:13], TEXT[13:]
            slow.append_text(first)
            time.sleep(0.5)  # its row uses up the first words and waits
            for piece in _pieces(rest, 11):
                slow.append_text(piece)
                time.sleep(0.02)
            slow.end_text()

        writer = threading.Thread(target=write)
        writer.start()
        fast_audio = [np.concatenate(list(stream)) for stream in fast]
        assert not slow.done  # the others ended while it still waited for text
        slow_audio = np.concatenate(list(slow))
        writer.join()
    finally:
        engine.stop()
    assert all(len(audio) == 8 * 1920 for audio in fast_audio)
    whole = _whole(tts, {"speaker": "aiden"}, greedy=True)
    np.testing.assert_allclose(slow_audio, whole.samples, rtol=0, atol=1e-5)
    assert slow.text_wait_s > 0.05 and engine.stats()["text_wait_seconds"] >= slow.text_wait_s


def test_text_that_ends_empty_fails_alone(models):
    tts = models["custom_voice"]
    engine = tts.engine()
    stream = engine.submit(tts.request("", speaker="aiden", text_open=True))
    stream.append_text("   ")
    stream.end_text()
    while engine.step():
        pass
    with pytest.raises(Exception, match="empty"):
        stream.take_ready()
