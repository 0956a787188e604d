"""`qtts eval` end to end on the tiny fixtures, with stand-in ASR and speaker encoders."""
import json

import numpy as np
import pytest
import soundfile

from qtts import eval as qtts_eval
from qtts.api import TTS
from qtts.cli import main
from tests.testing.test_quality_gates import one_thread  # noqa: F401  (autouse: tiny models on one thread)


def stand_in_asr(samples: np.ndarray, sample_rate: int, language: str) -> str:
    """Hears "hello world" in everything."""
    assert samples.ndim == 1 and sample_rate == 24000 and language == "english"
    return "hello world"


def test_error_rates_count_edits_after_normalizing():
    assert qtts_eval.normalize("  Hello, WORLD!  It's  ") == "hello world it s"
    assert qtts_eval.edit_distance("kitten", "sitting") == 3
    counts = qtts_eval.error_counts("Hello there, world.", "hello world")
    assert counts == {"word_edits": 1, "words": 3, "char_edits": 5, "chars": 15}


def test_eval_command_reports_error_rates_runaways_and_rtf(tiny_custom_voice, tmp_path):
    texts = tmp_path / "texts.jsonl"
    texts.write_text('{"text": "Hello world!", "language": "english"}\n\n'
                     '{"text": "Hello there, world.", "language": "english", "speaker": "ryan"}\n')
    out = tmp_path / "report.json"
    assert main(["eval", str(texts), "--model", str(tiny_custom_voice), "--device", "cpu", "--out", str(out),
                 "--asr", "tests.test_eval:stand_in_asr", "--max-frames", "4"]) == 0
    report = json.loads(out.read_text())
    assert report["requests"] == 2 and report["options"] == {}
    assert report["wer"] == pytest.approx(1 / 5) and report["cer"] == pytest.approx(5 / 25)
    assert [item["transcript"] for item in report["items"]] == ["hello world"] * 2
    # random weights never pick EOS within 4 frames: both requests run to the cap
    assert report["runaways"] == 2 and [item["frames"] for item in report["items"]] == [4, 4]
    assert report["audio_seconds"] == pytest.approx(2 * 4 * 1920 / 24000)
    assert report["rtf"] == pytest.approx(report["audio_seconds"] / report["wall_seconds"])
    assert report["speaker_similarity"] is None  # no reference given


def test_eval_on_a_base_model_compares_with_the_reference_voice(tiny_base, tmp_path):
    t = np.arange(3 * 24000) / 24000
    reference = (0.4 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    soundfile.write(tmp_path / "ref.wav", reference, 24000)
    (tmp_path / "texts.txt").write_text("Hello world!\n")
    out = tmp_path / "report.json"
    assert main(["eval", str(tmp_path / "texts.txt"), "--model", str(tiny_base), "--device", "cpu",
                 "--ref", str(tmp_path / "ref.wav"), "--max-frames", "3", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    similarity = report["items"][0]["speaker_similarity"]  # through the checkpoint's own speaker encoder
    assert -1 <= similarity <= 1 and report["speaker_similarity"] == pytest.approx(similarity)
    assert report["wer"] is None  # no ASR given


def test_evaluate_takes_any_speaker_encoder_and_an_option_model(tiny_custom_voice):
    """A model with an option applied (here FP8 weights) goes through the same harness."""
    from qtts.models.quantize import quantize_weights

    tts = TTS.from_pretrained(tiny_custom_voice, device="cpu", dtype="fp32")
    quantize_weights(tts.talker, talker_fp8=True, predictor_fp8=True)
    reference = (np.ones(24000, dtype=np.float32), 24000)

    def embed(samples: np.ndarray, sample_rate: int) -> np.ndarray:
        return np.array([1.0, 0.0]) if samples.shape == reference[0].shape else np.array([0.6, 0.8])

    report = qtts_eval.evaluate(tts, [qtts_eval.EvalText("Hello world.")], embed_speaker=embed, reference=reference,
                                max_frames=3, warmup=0)
    assert report["speaker_similarity"] == pytest.approx(0.6)
    assert report["runaways"] == 1 and report["items"][0]["frames"] == 3
