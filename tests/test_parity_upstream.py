"""End-to-end parity with the upstream reference on the same random checkpoint (fp32, CPU).

Greedy decoding must give identical codec codes in every mode and both text modes; the
waveforms of those codes, the clone voice's speaker embedding and reference codes must match.
"""
import numpy as np
import pytest
import torch

from tests.oracle import require_oracle

pytestmark = pytest.mark.oracle

FRAMES = 32
TEXT = "Hello there, this is a parity test of the talker."
WAVE_TOL = 1e-4
EMBED_TOL = 1e-4


@pytest.fixture(scope="module")
def upstream_factory():
    require_oracle()
    from qwen_tts import Qwen3TTSModel

    loaded = {}

    def load(folder):
        if folder not in loaded:
            model = Qwen3TTSModel.from_pretrained(str(folder), device_map="cpu", dtype=torch.float32)
            loaded[folder] = (model, _capture_codes(model))
        return loaded[folder]

    return load


def _capture_codes(model):
    """Record the codes upstream's generate returns (the wrapper only hands back audio)."""
    captured = []
    original = model.model.generate

    def generate(*args, **kwargs):
        codes, hidden = original(*args, **kwargs)
        captured.append([c.clone() for c in codes])
        return codes, hidden

    model.model.generate = generate
    return captured


@pytest.fixture(scope="module")
def ours_factory():
    from qtts.api import TTS

    loaded = {}

    def load(folder):
        if folder not in loaded:
            loaded[folder] = TTS.from_pretrained(folder, device="cpu", dtype="fp32")
        return loaded[folder]

    return load


GREEDY = dict(do_sample=False, subtalker_dosample=False, max_new_tokens=FRAMES + 1)


def _assert_same(upstream_codes, upstream_wave, speech):
    ours = speech.codes
    assert ours.shape == upstream_codes.shape, (ours.shape, upstream_codes.shape)
    assert torch.equal(ours, upstream_codes.cpu())
    assert speech.samples.shape == upstream_wave.shape
    assert np.abs(speech.samples - upstream_wave).max() <= WAVE_TOL


@pytest.mark.parametrize("language", ["auto", "english", "chinese"])
@pytest.mark.parametrize("non_streaming", [True, False])
@pytest.mark.parametrize("instruct", [None, "Speak slowly and warmly."])
def test_custom_voice_matches_upstream(tiny_custom_voice, upstream_factory, ours_factory, language,
                                       non_streaming, instruct):
    upstream, captured = upstream_factory(tiny_custom_voice)
    tts = ours_factory(tiny_custom_voice)
    for speaker in ("aiden", "eric"):  # eric is a dialect speaker: a different codec prefix
        wavs, _ = upstream.generate_custom_voice(TEXT, speaker=speaker, language=language, instruct=instruct,
                                                 non_streaming_mode=non_streaming, **GREEDY)
        speech = tts.generate(tts.request(TEXT, speaker=speaker, language=language, instruct=instruct,
                                          non_streaming_mode=non_streaming, greedy=True, max_frames=FRAMES))
        _assert_same(captured[-1][0], wavs[0], speech)


@pytest.mark.parametrize("non_streaming", [True, False])
def test_voice_design_matches_upstream(tiny_voice_design, upstream_factory, ours_factory, non_streaming):
    upstream, captured = upstream_factory(tiny_voice_design)
    tts = ours_factory(tiny_voice_design)
    instruct = "A deep, calm male voice with a slight rasp."
    wavs, _ = upstream.generate_voice_design(TEXT, instruct=instruct, language="english",
                                             non_streaming_mode=non_streaming, **GREEDY)
    speech = tts.generate(tts.request(TEXT, instruct=instruct, language="english",
                                      non_streaming_mode=non_streaming, greedy=True, max_frames=FRAMES))
    _assert_same(captured[-1][0], wavs[0], speech)


def _reference_audio(seconds=2.0, sample_rate=24000):
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    rng = np.random.default_rng(3)
    wave = 0.3 * np.sin(2 * np.pi * 180 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
    return (wave + 0.02 * rng.standard_normal(t.shape)).astype(np.float32), sample_rate


@pytest.mark.parametrize("icl", [False, True])
@pytest.mark.parametrize("non_streaming", [True, False])
def test_voice_clone_matches_upstream(tiny_base, upstream_factory, ours_factory, icl, non_streaming):
    upstream, captured = upstream_factory(tiny_base)
    tts = ours_factory(tiny_base)
    wav, sr = _reference_audio()
    ref_text = "This is the reference recording." if icl else None
    items = upstream.create_voice_clone_prompt(ref_audio=(wav, sr), ref_text=ref_text, x_vector_only_mode=not icl)
    voice = tts.create_voice(wav, reference_text=ref_text, sample_rate=sr)
    assert torch.allclose(voice.speaker_embedding, items[0].ref_spk_embedding.float(), atol=EMBED_TOL)
    if icl:
        assert torch.equal(voice.reference_codes, items[0].ref_code.cpu())
    wavs, _ = upstream.generate_voice_clone(TEXT, language="english", voice_clone_prompt=items,
                                            non_streaming_mode=non_streaming, **GREEDY)
    speech = tts.generate(tts.request(TEXT, voice=voice, language="english", non_streaming_mode=non_streaming,
                                      greedy=True, max_frames=FRAMES))
    _assert_same(captured[-1][0], wavs[0], speech)


def test_top_k_one_equals_greedy(tiny_custom_voice, ours_factory):
    tts = ours_factory(tiny_custom_voice)
    greedy = tts.generate(tts.request(TEXT, speaker="aiden", greedy=True, max_frames=12))
    top1 = tts.generate(tts.request(TEXT, speaker="aiden", top_k=1, subtalker_top_k=1, seed=7, max_frames=12))
    assert torch.equal(greedy.codes, top1.codes)
