"""Mel front end and ECAPA-TDNN speaker encoder against upstream (tiny random weights) and librosa."""
import numpy as np
import pytest
import torch

from qtts.config import SpeakerEncoderConfig
from qtts.models.mel import mel_filterbank, mel_spectrogram
from qtts.models.speaker_encoder import SpeakerEncoder
from qtts.weights import load_module

TINY = dict(mel_dim=128, enc_dim=24, enc_channels=[32, 32, 32, 32, 96], enc_kernel_sizes=[5, 3, 3, 3, 1],
            enc_dilations=[1, 2, 3, 4, 1], enc_attention_channels=16, enc_res2net_scale=4, enc_se_channels=8)


def _voice(seconds: float, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 24000)) / 24000
    wav = sum(rng.random() * np.sin(2 * np.pi * f * t) for f in rng.uniform(80, 4000, 6))
    wav = wav * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t)) + 0.05 * rng.standard_normal(t.shape)
    return torch.from_numpy((0.8 * wav / np.abs(wav).max()).astype(np.float32))


def test_filterbank_equals_librosa():
    librosa = pytest.importorskip("librosa")
    expected = librosa.filters.mel(sr=24000, n_fft=1024, n_mels=128, fmin=0, fmax=12000)
    np.testing.assert_array_equal(mel_filterbank(24000, 1024, 128, 0, 12000), expected)
    np.testing.assert_array_equal(mel_filterbank(16000, 512, 80, 20, 7600),
                                  librosa.filters.mel(sr=16000, n_fft=512, n_mels=80, fmin=20, fmax=7600))


def test_mel_frames_and_shape():
    mel = mel_spectrogram(_voice(1.0, 0)[None])
    assert mel.shape == (1, (24000 + 768 - 1024) // 256 + 1, 128)
    assert mel.dtype == torch.float32


@pytest.fixture(scope="module")
def upstream():
    from tests.oracle import require_oracle

    require_oracle()
    from qwen_tts.core.models import modeling_qwen3_tts as modeling
    from qwen_tts.core.models.configuration_qwen3_tts import Qwen3TTSSpeakerEncoderConfig

    torch.manual_seed(0)
    encoder = modeling.Qwen3TTSSpeakerEncoder(Qwen3TTSSpeakerEncoderConfig(**TINY)).eval()
    return modeling, encoder


def _ours(upstream_encoder, dtype=torch.float32) -> SpeakerEncoder:
    config = SpeakerEncoderConfig(mel_dim=128, enc_dim=24, channels=(32, 32, 32, 32, 96), kernel_sizes=(5, 3, 3, 3, 1),
                                  dilations=(1, 2, 3, 4, 1), attention_channels=16, res2net_scale=4, se_channels=8)
    model = SpeakerEncoder(config).eval()
    load_module(model, upstream_encoder.state_dict(), "upstream speaker encoder")
    return model.to(dtype)


def _upstream_mel(modeling, wav):
    return modeling.mel_spectrogram(wav, n_fft=1024, num_mels=128, sampling_rate=24000, hop_size=256, win_size=1024,
                                    fmin=0, fmax=12000).transpose(1, 2)


@pytest.mark.oracle
def test_mel_equals_upstream(upstream):
    modeling, _ = upstream
    wav = torch.stack([_voice(1.3, 1), _voice(1.3, 2)])
    torch.testing.assert_close(mel_spectrogram(wav), _upstream_mel(modeling, wav), rtol=0, atol=1e-5)


@pytest.mark.oracle
def test_embedding_equals_upstream(upstream):
    modeling, encoder = upstream
    ours = _ours(encoder)
    for seconds, seed in ((0.7, 3), (2.1, 4)):
        wav = _voice(seconds, seed)[None]
        with torch.no_grad():
            expected = encoder(_upstream_mel(modeling, wav))
        got = ours.embed(wav)
        assert got.shape == (1, 24)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)


@pytest.mark.oracle
def test_bf16_embedding_equals_upstream_bf16(upstream):
    """Same operations in the same order: in bf16 too the x-vector comes out equal (upstream runs it in bf16)."""
    modeling, encoder = upstream
    ours = _ours(encoder, torch.bfloat16)
    wav = _voice(1.1, 5)[None]
    with torch.no_grad():
        expected = encoder.to(torch.bfloat16)(_upstream_mel(modeling, wav).to(torch.bfloat16))
    encoder.float()
    torch.testing.assert_close(ours.embed(wav), expected, rtol=0, atol=0)


@pytest.mark.oracle
def test_batch_of_equal_lengths_equals_rows_alone(upstream):
    _, encoder = upstream
    ours = _ours(encoder)
    wav = torch.stack([_voice(1.0, 6), _voice(1.0, 7)])
    batched = ours.embed(wav)
    for row, single in zip(wav, batched):
        torch.testing.assert_close(ours.embed(row[None])[0], single, rtol=0, atol=1e-6)


@pytest.mark.oracle
def test_load_speaker_encoder_from_a_checkpoint_folder(upstream, tmp_path):
    from safetensors.torch import save_file

    from qtts.models.speaker_encoder import load_speaker_encoder

    _, encoder = upstream
    tensors = {f"speaker_encoder.{k}": v.contiguous() for k, v in encoder.state_dict().items()}
    tensors["talker.model.norm.weight"] = torch.ones(4)  # the LM file holds the talker too; it is skipped
    save_file(tensors, str(tmp_path / "model.safetensors"))
    loaded = load_speaker_encoder(tmp_path, _ours(encoder).config)
    wav = _voice(0.8, 9)[None]
    torch.testing.assert_close(loaded.embed(wav), _ours(encoder).embed(wav), rtol=0, atol=0)


def test_tiny_base_checkpoint_loads(request):
    try:
        folder = request.getfixturevalue("tiny_base")
    except pytest.FixtureLookupError:
        pytest.skip("no tiny_base fixture checkpoint in tests/conftest.py")
    from qtts.config import load_model_config
    from qtts.models.speaker_encoder import load_speaker_encoder

    encoder = load_speaker_encoder(folder)
    embedding = encoder.embed(_voice(0.8, 10)[None])
    assert embedding.shape == (1, load_model_config(folder).talker.hidden_size)
    assert torch.isfinite(embedding).all()
