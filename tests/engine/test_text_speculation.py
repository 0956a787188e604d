"""Starting on a first word whose tokens have not settled: its audio is held back until they settle as they
were, the request starts again when they do not, and the output is always that of the whole text."""
import random

import numpy as np
import pytest
import torch

from qtts.api import _code_keeping_stream
from qtts.engine.engine import Engine
from tests.engine.test_open_text import _mode, models  # noqa: F401  (the fixture is used by name)

# in the test vocabulary "to" is one token and "today" two others: a start on "to" is rolled back
TEXT = "today the birds sing, how are you? I am fine, thanks. 12 cats!"
FRAMES = 24


def _whole(tts, text: str, mode: dict, **options):
    request = tts.request(text, language="english", non_streaming_mode=False, max_frames=FRAMES, **mode, **options)
    return tts.generate(request)


def _open(engine, tts, mode: dict, **options):
    request = tts.request("", language="english", max_frames=FRAMES, text_open=True, **mode, **options)
    return engine.submit(request, make_stream=_code_keeping_stream)


def _started_on(tts, first: str, **engine_options):
    """A new engine, and a stream (custom voice, greedy) given `first`, stepped until it waits for more text."""
    engine = Engine(tts.model, max_batch=2, **engine_options)
    stream = _open(engine, tts, {"speaker": "aiden"}, greedy=True)
    stream.append_text(first)
    while engine.step():
        pass
    return engine, stream


def _pieces_inside_words(text: str, seed: int) -> list[str]:
    """The first word a character or two at a time, then random cuts."""
    rng = random.Random(seed)
    first = rng.randint(1, 2)
    cuts = sorted({first, first + 1, *rng.sample(range(first + 2, len(text)), rng.randint(1, 10))})
    return [text[a:b] for a, b in zip([0] + cuts, cuts + [len(text)])]


def _speak(engine, stream, pieces: list[str], seed: int) -> list[np.ndarray]:
    """Give the pieces with a few frames (at least one) between them; all the audio read."""
    rng = random.Random(seed)
    audio = []
    for piece in pieces:
        stream.append_text(piece)
        for _ in range(rng.randint(1, 3)):
            engine.step()
        audio += stream.take_ready()
    stream.end_text()
    while engine.step():
        audio += stream.take_ready()
    return audio + stream.take_ready()


def _speculation(engine) -> tuple[int, int]:
    stats = engine.stats()
    return stats["text_speculation_confirmations"], stats["text_speculation_rollbacks"]


@pytest.mark.parametrize("model_type,icl", [("custom_voice", False), ("voice_design", False), ("base", False),
                                            ("base", True)])
@pytest.mark.parametrize("sampling", [{"greedy": True}, {"seed": 5}], ids=["greedy", "seeded"])
def test_starts_rolled_back_inside_words_speak_as_the_whole_text(models, model_type, icl, sampling):
    tts = models[model_type]
    mode = _mode(tts, icl)
    whole = _whole(tts, TEXT, mode, **sampling)
    engine = tts.engine()
    before = _speculation(engine)
    for seed in range(3):
        stream = _open(engine, tts, mode, **sampling)
        audio = _speak(engine, stream, _pieces_inside_words(TEXT, seed), seed)
        assert torch.equal(torch.stack(stream.codes).cpu(), whole.codes), f"pieces {_pieces_inside_words(TEXT, seed)}"
        np.testing.assert_allclose(np.concatenate(audio), whole.samples, rtol=0, atol=1e-5)
    confirmations, rollbacks = np.subtract(_speculation(engine), before)
    if icl:  # its text rows lie over the reference: it waits for the whole text
        assert confirmations == rollbacks == 0
    else:
        assert rollbacks > 0


def test_the_first_word_is_ready_to_play_when_the_next_one_arrives(models):
    """A first word without the space after it cannot settle: the engine prefills and decodes it anyway,
    holds its audio, and sends it as soon as the next word settles it."""
    tts = models["custom_voice"]
    engine, stream = _started_on(tts, "The", chunk_frames=(1,))
    assert engine.stats()["generating"] == 1 and stream.frames == 1  # its first frame is decoded
    assert stream.take_ready() == [] and stream.first_chunk_at is None  # and held back
    stream.append_text(" birds")
    engine.step()
    first = stream.take_ready()
    assert len(first) == 1 and stream.first_chunk_at is not None
    assert _speculation(engine) == (1, 0)
    audio = first + _speak(engine, stream, [" sing."], seed=0)
    whole = _whole(tts, "The birds sing.", {"speaker": "aiden"}, greedy=True)
    np.testing.assert_allclose(np.concatenate(audio), whole.samples, rtol=0, atol=1e-5)


def test_without_speculation_the_first_word_waits_to_settle(models):
    tts = models["custom_voice"]
    engine, stream = _started_on(tts, "thanks", speculate_text=False)
    assert engine.stats()["generating"] == 0 and engine.stats()["queued"] == 1 and stream.frames == 0


def test_a_settled_first_word_is_heard_before_the_next_one(models):
    """The first frame's codes do not depend on the text row its talker half reads: a row waiting for that
    row decodes its frame at once."""
    tts = models["custom_voice"]
    engine, stream = _started_on(tts, "The ", chunk_frames=(1,), speculate_text=False)  # settled by the space
    assert len(stream.take_ready()) == 1 and engine.stats()["waiting_for_text"] == 1


def test_a_first_word_that_grows_into_other_tokens_starts_again(models):
    tts = models["custom_voice"]
    engine = Engine(tts.model, max_batch=2)
    stream = _open(engine, tts, {"speaker": "aiden"}, seed=3)
    stream.append_text("to")
    while engine.step():
        pass
    assert stream.frames == 1 and stream.take_ready() == []
    audio = _speak(engine, stream, ["day", " is fine."], seed=1)
    assert _speculation(engine) == (1, 1)  # "to" rolled back; "today" (spoken again) confirmed
    whole = _whole(tts, "today is fine.", {"speaker": "aiden"}, seed=3)
    assert torch.equal(torch.stack(stream.codes).cpu(), whole.codes)
    np.testing.assert_allclose(np.concatenate(audio), whole.samples, rtol=0, atol=1e-5)


@pytest.mark.parametrize("first", ["The", "to"])
def test_the_text_ending_while_held(models, first):
    tts = models["custom_voice"]
    engine, stream = _started_on(tts, first)
    audio = _speak(engine, stream, [], seed=0)
    np.testing.assert_allclose(np.concatenate(audio), _whole(tts, first, {"speaker": "aiden"}, greedy=True).samples,
                               rtol=0, atol=1e-5)
    assert stream.finish_reason in ("stop", "length")


def test_a_held_stream_cancelled(models):
    tts = models["custom_voice"]
    engine, stream = _started_on(tts, "thanks")
    stream.cancel()
    while engine.step():
        pass
    assert stream.finish_reason == "cancelled" and stream.take_ready() == []
    assert engine.stats()["active"] == 0 and engine.stats()["cancelled"] == 1
    other = engine.submit(tts.request("Short one.", speaker="aiden", greedy=True, max_frames=4))
    while engine.step():
        pass
    assert other.finish_reason == "length"


def test_a_held_stream_fails_with_the_engine(models):
    tts = models["custom_voice"]
    engine, stream = _started_on(tts, "thanks")

    def broken(*args):
        raise RuntimeError("device lost")

    engine.runner.predict_frame = broken
    engine.submit(tts.request("Short one.", speaker="aiden", greedy=True))
    while engine.step():
        pass
    with pytest.raises(Exception, match="device lost"):
        stream.take_ready()
    assert engine.stats()["active"] == 0


@pytest.mark.parametrize("rest", [" birds", "day"], ids=["confirmed", "rolled back"])
def test_eos_at_a_tentative_prefill(models, rest):
    """min_frames=0 lets the prefill sample EOS: a tentative start that does so ends only once its text
    settles (confirmed: it ends with no audio, as the settled start would)."""
    tts = models["custom_voice"]
    engine = Engine(tts.model, max_batch=2)
    step = engine.runner.step
    step.suppress[:] = True  # every codebook-0 sample is EOS
    step.suppress[step.eos_id] = False
    request = tts.request("", speaker="aiden", language="english", greedy=True, min_frames=0, text_open=True)
    stream = engine.submit(request)
    stream.append_text("to")
    while engine.step():
        pass
    assert stream.finish_reason is None and engine.stats()["active"] == 1
    stream.append_text(rest)
    stream.end_text()
    while engine.step():
        pass
    assert stream.finish_reason == "stop" and stream.take_ready() == []
    assert engine.stats()["active"] == 0
