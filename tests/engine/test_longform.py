"""Long texts cut into parts that each fit one request: whole, in order, at natural breaks, never cut short."""
import re

import numpy as np
import pytest

from qtts.api import TTS
from qtts.engine.longform import part_seed, prompt_length, split_request
from qtts.engine.planning import default_frame_cap, plan_request
from qtts.engine.prompt import build_prompt
from qtts.errors import InvalidRequestError

SENTENCES = ["The quick brown fox jumps over the lazy dog.", "Pack my box with five dozen liquor jugs!",
             "How vexingly quick daft zebras jump?", "Sphinx of black quartz, judge my vow."]


def long_text(chars: int) -> str:
    """About `chars` characters of short sentences (a test text long enough to need parts)."""
    text, index = "", 0
    while len(text) < chars:
        text += SENTENCES[index % len(SENTENCES)] + " "
        index += 1
    return text[:chars].rsplit(" ", 1)[0] + "."


@pytest.fixture(scope="module")
def models(tiny_custom_voice, tiny_voice_design, tiny_base):
    return {"custom_voice": TTS.from_pretrained(tiny_custom_voice, device="cpu", dtype="fp32"),
            "voice_design": TTS.from_pretrained(tiny_voice_design, device="cpu", dtype="fp32"),
            "base": TTS.from_pretrained(tiny_base, device="cpu", dtype="fp32")}


def _voice(tts, icl: bool, seconds: float = 1.0):
    t = np.arange(int(24000 * seconds), dtype=np.float32) / 24000
    return tts.create_voice(0.3 * np.sin(2 * np.pi * 220 * t), "A short reference." if icl else None,
                            sample_rate=24000)


@pytest.mark.parametrize("model_type,mode", [
    ("custom_voice", {"speaker": "aiden"}), ("custom_voice", {"speaker": "aiden", "non_streaming_mode": False}),
    ("custom_voice", {"speaker": "aiden", "instruct": "Slowly.", "language": "english"}),
    ("voice_design", {"instruct": "A calm voice."}), ("base", {"icl": True}), ("base", {"icl": False}),
    ("base", {"icl": True, "non_streaming_mode": True}), ("base", {"icl": False, "non_streaming_mode": True})])
def test_prompt_length_counts_what_build_prompt_builds(models, model_type, mode):
    tts = models[model_type]
    mode = dict(mode)
    if "icl" in mode:
        mode["voice"] = _voice(tts, mode.pop("icl"))
    for text in ("Hi", "Hello there, and welcome. 你好，世界。", "word " * 80):
        request = tts.request(text, **mode)
        prompt = build_prompt(tts.talker, tts.config, tts.tokenizer, request)
        assert prompt_length(tts.config, tts.tokenizer, request) == prompt.prefill.shape[0]


def test_a_text_that_fits_is_the_request_itself(models):
    tts = models["custom_voice"]
    request = tts.request(long_text(600), speaker="aiden", seed=3)
    assert tts.split(request) == [request] and tts.split(request)[0] is request


def test_a_long_text_is_cut_at_sentence_ends_into_parts_that_get_their_whole_frame_cap(models):
    """The issue's case: 7,000 characters once left 505 frames of max_len for 40 s of a 9-minute text."""
    tts = models["custom_voice"]
    text = long_text(7000)
    request = tts.request(text, speaker="aiden", seed=3)
    parts = tts.split(request)
    assert len(parts) > 5
    assert re.sub(r"\s+", " ", " ".join(part.text for part in parts)) == re.sub(r"\s+", " ", text)
    sentence_ends = {sentence[-1] for sentence in SENTENCES}
    assert all(part.text[-1] in sentence_ends for part in parts)
    for part in parts:
        plan = plan_request(tts.model, part, tts.max_len)
        assert plan.max_frames == default_frame_cap(part.text)  # not lowered to what max_len had left
        assert plan.prompt.prefill.shape[0] + plan.max_frames + 2 <= tts.max_len
    assert [part.sampling.seed for part in parts] == [part_seed(3, i) for i in range(len(parts))]
    assert parts[0].sampling.seed == 3 and len({part.sampling.seed for part in parts}) == len(parts)
    assert all(part.speaker == "aiden" and part.max_frames is None for part in parts)


def test_a_sentence_too_long_is_cut_at_clauses_then_words_then_anywhere(models):
    tts = models["custom_voice"]
    clauses = ", ".join(["one more clause of the sentence"] * 60) + "."
    words = " ".join(["word"] * 600)
    chinese = "这是一个没有标点符号的很长的句子" * 60
    for text, ending in ((clauses, ","), (words, "d"), (chinese, None)):
        parts = split_request(tts.model, tts.request(text, speaker="aiden"), max_len=512)
        assert len(parts) > 1
        assert "".join(part.text for part in parts).replace(" ", "") == text.replace(" ", "")
        if ending is not None:
            assert all(part.text.endswith(ending) for part in parts[:-1])
        for part in parts:
            plan = plan_request(tts.model, part, 512)
            assert plan.max_frames == default_frame_cap(part.text)


def test_part_seeds_are_fixed_by_the_request_seed():
    assert part_seed(7, 0) == 7 and part_seed(None, 3) is None
    assert part_seed(7, 1) == part_seed(7, 1) != part_seed(8, 1)
    assert all(0 <= part_seed(seed, i) < 2**63 for seed in (0, -5, 2**63 - 1) for i in range(1, 4))


def test_a_max_frames_cap_makes_room_for_larger_parts(models):
    tts = models["custom_voice"]
    text = long_text(3000)
    uncapped = split_request(tts.model, tts.request(text, speaker="aiden"), max_len=1024)
    capped = split_request(tts.model, tts.request(text, speaker="aiden", max_frames=10), max_len=1024)
    assert 1 < len(capped) < len(uncapped) and all(part.max_frames == 10 for part in capped)


def test_an_icl_reference_is_in_every_part_and_takes_room_from_each(models):
    tts = models["base"]
    text = " ".join(["word"] * 600)
    short, long = _voice(tts, icl=True, seconds=1.0), _voice(tts, icl=True, seconds=6.0)
    with_short = split_request(tts.model, tts.request(text, voice=short), max_len=1024)
    with_long = split_request(tts.model, tts.request(text, voice=long), max_len=1024)
    assert 1 < len(with_short) < len(with_long)
    assert all(part.voice is long for part in with_long)


def test_a_text_that_cannot_fit_even_in_parts_is_refused_with_what_to_do(models):
    tts = models["base"]
    request = tts.request("Hello there.", voice=_voice(tts, icl=True, seconds=6.0))  # 75 reference frames
    with pytest.raises(InvalidRequestError, match=r"does not fit max_len=96 .* larger max_len, or shorten"):
        split_request(tts.model, request, max_len=96)
