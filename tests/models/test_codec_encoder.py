"""The Mimi codec encoder against upstream's Qwen3TTSTokenizerV2Model.encode (tiny random weights, real strides)."""
import math

import numpy as np
import pytest
import torch

from qtts.config import SAMPLES_PER_FRAME, CodecEncoderConfig
from qtts.models.codec_encoder import CodecEncoder
from qtts.weights import load_module

TINY = dict(num_filters=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
            head_dim=8, intermediate_size=64, codebook_size=64, codebook_dim=16,
            vector_quantization_hidden_dimension=16, num_quantizers=8, upsample_groups=32,
            upsampling_ratios=[8, 6, 5, 4])
VALID_QUANTIZERS = 6


def _speechlike(seconds: float, seed: int) -> np.ndarray:
    """A few gliding harmonics under a syllable-rate envelope, plus noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 24000)) / 24000
    pitch = 110 + 40 * rng.random() + 20 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / 24000
    wav = sum(rng.random() / k * np.sin(k * phase) for k in range(1, 6))
    wav *= 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t + rng.random() * 6)
    wav += 0.02 * rng.standard_normal(t.shape)
    return (0.5 * wav / np.abs(wav).max()).astype(np.float32)


@pytest.fixture(scope="module")
def models():
    from tests.oracle import require_oracle

    require_oracle()
    from qwen_tts._transformers_compat import restore_mimi_full_attention
    from qwen_tts.core.tokenizer_12hz.configuration_qwen3_tts_tokenizer_v2 import Qwen3TTSTokenizerV2Config
    from qwen_tts.core.tokenizer_12hz.modeling_qwen3_tts_tokenizer_v2 import Qwen3TTSTokenizerV2Model

    decoder = dict(codebook_size=64, codebook_dim=32, hidden_size=16, latent_dim=16, num_hidden_layers=1,
                   num_attention_heads=2, num_key_value_heads=2, head_dim=8, intermediate_size=32, decoder_dim=16,
                   num_quantizers=VALID_QUANTIZERS)
    torch.manual_seed(0)
    config = Qwen3TTSTokenizerV2Config(encoder_config=TINY, decoder_config=decoder,
                                       encoder_valid_num_quantizers=VALID_QUANTIZERS)
    upstream = Qwen3TTSTokenizerV2Model(config).eval()
    restore_mimi_full_attention(upstream)
    _randomize(upstream.encoder)

    ours = CodecEncoder(CodecEncoderConfig(
        num_filters=4, downsampling_ratios=(4, 5, 6, 8), hidden_size=32, num_layers=2, num_heads=4, head_dim=8,
        intermediate_size=64, num_quantizers=8, codebook_size=64, codebook_dim=16,
        valid_quantizers=VALID_QUANTIZERS)).eval()
    load_module(ours, upstream.encoder.state_dict(), "upstream Mimi encoder")
    return upstream, ours


def _randomize(mimi):
    """Layer scales near 1 and codebooks spread like the embeddings they quantize, so every stage matters."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in mimi.named_parameters():
            if name.endswith("layer_scale.scale"):
                param.copy_(0.5 + torch.rand(param.shape, generator=generator))
        wav = torch.from_numpy(_speechlike(1.0, 0))[None, None]
        hidden = mimi.encoder(wav)
        hidden = mimi.encoder_transformer(hidden.transpose(1, 2)).last_hidden_state.transpose(1, 2)
        hidden = mimi.downsample(hidden)
        for rvq in (mimi.quantizer.semantic_residual_vector_quantizer, mimi.quantizer.acoustic_residual_vector_quantizer):
            projected = rvq.input_proj(hidden).transpose(1, 2).reshape(-1, rvq.input_proj.out_channels)
            center, spread = projected.mean(0), projected.std(0)
            for depth, layer in enumerate(rvq.layers):
                book = layer.codebook
                noise = torch.randn(book.embed_sum.shape, generator=generator) * spread * 0.5 ** depth
                book.embed_sum.copy_(noise + (center if depth == 0 else 0))
                usage = 0.5 + torch.rand(book.cluster_usage.shape, generator=generator)
                book.cluster_usage.copy_(usage)
                book.embed_sum.mul_(usage[:, None])
                book._embed = None


def _upstream_encode(upstream, rows):
    """Upstream's batched encode of rows right-padded with zeros, as its feature extractor pads them."""
    longest = max(len(r) for r in rows)
    wav = torch.zeros(len(rows), longest)
    mask = torch.zeros(len(rows), longest, dtype=torch.long)
    for i, row in enumerate(rows):
        wav[i, :len(row)] = torch.from_numpy(row)
        mask[i, :len(row)] = 1
    with torch.no_grad():
        return upstream.encode(wav, mask, return_dict=True).audio_codes, wav


@pytest.mark.oracle
def test_single_reference_codes_equal_upstream(models):
    upstream, ours = models
    for seconds, seed in ((1.3, 1), (2.0, 2)):
        row = _speechlike(seconds, seed)
        (expected,), wav = _upstream_encode(upstream, [row])
        (got,) = ours.encode(wav)
        assert got.dtype == torch.int64
        assert got.shape == (math.ceil(len(row) / SAMPLES_PER_FRAME), VALID_QUANTIZERS)
        assert len(set(got[:, 0].tolist())) > 3, "codes should vary: the test weights are too degenerate"
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.oracle
def test_bf16_codes_equal_upstream_bf16(models):
    """Upstream casts the reference to bf16 when the codec is loaded in bf16; the same operations give the same codes."""
    import copy

    upstream, ours = (copy.deepcopy(m).to(torch.bfloat16) for m in models)
    for module in upstream.modules():
        if hasattr(module, "_embed"):
            module._embed = None  # upstream caches its fp32 centroids on first use
    wav = torch.from_numpy(_speechlike(1.45, 3))[None].to(torch.bfloat16)
    with torch.no_grad():
        (expected,) = upstream.encode(wav, torch.ones_like(wav, dtype=torch.long), return_dict=True).audio_codes
    torch.testing.assert_close(ours.encode(wav)[0], expected, rtol=0, atol=0)


@pytest.mark.oracle
def test_batched_rows_equal_encoding_each_alone(models):
    upstream, ours = models
    rows = [_speechlike(s, seed) for seed, s in enumerate((1.0, 0.61, 1.45))]
    alone = [_upstream_encode(upstream, [row])[0][0] for row in rows]
    _, padded = _upstream_encode(upstream, rows)
    got = ours.encode(padded, lengths=[len(r) for r in rows])
    for g, expected in zip(got, alone):
        torch.testing.assert_close(g, expected, rtol=0, atol=0)


@pytest.mark.oracle
def test_unmasked_batch_reproduces_upstream_batched_encode(models):
    """Without lengths-aware masking our batch equals upstream's own batched encode, last frames included."""
    upstream, ours = models
    rows = [_speechlike(s, 10 + seed) for seed, s in enumerate((1.0, 0.61, 1.45))]
    expected, padded = _upstream_encode(upstream, rows)
    codes = ours.encode_batch(padded)
    for row, e, code in zip(rows, expected, codes):
        torch.testing.assert_close(code[:, :math.ceil(len(row) / SAMPLES_PER_FRAME)].T, e, rtol=0, atol=0)


@pytest.mark.oracle
def test_load_codec_encoder_from_a_speech_tokenizer_folder(models, tmp_path):
    import json

    from safetensors.torch import save_file

    from qtts.models.codec_encoder import load_codec_encoder

    upstream, ours = models
    tensors = {f"encoder.{k}": v.contiguous() for k, v in upstream.encoder.state_dict().items()}
    tensors["decoder.pre_conv.conv.bias"] = torch.zeros(4)  # the codec file also holds the decoder; it is skipped
    save_file(tensors, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(
        {"encoder_config": TINY, "decoder_config": {"codebook_dim": 512},
         "encoder_valid_num_quantizers": VALID_QUANTIZERS}))
    loaded = load_codec_encoder(tmp_path, dtype=torch.float32)
    wav = torch.from_numpy(_speechlike(0.9, 7))[None]
    torch.testing.assert_close(loaded.encode(wav)[0], ours.encode(wav)[0], rtol=0, atol=0)


def test_tiny_base_checkpoint_loads(request):
    try:
        folder = request.getfixturevalue("tiny_base")
    except pytest.FixtureLookupError:
        pytest.skip("no tiny_base fixture checkpoint in tests/conftest.py")
    from qtts.models.codec_encoder import load_codec_encoder

    encoder = load_codec_encoder(folder / "speech_tokenizer")
    (codes,) = encoder.encode(torch.from_numpy(_speechlike(0.7, 8))[None])
    assert codes.shape == (math.ceil(0.7 * 24000 / SAMPLES_PER_FRAME), encoder.config.valid_quantizers)
    assert int(codes.min()) >= 0 and int(codes.max()) < encoder.config.codebook_size
