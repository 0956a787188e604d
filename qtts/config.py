"""Typed configuration parsed from an official checkpoint folder (config.json and friends).

Only the keys the network needs are kept. The dataclasses' own defaults are the shipped hub values
(`CodecDecoderConfig()` is the real codec); a key that a parsed file lacks takes the value upstream's
config classes give it instead (not always the hub's), so a checkpoint loads here as it loads upstream.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import CheckpointError

SAMPLE_RATE = 24000
SAMPLES_PER_FRAME = 1920
FRAME_MS = 80
NUM_CODEBOOKS = 16
CODEBOOK_SIZE = 2048


@dataclass(frozen=True)
class DecoderLayerConfig:
    """Shape of a Qwen3-style decoder stack (talker or code predictor)."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float


@dataclass(frozen=True)
class PredictorConfig:
    layers: DecoderLayerConfig
    vocab_size: int = CODEBOOK_SIZE
    num_code_groups: int = NUM_CODEBOOKS


@dataclass(frozen=True)
class TalkerConfig:
    layers: DecoderLayerConfig
    predictor: PredictorConfig
    vocab_size: int = 3072
    text_vocab_size: int = 151936
    text_hidden_size: int = 2048
    num_code_groups: int = NUM_CODEBOOKS
    codec_pad_id: int = 2148
    codec_bos_id: int = 2149
    codec_eos_id: int = 2150
    codec_think_id: int = 2154
    codec_nothink_id: int = 2155
    codec_think_bos_id: int = 2156
    codec_think_eos_id: int = 2157
    speaker_ids: dict[str, int] = field(default_factory=dict)
    speaker_dialects: dict[str, str | bool] = field(default_factory=dict)
    language_ids: dict[str, int] = field(default_factory=dict)
    max_position_embeddings: int = 32768

    @property
    def hidden_size(self) -> int:
        return self.layers.hidden_size


@dataclass(frozen=True)
class SpeakerEncoderConfig:
    mel_dim: int = 128
    enc_dim: int = 1024
    channels: tuple[int, ...] = (512, 512, 512, 512, 1536)
    kernel_sizes: tuple[int, ...] = (5, 3, 3, 3, 1)
    dilations: tuple[int, ...] = (1, 2, 3, 4, 1)
    attention_channels: int = 128
    res2net_scale: int = 8
    se_channels: int = 128
    sample_rate: int = SAMPLE_RATE


@dataclass(frozen=True)
class TokenIds:
    im_start: int = 151644
    im_end: int = 151645
    tts_pad: int = 151671
    tts_bos: int = 151672
    tts_eos: int = 151673


@dataclass(frozen=True)
class ModelConfig:
    """Everything from config.json that inference needs."""

    model_type: str  # "base" | "custom_voice" | "voice_design"
    model_size: str  # "0b6" | "1b7"
    talker: TalkerConfig
    speaker_encoder: SpeakerEncoderConfig | None
    tokens: TokenIds

    @property
    def speakers(self) -> list[str]:
        return sorted(self.talker.speaker_ids)

    @property
    def languages(self) -> list[str]:
        return ["auto"] + sorted(k for k in self.talker.language_ids if "dialect" not in k)


@dataclass(frozen=True)
class CodecDecoderConfig:
    codebook_size: int = CODEBOOK_SIZE
    codebook_dim: int = 512
    num_quantizers: int = NUM_CODEBOOKS
    latent_dim: int = 1024
    hidden_size: int = 512
    intermediate_size: int = 1024
    num_layers: int = 8
    num_heads: int = 16
    num_kv_heads: int = 16
    head_dim: int = 64
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    sliding_window: int = 72
    upsampling_ratios: tuple[int, ...] = (2, 2)
    upsample_rates: tuple[int, ...] = (8, 5, 4, 3)
    decoder_dim: int = 1536

    @property
    def samples_per_frame(self) -> int:
        total = 1
        for r in (*self.upsampling_ratios, *self.upsample_rates):
            total *= r
        return total


@dataclass(frozen=True)
class CodecEncoderConfig:
    """The Mimi encoder settings (public kyutai values unless config.json says otherwise)."""

    num_filters: int = 64
    kernel_size: int = 7
    last_kernel_size: int = 3
    residual_kernel_size: int = 3
    dilation_growth_rate: int = 2
    compress: int = 2
    downsampling_ratios: tuple[int, ...] = (4, 5, 6, 8)  # reversed upsampling_ratios
    hidden_size: int = 512
    num_layers: int = 8
    num_heads: int = 8
    head_dim: int = 64
    intermediate_size: int = 2048
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    num_semantic_quantizers: int = 1
    num_quantizers: int = 32
    codebook_size: int = CODEBOOK_SIZE
    codebook_dim: int = 256
    valid_quantizers: int = NUM_CODEBOOKS


@dataclass(frozen=True)
class CodecConfig:
    decoder: CodecDecoderConfig
    encoder: CodecEncoderConfig
    sample_rate: int = SAMPLE_RATE


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"missing {path.name} in {path.parent}: is this a Qwen3-TTS 12Hz checkpoint folder?")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc


def _with_defaults(raw: dict, defaults: dict, where: str) -> dict:
    """defaults (upstream's) overridden by the keys raw sets; a default of None marks a required key."""
    values = {**defaults, **{key: value for key, value in raw.items() if key in defaults and value is not None}}
    missing = [key for key, value in values.items() if value is None]
    if missing:
        raise CheckpointError(f"{where} lacks {', '.join(missing)}, which has no default (upstream cannot load "
                              "it either)")
    return values


def _rope_theta(raw: dict, default: float) -> float:
    """rope_theta, or where transformers 5 saves it (rope_parameters)."""
    return raw.get("rope_theta") or (raw.get("rope_parameters") or {}).get("rope_theta") or default


# Upstream's defaults, by config.json key: Qwen3TTSTalkerConfig, Qwen3TTSTalkerCodePredictorConfig,
# Qwen3TTSSpeakerEncoderConfig, Qwen3TTSConfig, Qwen3TTSTokenizerV2(Decoder)Config and transformers'
# MimiConfig. A head_dim of 0 stands for hidden_size // num_attention_heads, which upstream's
# attention uses when the config has none.
_LAYERS = dict(hidden_size=1024, num_hidden_layers=20, num_attention_heads=16, rms_norm_eps=1e-6, head_dim=0)
_TALKER = dict(_LAYERS, intermediate_size=2048, num_key_value_heads=2, vocab_size=3072, text_vocab_size=None,
               text_hidden_size=2048, num_code_groups=32, codec_pad_id=4196, codec_bos_id=4197,
               codec_eos_token_id=4198, codec_think_id=4202, codec_nothink_id=4203, codec_think_bos_id=4204,
               codec_think_eos_id=4205, max_position_embeddings=32768)
_PREDICTOR = dict(_LAYERS, intermediate_size=3072, num_hidden_layers=5, num_key_value_heads=8, head_dim=128,
                  vocab_size=CODEBOOK_SIZE, num_code_groups=32)
_SPEAKER_ENCODER = dict(mel_dim=128, enc_dim=1024, enc_channels=(512, 512, 512, 512, 1536),
                        enc_kernel_sizes=(5, 3, 3, 3, 1), enc_dilations=(1, 2, 3, 4, 1), enc_attention_channels=128,
                        enc_res2net_scale=8, enc_se_channels=128, sample_rate=SAMPLE_RATE)
_TOKENS = dict(im_start_token_id=151644, im_end_token_id=151645, tts_pad_token_id=151671,
               tts_bos_token_id=151672, tts_eos_token_id=151673)
_CODEC_DECODER = dict(codebook_size=CODEBOOK_SIZE, codebook_dim=None, num_quantizers=NUM_CODEBOOKS, latent_dim=1024,
                      hidden_size=1024, intermediate_size=3072, num_hidden_layers=8, num_attention_heads=16,
                      num_key_value_heads=16, head_dim=0, rms_norm_eps=1e-5, sliding_window=72,
                      upsampling_ratios=(2, 2), upsample_rates=(8, 5, 4, 3), decoder_dim=1536)
_CODEC_ENCODER = dict(num_filters=64, kernel_size=7, last_kernel_size=3, residual_kernel_size=3,
                      dilation_growth_rate=2, compress=2, upsampling_ratios=(8, 6, 5, 4), hidden_size=512,
                      num_hidden_layers=8, num_attention_heads=8, head_dim=0, intermediate_size=2048, norm_eps=1e-5,
                      num_semantic_quantizers=1, num_quantizers=32, codebook_size=CODEBOOK_SIZE, codebook_dim=256)
_CODEC = dict(encoder_valid_num_quantizers=NUM_CODEBOOKS, output_sample_rate=SAMPLE_RATE)


def _head_dim(values: dict) -> int:
    return values["head_dim"] or values["hidden_size"] // values["num_attention_heads"]


def _layers(raw: dict, values: dict) -> DecoderLayerConfig:
    return DecoderLayerConfig(
        hidden_size=values["hidden_size"],
        intermediate_size=values["intermediate_size"],
        num_layers=values["num_hidden_layers"],
        num_heads=values["num_attention_heads"],
        num_kv_heads=values["num_key_value_heads"],
        head_dim=_head_dim(values),
        rms_norm_eps=values["rms_norm_eps"],
        rope_theta=_rope_theta(raw, 10000.0),
    )


def parse_model_config(raw: dict) -> ModelConfig:
    """Build a ModelConfig from the dict of a config.json; an absent key takes upstream's default."""
    talker_raw = raw.get("talker_config") or {}
    predictor_raw = talker_raw.get("code_predictor_config") or {}
    p = _with_defaults(predictor_raw, _PREDICTOR, "config.json's code_predictor_config")
    t = _with_defaults(talker_raw, _TALKER, "config.json's talker_config")
    predictor = PredictorConfig(layers=_layers(predictor_raw, p), vocab_size=p["vocab_size"],
                                num_code_groups=p["num_code_groups"])
    talker = TalkerConfig(
        layers=_layers(talker_raw, t),
        predictor=predictor,
        vocab_size=t["vocab_size"],
        text_vocab_size=t["text_vocab_size"],
        text_hidden_size=t["text_hidden_size"],
        num_code_groups=t["num_code_groups"],
        codec_pad_id=t["codec_pad_id"],
        codec_bos_id=t["codec_bos_id"],
        codec_eos_id=t["codec_eos_token_id"],
        codec_think_id=t["codec_think_id"],
        codec_nothink_id=t["codec_nothink_id"],
        codec_think_bos_id=t["codec_think_bos_id"],
        codec_think_eos_id=t["codec_think_eos_id"],
        speaker_ids={k.lower(): int(v) for k, v in (talker_raw.get("spk_id") or {}).items()},
        speaker_dialects={k.lower(): v for k, v in (talker_raw.get("spk_is_dialect") or {}).items()},
        language_ids={k.lower(): int(v) for k, v in (talker_raw.get("codec_language_id") or {}).items()},
        max_position_embeddings=t["max_position_embeddings"],
    )
    model_type = raw.get("tts_model_type")
    if model_type not in ("base", "custom_voice", "voice_design"):
        raise CheckpointError(f"config.json's tts_model_type is {model_type!r}; expected base, custom_voice or "
                              "voice_design (upstream runs no mode without one)")
    speaker_encoder = None
    if model_type == "base":
        se = _with_defaults(raw.get("speaker_encoder_config") or {}, _SPEAKER_ENCODER,
                            "config.json's speaker_encoder_config")
        speaker_encoder = SpeakerEncoderConfig(
            mel_dim=se["mel_dim"], enc_dim=se["enc_dim"], channels=tuple(se["enc_channels"]),
            kernel_sizes=tuple(se["enc_kernel_sizes"]), dilations=tuple(se["enc_dilations"]),
            attention_channels=se["enc_attention_channels"], res2net_scale=se["enc_res2net_scale"],
            se_channels=se["enc_se_channels"], sample_rate=se["sample_rate"])
    tokens = _with_defaults(raw, _TOKENS, "config.json")
    return ModelConfig(
        model_type=model_type,
        # upstream has no default here (its CustomVoice path fails without one); the width tells the two sizes apart
        model_size=raw.get("tts_model_size") or ("1b7" if talker.hidden_size > 1024 else "0b6"),
        talker=talker,
        speaker_encoder=speaker_encoder,
        tokens=TokenIds(im_start=tokens["im_start_token_id"], im_end=tokens["im_end_token_id"],
                        tts_pad=tokens["tts_pad_token_id"], tts_bos=tokens["tts_bos_token_id"],
                        tts_eos=tokens["tts_eos_token_id"]),
    )


def parse_codec_config(raw: dict) -> CodecConfig:
    """Build a CodecConfig from speech_tokenizer/config.json; an absent key takes upstream's default."""
    dec_raw, enc_raw = raw.get("decoder_config") or {}, raw.get("encoder_config") or {}
    dec = _with_defaults(dec_raw, _CODEC_DECODER, "speech_tokenizer/config.json's decoder_config")
    enc = _with_defaults(enc_raw, _CODEC_ENCODER, "speech_tokenizer/config.json's encoder_config")
    top = _with_defaults(raw, _CODEC, "speech_tokenizer/config.json")
    decoder = CodecDecoderConfig(
        **asdict(_layers(dec_raw, dec)),  # the same eight keys as a talker's layers
        codebook_size=dec["codebook_size"],
        codebook_dim=dec["codebook_dim"],
        num_quantizers=dec["num_quantizers"],
        latent_dim=dec["latent_dim"],
        sliding_window=dec["sliding_window"],
        upsampling_ratios=tuple(dec["upsampling_ratios"]),
        upsample_rates=tuple(dec["upsample_rates"]),
        decoder_dim=dec["decoder_dim"],
    )
    encoder = CodecEncoderConfig(
        num_filters=enc["num_filters"],
        kernel_size=enc["kernel_size"],
        last_kernel_size=enc["last_kernel_size"],
        residual_kernel_size=enc["residual_kernel_size"],
        dilation_growth_rate=enc["dilation_growth_rate"],
        compress=enc["compress"],
        downsampling_ratios=tuple(reversed(enc["upsampling_ratios"])),
        hidden_size=enc["hidden_size"],
        num_layers=enc["num_hidden_layers"],
        num_heads=enc["num_attention_heads"],
        head_dim=_head_dim(enc),
        intermediate_size=enc["intermediate_size"],
        norm_eps=enc["norm_eps"],
        rope_theta=_rope_theta(enc_raw, 10000.0),
        num_semantic_quantizers=enc["num_semantic_quantizers"],
        num_quantizers=enc["num_quantizers"],
        codebook_size=enc["codebook_size"],
        codebook_dim=enc["codebook_dim"],
        valid_quantizers=top["encoder_valid_num_quantizers"],
    )
    return CodecConfig(decoder=decoder, encoder=encoder, sample_rate=top["output_sample_rate"])


def load_model_config(folder: Path) -> ModelConfig:
    return parse_model_config(_read_json(Path(folder) / "config.json"))


def load_codec_config(folder: Path) -> CodecConfig:
    return parse_codec_config(_read_json(Path(folder) / "config.json"))


def load_generation_defaults(folder: Path) -> dict:
    """generation_config.json as a plain dict (empty when the file is absent)."""
    path = Path(folder) / "generation_config.json"
    return json.loads(path.read_text()) if path.is_file() else {}
