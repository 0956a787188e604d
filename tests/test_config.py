"""config.json parsing: an absent key takes upstream's default, so such checkpoints load as upstream loads them."""
import copy
import json
import shutil

import pytest

from qtts.config import parse_codec_config, parse_model_config
from qtts.errors import CheckpointError
from qtts.testing.configs import codec_config, model_config

REQUIRED = {"text_vocab_size", "codebook_dim", "tts_model_type"}  # upstream has no default for these either


def _leaf_keys(raw: dict, path=()):
    """Paths of every key, nested config dicts included (their keys, not the dicts themselves)."""
    for key, value in raw.items():
        if isinstance(value, dict) and key.endswith("_config"):
            yield from _leaf_keys(value, path + (key,))
        else:
            yield path + (key,)


def _without(raw: dict, *paths) -> dict:
    raw = copy.deepcopy(raw)
    for path in paths:
        node = raw
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]
    return raw


def test_codec_decoder_without_head_dim_uses_hidden_size_over_heads():
    raw = codec_config("tiny")
    raw["decoder_config"].update(hidden_size=48, num_attention_heads=4)
    del raw["decoder_config"]["head_dim"]
    assert parse_codec_config(raw).decoder.head_dim == 12


def test_a_key_without_an_upstream_default_is_named():
    with pytest.raises(CheckpointError, match="codebook_dim"):
        parse_codec_config(_without(codec_config("tiny"), ("decoder_config", "codebook_dim")))
    with pytest.raises(CheckpointError, match="text_vocab_size"):
        parse_model_config(_without(model_config("base", "tiny"), ("talker_config", "text_vocab_size")))
    with pytest.raises(CheckpointError, match="tts_model_type"):
        parse_model_config(_without(model_config("base", "tiny"), ("tts_model_type",)))


def test_a_checkpoint_without_head_dims_loads_and_speaks_as_with_them(tiny_custom_voice, tmp_path):
    from qtts.api import TTS

    folder = tmp_path / "model"
    shutil.copytree(tiny_custom_voice, folder)
    for name, section in (("config.json", "talker_config"), ("speech_tokenizer/config.json", "decoder_config")):
        raw = json.loads((folder / name).read_text())
        del raw[section]["head_dim"]  # the tiny shapes have head_dim == hidden_size // num_attention_heads
        (folder / name).write_text(json.dumps(raw))
    speeches = []
    for path in (tiny_custom_voice, folder):
        tts = TTS.from_pretrained(path, device="cpu")
        speeches.append(tts.generate(tts.request("Hello there.", speaker="aiden", greedy=True, max_frames=3)))
    assert speeches[0].codes.tolist() == speeches[1].codes.tolist()
    assert (speeches[0].samples == speeches[1].samples).all()


# --- the oracle: upstream's config classes read the same files ----------------------------------

def _rope_theta(config):
    return getattr(config, "rope_theta", None) or (getattr(config, "rope_parameters", None) or {}).get("rope_theta")


def _layers(c):
    return dict(hidden_size=c.hidden_size, intermediate_size=c.intermediate_size, num_layers=c.num_hidden_layers,
                num_heads=c.num_attention_heads, num_kv_heads=c.num_key_value_heads,
                head_dim=getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads,
                rms_norm_eps=c.rms_norm_eps, rope_theta=_rope_theta(c))


def _upstream_model_view(raw):
    from qwen_tts.core.models.configuration_qwen3_tts import Qwen3TTSConfig

    c = Qwen3TTSConfig(**copy.deepcopy(raw))
    t, p, s = c.talker_config, c.talker_config.code_predictor_config, c.speaker_encoder_config
    return dict(
        talker=dict(layers=_layers(t), vocab_size=t.vocab_size, text_vocab_size=t.text_vocab_size,
                    text_hidden_size=t.text_hidden_size, num_code_groups=t.num_code_groups,
                    codec_pad_id=t.codec_pad_id, codec_bos_id=t.codec_bos_id, codec_eos_id=t.codec_eos_token_id,
                    codec_think_id=t.codec_think_id, codec_nothink_id=t.codec_nothink_id,
                    codec_think_bos_id=t.codec_think_bos_id, codec_think_eos_id=t.codec_think_eos_id,
                    speaker_ids=t.spk_id or {}, speaker_dialects=t.spk_is_dialect or {},
                    language_ids=t.codec_language_id or {}, max_position_embeddings=t.max_position_embeddings,
                    predictor=dict(layers=_layers(p), vocab_size=p.vocab_size, num_code_groups=p.num_code_groups)),
        speaker_encoder=dict(mel_dim=s.mel_dim, enc_dim=s.enc_dim, channels=tuple(s.enc_channels),
                             kernel_sizes=tuple(s.enc_kernel_sizes), dilations=tuple(s.enc_dilations),
                             attention_channels=s.enc_attention_channels, res2net_scale=s.enc_res2net_scale,
                             se_channels=s.enc_se_channels, sample_rate=s.sample_rate),
        tokens=dict(im_start=c.im_start_token_id, im_end=c.im_end_token_id, tts_pad=c.tts_pad_token_id,
                    tts_bos=c.tts_bos_token_id, tts_eos=c.tts_eos_token_id))


def _our_model_view(raw):
    from dataclasses import asdict

    view = asdict(parse_model_config(raw))
    for name in ("model_type", "model_size"):
        del view[name]
    return view


def _upstream_codec_view(raw):
    from qwen_tts.core.tokenizer_12hz.configuration_qwen3_tts_tokenizer_v2 import Qwen3TTSTokenizerV2Config

    c = Qwen3TTSTokenizerV2Config(**copy.deepcopy(raw))
    d, e = c.decoder_config, c.encoder_config
    decoder = dict(codebook_size=d.codebook_size, codebook_dim=d.codebook_dim, num_quantizers=d.num_quantizers,
                   latent_dim=d.latent_dim, **_layers(d), sliding_window=d.sliding_window,
                   upsampling_ratios=tuple(d.upsampling_ratios), upsample_rates=tuple(d.upsample_rates),
                   decoder_dim=d.decoder_dim)
    encoder = dict(num_filters=e.num_filters, kernel_size=e.kernel_size, last_kernel_size=e.last_kernel_size,
                   residual_kernel_size=e.residual_kernel_size, dilation_growth_rate=e.dilation_growth_rate,
                   compress=e.compress, downsampling_ratios=tuple(reversed(e.upsampling_ratios)),
                   hidden_size=e.hidden_size, num_layers=e.num_hidden_layers, num_heads=e.num_attention_heads,
                   head_dim=e.head_dim, intermediate_size=e.intermediate_size, norm_eps=e.norm_eps,
                   rope_theta=_rope_theta(e), num_semantic_quantizers=e.num_semantic_quantizers,
                   num_quantizers=e.num_quantizers, codebook_size=e.codebook_size, codebook_dim=e.codebook_dim,
                   valid_quantizers=c.encoder_valid_num_quantizers)
    return dict(decoder=decoder, encoder=encoder, sample_rate=c.output_sample_rate)


def _our_codec_view(raw):
    from dataclasses import asdict

    return asdict(parse_codec_config(raw))


def _comparable(view):
    """Tuples and lists alike, floats by value."""
    return json.loads(json.dumps(view, default=list))


@pytest.mark.oracle
@pytest.mark.parametrize("kind", ["model", "codec"])
def test_every_absent_key_takes_upstreams_default(kind):
    from tests.oracle import require_oracle

    require_oracle()
    raw = model_config("base", "tiny") if kind == "model" else codec_config("tiny")
    if kind == "model":  # upstream refuses a layer_types list whose length is not num_hidden_layers
        raw = _without(raw, ("talker_config", "code_predictor_config", "layer_types"))
    ours, theirs = (_our_model_view, _upstream_model_view) if kind == "model" else (_our_codec_view,
                                                                                    _upstream_codec_view)
    optional = [path for path in _leaf_keys(raw) if path[-1] not in REQUIRED]
    assert len(optional) > 40
    for path in optional:
        reduced = _without(raw, path)
        assert _comparable(ours(reduced)) == _comparable(theirs(reduced)), "/".join(path)
    everything_optional_removed = _without(raw, *optional)
    assert _comparable(ours(everything_optional_removed)) == _comparable(theirs(everything_optional_removed))
