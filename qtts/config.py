"""Typed configuration parsed from an official checkpoint folder (config.json and friends).

Only the keys the network needs are kept; defaults are the shipped hub values, not the
upstream Python class defaults (which differ).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
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


def _layers(raw: dict, rope_theta_default: float) -> DecoderLayerConfig:
    hidden = raw["hidden_size"]
    heads = raw["num_attention_heads"]
    return DecoderLayerConfig(
        hidden_size=hidden,
        intermediate_size=raw["intermediate_size"],
        num_layers=raw["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=raw.get("num_key_value_heads", heads),
        head_dim=raw.get("head_dim") or hidden // heads,
        rms_norm_eps=raw.get("rms_norm_eps", 1e-6),
        rope_theta=raw.get("rope_theta") or (raw.get("rope_parameters") or {}).get("rope_theta", rope_theta_default),
    )


def parse_model_config(raw: dict) -> ModelConfig:
    """Build a ModelConfig from the dict of a hub config.json."""
    try:
        talker_raw = raw["talker_config"]
        predictor_raw = talker_raw["code_predictor_config"]
    except KeyError as exc:
        raise CheckpointError(f"config.json lacks {exc}: not a Qwen3-TTS checkpoint") from exc
    predictor = PredictorConfig(
        layers=_layers(predictor_raw, 1e6),
        vocab_size=predictor_raw.get("vocab_size", CODEBOOK_SIZE),
        num_code_groups=predictor_raw.get("num_code_groups", NUM_CODEBOOKS),
    )
    talker = TalkerConfig(
        layers=_layers(talker_raw, 1e6),
        predictor=predictor,
        vocab_size=talker_raw.get("vocab_size", 3072),
        text_vocab_size=talker_raw.get("text_vocab_size", 151936),
        text_hidden_size=talker_raw.get("text_hidden_size", 2048),
        num_code_groups=talker_raw.get("num_code_groups", NUM_CODEBOOKS),
        codec_pad_id=talker_raw.get("codec_pad_id", 2148),
        codec_bos_id=talker_raw.get("codec_bos_id", 2149),
        codec_eos_id=talker_raw.get("codec_eos_token_id", 2150),
        codec_think_id=talker_raw.get("codec_think_id", 2154),
        codec_nothink_id=talker_raw.get("codec_nothink_id", 2155),
        codec_think_bos_id=talker_raw.get("codec_think_bos_id", 2156),
        codec_think_eos_id=talker_raw.get("codec_think_eos_id", 2157),
        speaker_ids={k.lower(): int(v) for k, v in (talker_raw.get("spk_id") or {}).items()},
        speaker_dialects={k.lower(): v for k, v in (talker_raw.get("spk_is_dialect") or {}).items()},
        language_ids={k.lower(): int(v) for k, v in (talker_raw.get("codec_language_id") or {}).items()},
        max_position_embeddings=talker_raw.get("max_position_embeddings", 32768),
    )
    model_type = raw.get("tts_model_type", "custom_voice")
    if model_type not in ("base", "custom_voice", "voice_design"):
        raise CheckpointError(f"unknown tts_model_type {model_type!r}; expected base, custom_voice or voice_design")
    speaker_encoder = None
    if model_type == "base":
        se = raw.get("speaker_encoder_config") or {}
        speaker_encoder = SpeakerEncoderConfig(
            mel_dim=se.get("mel_dim", 128),
            enc_dim=se.get("enc_dim", 1024),
            channels=tuple(se.get("enc_channels", (512, 512, 512, 512, 1536))),
            kernel_sizes=tuple(se.get("enc_kernel_sizes", (5, 3, 3, 3, 1))),
            dilations=tuple(se.get("enc_dilations", (1, 2, 3, 4, 1))),
            attention_channels=se.get("enc_attention_channels", 128),
            res2net_scale=se.get("enc_res2net_scale", 8),
            se_channels=se.get("enc_se_channels", 128),
            sample_rate=se.get("sample_rate", SAMPLE_RATE),
        )
    tokens = TokenIds(
        im_start=raw.get("im_start_token_id", 151644),
        im_end=raw.get("im_end_token_id", 151645),
        tts_pad=raw.get("tts_pad_token_id", 151671),
        tts_bos=raw.get("tts_bos_token_id", 151672),
        tts_eos=raw.get("tts_eos_token_id", 151673),
    )
    return ModelConfig(
        model_type=model_type,
        model_size=raw.get("tts_model_size", "1b7" if talker.hidden_size > 1024 else "0b6"),
        talker=talker,
        speaker_encoder=speaker_encoder,
        tokens=tokens,
    )


def parse_codec_config(raw: dict) -> CodecConfig:
    """Build a CodecConfig from speech_tokenizer/config.json."""
    dec = raw.get("decoder_config") or {}
    enc = raw.get("encoder_config") or {}
    decoder = CodecDecoderConfig(
        codebook_size=dec.get("codebook_size", CODEBOOK_SIZE),
        codebook_dim=dec.get("codebook_dim", 512),
        num_quantizers=dec.get("num_quantizers", NUM_CODEBOOKS),
        latent_dim=dec.get("latent_dim", 1024),
        hidden_size=dec.get("hidden_size", 512),
        intermediate_size=dec.get("intermediate_size", 1024),
        num_layers=dec.get("num_hidden_layers", 8),
        num_heads=dec.get("num_attention_heads", 16),
        num_kv_heads=dec.get("num_key_value_heads", 16),
        head_dim=dec.get("head_dim", 64),
        rms_norm_eps=dec.get("rms_norm_eps", 1e-5),
        rope_theta=dec.get("rope_theta", 10000.0),
        sliding_window=dec.get("sliding_window", 72),
        upsampling_ratios=tuple(dec.get("upsampling_ratios", (2, 2))),
        upsample_rates=tuple(dec.get("upsample_rates", (8, 5, 4, 3))),
        decoder_dim=dec.get("decoder_dim", 1536),
    )
    encoder = CodecEncoderConfig(
        num_filters=enc.get("num_filters", 64),
        kernel_size=enc.get("kernel_size", 7),
        last_kernel_size=enc.get("last_kernel_size", 3),
        residual_kernel_size=enc.get("residual_kernel_size", 3),
        dilation_growth_rate=enc.get("dilation_growth_rate", 2),
        compress=enc.get("compress", 2),
        downsampling_ratios=tuple(reversed(enc.get("upsampling_ratios", (8, 6, 5, 4)))),
        hidden_size=enc.get("hidden_size", 512),
        num_layers=enc.get("num_hidden_layers", 8),
        num_heads=enc.get("num_attention_heads", 8),
        head_dim=enc.get("head_dim", 64),
        intermediate_size=enc.get("intermediate_size", 2048),
        norm_eps=enc.get("norm_eps", 1e-5),
        rope_theta=enc.get("rope_theta", 10000.0),
        num_semantic_quantizers=enc.get("num_semantic_quantizers", 1),
        num_quantizers=enc.get("num_quantizers", 32),
        codebook_size=enc.get("codebook_size", CODEBOOK_SIZE),
        codebook_dim=enc.get("codebook_dim", 256),
        valid_quantizers=raw.get("encoder_valid_num_quantizers", NUM_CODEBOOKS),
    )
    return CodecConfig(decoder=decoder, encoder=encoder, sample_rate=raw.get("output_sample_rate", SAMPLE_RATE))


def load_model_config(folder: Path) -> ModelConfig:
    return parse_model_config(_read_json(Path(folder) / "config.json"))


def load_codec_config(folder: Path) -> CodecConfig:
    return parse_codec_config(_read_json(Path(folder) / "config.json"))


def load_generation_defaults(folder: Path) -> dict:
    """generation_config.json as a plain dict (empty when the file is absent)."""
    path = Path(folder) / "generation_config.json"
    return json.loads(path.read_text()) if path.is_file() else {}
