"""The Python API: whole clips, streams and batch calls, all on the one engine."""
import numpy as np
import pytest
import torch

from qtts.api import TTS
from qtts.engine.longform import part_seed
from qtts.errors import InvalidRequestError
from tests.engine.test_longform import long_text


def test_a_batch_with_a_long_prompt_and_a_long_cap_stays_inside_its_cache(tiny_custom_voice):
    """Finished rows keep stepping until the last row ends; the cache must hold that."""
    tts = TTS.from_pretrained(tiny_custom_voice, device="cpu", dtype="fp32")
    long_prompt = tts.request("word " * 90, speaker="aiden", greedy=True, max_frames=2, non_streaming_mode=True)
    long_cap = tts.request("Hi.", speaker="aiden", greedy=True, max_frames=60, min_frames=60)
    (short_codes, _), (long_codes, reason) = tts.generate_codes([long_prompt, long_cap])
    assert short_codes.shape[0] <= 2 and long_codes.shape[0] == 60 and reason == "length"
    alone, _ = tts.generate_codes([long_cap])[0]
    assert torch.equal(long_codes, alone)


TEXTS = ["Hello there.", "A somewhat longer sentence to speak aloud.", "Short.", "One two three four five.",
         "The quick brown fox."]


def test_a_batch_call_gives_each_request_what_it_gives_alone(tiny_custom_voice):
    """Continuous batching over fewer rows than requests (greedy and seeded rows mixed): every result equals
    the request run alone, and results come as each request finishes."""
    tts = TTS.from_pretrained(tiny_custom_voice, device="cpu", dtype="fp32", max_batch=2)
    requests = [tts.request(text, speaker="aiden", max_frames=frames, min_frames=frames,
                            **({"greedy": True} if index % 2 else {"seed": index}))
                for index, (text, frames) in enumerate(zip(TEXTS, (14, 3, 9, 5, 7)))]
    order = []
    for index, speech in tts.generate_many(requests):
        order.append(index)
        alone = tts.generate(requests[index])
        assert torch.equal(speech.codes, alone.codes) and speech.finish_reason == alone.finish_reason == "length"
        np.testing.assert_allclose(speech.samples, alone.samples, rtol=0, atol=1e-5)
    assert sorted(order) == list(range(len(requests))) and order[0] == 1  # the shortest first, not in order


def test_a_failing_request_fails_alone_in_a_batch(tiny_custom_voice):
    tts = TTS.from_pretrained(tiny_custom_voice, device="cpu", dtype="fp32", max_len=64, max_batch=4)
    good = [tts.request(text, speaker="aiden", greedy=True, max_frames=6) for text in TEXTS[:2]]
    too_long = tts.request("word " * 200, speaker="aiden", greedy=True)  # its prompt does not fit max_len
    results = dict(tts.generate_many([good[0], too_long, good[1]]))
    assert isinstance(results[1], InvalidRequestError) and "does not fit" in str(results[1])
    for index, request in ((0, good[0]), (2, good[1])):
        assert torch.equal(results[index].codes, tts.generate(request).codes)


def test_stopping_a_stream_early_cancels_it_and_frees_its_row(tiny_custom_voice):
    tts = TTS.from_pretrained(tiny_custom_voice, device="cpu", dtype="fp32", max_batch=1)
    request = tts.request(TEXTS[1], speaker="aiden", greedy=True, max_frames=40, min_frames=40)
    stream = tts.stream(request, chunk_frames=(1,))
    next(stream)
    stream.close()
    speech = tts.generate(tts.request(TEXTS[0], speaker="aiden", greedy=True, max_frames=5, min_frames=5))
    assert speech.codes.shape[0] == 5
    assert tts.engine().stats()["cancelled"] == 1


def test_api_stream_and_whole_clip_and_cli_give_the_same_audio(tiny_custom_voice, tmp_path):
    import soundfile

    from qtts.cli import main

    tts = TTS.from_pretrained(tiny_custom_voice, device="cpu", dtype="fp32")
    request = tts.request(TEXTS[3], speaker="aiden", seed=7, max_frames=10)
    whole = tts.generate(request).samples
    streamed = np.concatenate(list(tts.stream(request)))
    np.testing.assert_allclose(streamed, whole, rtol=0, atol=1e-5)
    out = tmp_path / "cli.wav"
    assert main(["speak", TEXTS[3], "--model", str(tiny_custom_voice), "--speaker", "aiden", "--seed", "7",
                 "--max-frames", "10", "--dtype", "fp32", "--device", "cpu", "--out", str(out)]) == 0
    written, rate = soundfile.read(out, dtype="float32")
    assert rate == tts.sample_rate and written.shape == whole.shape
    np.testing.assert_allclose(written, whole, rtol=0, atol=1e-4)  # 16-bit wav


def test_the_server_speaks_a_seeded_request_as_the_api_does(tiny_custom_voice, tmp_path):
    import httpx

    from tests.server.conftest import LiveServer

    tts = TTS.from_pretrained(tiny_custom_voice, device="cpu", dtype="fp32")
    expected = tts.generate(tts.request(TEXTS[3], speaker="aiden", language="english", seed=11, max_frames=9))
    server = LiveServer(tts, tmp_path)
    try:
        reply = httpx.post(server.url + "/v1/audio/speech", timeout=60, json={
            "model": "qtts", "input": TEXTS[3], "voice": "aiden", "language": "english", "seed": 11,
            "max_frames": 9, "response_format": "pcm"})
    finally:
        server.close()
    assert reply.status_code == 200
    served = np.frombuffer(reply.content, "<i2").astype(np.float32) / 32767
    assert served.shape == expected.samples.shape
    np.testing.assert_allclose(served, expected.samples, rtol=0, atol=2e-4)


# --- long texts: spoken in parts (TTS.split) ---------------------------------------------------------------

def _assert_joined(speech, parts):
    """samples: each part's, 0.25 s of silence between; codes: each part's in turn."""
    pause = np.zeros(6000, dtype=np.float32)
    expected = np.concatenate([x for part in parts for x in (pause, part.samples)][1:])
    np.testing.assert_array_equal(speech.samples, expected)
    assert torch.equal(speech.codes, torch.cat([part.codes for part in parts]))


def _ending_early(tts: TTS) -> TTS:
    """The model made to end the speech as soon as it may (after min_frames): EOS outranks every code."""
    eos = tts.config.talker.codec_eos_id

    def eos_first(module, inputs, logits):
        logits[..., eos] += 1e4
        return logits

    tts.talker.codec_head.register_forward_hook(eos_first)
    return tts


def test_a_20000_character_text_speaks_to_the_end(tiny_custom_voice):
    """Every part is spoken and ends on its own."""
    tts = _ending_early(TTS.from_pretrained(tiny_custom_voice, device="cpu", dtype="fp32"))
    text = long_text(20_000)
    request = tts.request(text, speaker="aiden", seed=1)
    parts = tts.split(request)
    speech = tts.generate(request)
    assert len(parts) > 20 and len(speech.parts) == len(parts)
    assert [part.finish_reason for part in speech.parts] == ["stop"] * len(parts) and speech.finish_reason == "stop"
    assert all(part.codes.shape[0] == 2 for part in speech.parts)  # min_frames, then the end
    assert parts[-1].text.endswith(text[-40:])
    _assert_joined(speech, speech.parts)
    assert speech.duration_s == pytest.approx(len(parts) * 2 * 0.08 + (len(parts) - 1) * 0.25)


def test_each_part_of_a_long_text_gives_what_it_gives_alone(tiny_custom_voice):
    tts = TTS.from_pretrained(tiny_custom_voice, device="cpu", dtype="fp32", max_len=512)
    request = tts.request(long_text(2500), speaker="aiden", seed=21, max_frames=5, min_frames=5)
    speech = tts.generate(request)
    assert len(speech.parts) > 2 and speech.finish_reason == "length"
    for index, (part, spoken) in enumerate(zip(tts.split(request), speech.parts)):
        alone = tts.generate(tts.request(part.text, speaker="aiden", seed=part_seed(21, index), max_frames=5,
                                         min_frames=5))
        assert torch.equal(spoken.codes, alone.codes)
        np.testing.assert_allclose(spoken.samples, alone.samples, rtol=0, atol=1e-5)
    assert not torch.equal(speech.parts[0].codes, speech.parts[1].codes)
    _assert_joined(speech, speech.parts)
    stream = tts.stream(request, chunk_frames=(2,))
    np.testing.assert_allclose(np.concatenate(list(stream)), speech.samples, rtol=0, atol=1e-5)
    assert stream.finish_reason == "length" and len(stream.parts) == len(speech.parts)
    results = dict(tts.generate_many([tts.request(TEXTS[0], speaker="aiden", seed=2, max_frames=3), request]))
    assert torch.equal(results[1].codes, speech.codes) and results[0].parts == []


def test_a_long_clone_with_a_reference_keeps_the_reference_in_every_part(tiny_base):
    tts = _ending_early(TTS.from_pretrained(tiny_base, device="cpu", dtype="fp32", max_len=1024))
    seconds = np.arange(24000, dtype=np.float32) / 24000
    voice = tts.create_voice(0.3 * np.sin(2 * np.pi * 220 * seconds), "A short reference sentence.",
                             sample_rate=24000)
    request = tts.request(long_text(1500), voice=voice, language="english", seed=4, min_frames=3)
    speech = tts.generate(request)
    assert len(speech.parts) > 2 and speech.finish_reason == "stop"
    for index, (part, spoken) in enumerate(zip(tts.split(request), speech.parts)):
        alone = tts.clone(part.text, voice, language="english", seed=part_seed(4, index), min_frames=3)
        assert torch.equal(spoken.codes, alone.codes)
        np.testing.assert_allclose(spoken.samples, alone.samples, rtol=0, atol=1e-5)
        # decoded after the reference, as a clone with a reference is
        one_pass = tts.decode_codes(spoken.codes, voice.reference_codes)
        np.testing.assert_allclose(spoken.samples, one_pass, rtol=0, atol=1e-4)
