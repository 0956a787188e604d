"""The quantization options against the fp32 model on the tiny fixture: the gates of docs/quantization.md."""
import pytest
import torch

from qtts.api import TTS
from qtts.layers.linear import Fp8Linear
from qtts.testing import quality_gates as gates

TEXTS = ["Hello there, how are you?", "The quick brown fox jumps over the lazy dog.", "One two three four five six.",
         "Quantization should not change what the model says.", "A short one.",
         "Is this the real life, or is it fantasy?", "Numbers like 42 and 1999 are read aloud.",
         "She sells sea shells by the sea shore."]
# What each option misses on the tiny fixture (docs/quantization.md has the figures).
TINY_FIXTURE_FAILURES = {"fp8_talker": [], "fp8_predictor": ["layer cosine", "predictor top-5"],
                         "kv_int8": [], "kv_int4": ["layer cosine"]}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matrices run many times faster on one thread than on two contended ones."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference(tiny_custom_voice):
    return TTS.from_pretrained(tiny_custom_voice, device="cpu", dtype="fp32")


@pytest.fixture(scope="module")
def reference_frames(reference):
    requests = [reference.request(text, speaker=reference.speakers[i % 9], language="english", seed=i)
                for i, text in enumerate(TEXTS)]
    return gates.reference_frames(reference, requests, frames=32)


def load_option(folder, option: str) -> tuple[TTS, str | None]:
    """The model of an option and the KV quantization it runs with."""
    kv_cache = option[3:] if option.startswith("kv_") else None
    tts = TTS.from_pretrained(folder, device="cpu", dtype="fp32", fp8_talker=option == "fp8_talker",
                              fp8_predictor=option == "fp8_predictor", kv_cache=kv_cache)
    return tts, kv_cache


def layer_gate(option: str) -> float:
    return gates.KV_LAYER_COSINE if option.startswith("kv_") else gates.WEIGHT_LAYER_COSINE


@pytest.mark.parametrize("option", sorted(TINY_FIXTURE_FAILURES))
def test_each_option_meets_or_misses_its_gates_as_documented(option, reference, reference_frames, tiny_custom_voice):
    candidate, kv_cache = load_option(tiny_custom_voice, option)
    report = gates.measure_gates(reference, candidate, reference_frames, candidate_kv_cache=kv_cache)
    assert report.failures(layer_gate(option)) == TINY_FIXTURE_FAILURES[option]
    # whatever the verdict, no option is far off: a broken conversion lands well below these
    assert report.layer_cosine > 0.995 and report.talker_output_cosine > 0.99
    assert max(report.codebook0_kl, report.predictor_kl) < 0.01
    assert min(report.codebook0_top5, report.predictor_top5) > 0.8


def test_bf16_passes_the_weight_gates(reference, reference_frames, tiny_custom_voice):
    """The noise floor: bf16 itself against fp32."""
    candidate = TTS.from_pretrained(tiny_custom_voice, device="cpu", dtype="bf16")
    report = gates.measure_gates(reference, candidate, reference_frames)
    assert report.failures(gates.WEIGHT_LAYER_COSINE) == []
    assert report.layer_cosine > 0.9999


def test_an_fp8_conversion_with_scales_a_few_percent_off_fails(reference, reference_frames, tiny_custom_voice):
    candidate, _ = load_option(tiny_custom_voice, "fp8_talker")
    generator = torch.Generator().manual_seed(0)
    for module in candidate.talker.model.modules():
        if isinstance(module, Fp8Linear):
            module.weight_scale *= 1 + 0.1 * torch.randn(module.weight_scale.shape, generator=generator)
    report = gates.measure_gates(reference, candidate, reference_frames)
    assert "layer cosine" in report.failures(gates.WEIGHT_LAYER_COSINE)


# ----- runaways ---------------------------------------------------------------------------------------
RUNAWAY_PROMPTS = 32
RUNAWAY_CAP = 32  # frames; with the boosted EOS the reference ends in 2-20


def reachable_eos(tts: TTS) -> TTS:
    """Random weights almost never pick EOS; a 4x longer EOS row in the codec head makes the model end
    its utterances after a few frames, as a trained one does."""
    tts.talker.codec_head.weight.data[tts.config.talker.codec_eos_id] *= 4
    return tts


def runaway_requests(tts: TTS) -> list:
    return [tts.request(f"Sentence number {i} is here.", speaker=tts.speakers[i % 9], language="english", seed=i,
                        max_frames=RUNAWAY_CAP) for i in range(RUNAWAY_PROMPTS)]


@pytest.fixture(scope="module")
def reference_runaways(reference):
    tts = reachable_eos(reference)
    try:
        return gates.count_runaways(tts, runaway_requests(tts))
    finally:
        tts.talker.codec_head.weight.data[tts.config.talker.codec_eos_id] /= 4


@pytest.mark.parametrize("option", sorted(TINY_FIXTURE_FAILURES))
def test_no_option_runs_away_more_than_the_reference(option, reference_runaways, tiny_custom_voice):
    candidate, _ = load_option(tiny_custom_voice, option)
    runaways = gates.count_runaways(reachable_eos(candidate), runaway_requests(candidate))
    assert reference_runaways <= 2
    assert runaways <= gates.runaway_limit(reference_runaways, RUNAWAY_PROMPTS)


def test_a_model_that_rarely_picks_eos_fails_the_runaway_gate(reference_runaways, tiny_custom_voice):
    candidate = TTS.from_pretrained(tiny_custom_voice, device="cpu", dtype="fp32")  # EOS not boosted
    runaways = gates.count_runaways(candidate, runaway_requests(candidate))
    assert runaways > gates.runaway_limit(reference_runaways, RUNAWAY_PROMPTS)
