"""The JSON files of a checkpoint folder, written the way the hub ships them.

`model_config` and `codec_config` return the hub's files for the real sizes ("0.6b", "1.7b";
1.7B-CustomVoice's config.json key for key, the rest as shared/reference/qwen3-tts-architecture.md
§2 documents them) and the same layout with small numbers for the test sizes ("tiny", which is shaped
like 1.7B: the code predictor is narrower than the talker and has a projection; "tiny-0.6b",
shaped like 0.6B: equal widths, no projection, `tts_model_size` "0b6" so upstream drops the
CustomVoice instruction). Tiny codecs keep every rate of the real one (1920 samples per
frame, 16 codebooks of 2048 entries, sliding window 72).
"""
from __future__ import annotations

MODEL_TYPES = ("base", "custom_voice", "voice_design")
SIZES = ("tiny", "tiny-0.6b", "0.6b", "1.7b")

# The nine built-in CustomVoice speakers: codec row, and the dialect each one speaks.
SPEAKER_IDS = {"serena": 3066, "vivian": 3065, "uncle_fu": 3010, "ryan": 3061, "aiden": 2861,
               "ono_anna": 2873, "sohee": 2864, "eric": 2875, "dylan": 2878}
SPEAKER_DIALECTS = {**{name: False for name in SPEAKER_IDS}, "eric": "sichuan_dialect", "dylan": "beijing_dialect"}
LANGUAGE_IDS = {"chinese": 2055, "english": 2050, "german": 2053, "italian": 2070, "portuguese": 2071,
                "spanish": 2054, "japanese": 2058, "korean": 2064, "french": 2061, "russian": 2069}
DIALECT_LANGUAGE_IDS = {"beijing_dialect": 2074, "sichuan_dialect": 2062}

GENERATION_CONFIG = {"do_sample": True, "repetition_penalty": 1.05, "temperature": 0.9, "top_p": 1.0, "top_k": 50,
                     "subtalker_dosample": True, "subtalker_temperature": 0.9, "subtalker_top_p": 1.0,
                     "subtalker_top_k": 50, "max_new_tokens": 8192}
PROCESSOR_CONFIG = {"padding_side": "left", "padding_value": 0.0, "processor_class": "Qwen3TTSProcessor",
                    "return_attention_mask": True}
CODEC_PREPROCESSOR_CONFIG = {"chunk_length_s": None, "feature_extractor_type": "EncodecFeatureExtractor",
                             "feature_size": 1, "overlap": None, "padding_side": "right", "padding_value": 0.0,
                             "return_attention_mask": True, "sampling_rate": 24000}

_REAL_PREDICTOR = dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=5, num_attention_heads=16,
                       num_key_value_heads=8, head_dim=128)
_LM_SHAPES = {
    "tiny": dict(talker=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, head_dim=16, text_hidden_size=32),
                 mrope_section=[4, 2, 2], size_label="1b7",
                 predictor=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                num_key_value_heads=2, head_dim=16),
                 speaker_encoder=dict(enc_channels=[32, 32, 32, 32, 96], enc_attention_channels=16,
                                      enc_res2net_scale=4, enc_se_channels=8)),
    "tiny-0.6b": dict(talker=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                                  num_key_value_heads=2, head_dim=16, text_hidden_size=32),
                      mrope_section=[4, 2, 2], size_label="0b6",
                      predictor=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2, head_dim=16),
                      speaker_encoder=dict(enc_channels=[32, 32, 32, 32, 96], enc_attention_channels=16,
                                           enc_res2net_scale=4, enc_se_channels=8)),
    "0.6b": dict(talker=dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                             num_key_value_heads=8, head_dim=128, text_hidden_size=2048),
                 mrope_section=[24, 20, 20], size_label="0b6", predictor=_REAL_PREDICTOR, speaker_encoder={}),
    "1.7b": dict(talker=dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                             num_key_value_heads=8, head_dim=128, text_hidden_size=2048),
                 mrope_section=[24, 20, 20], size_label="1b7", predictor=_REAL_PREDICTOR, speaker_encoder={}),
}

_TINY_CODEC_DECODER = dict(codebook_dim=16, latent_dim=32, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=4, head_dim=8, decoder_dim=64,
                           vector_quantization_hidden_dimension=16)
_TINY_CODEC_ENCODER = dict(num_filters=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=4, head_dim=8, intermediate_size=64, codebook_dim=16,
                           vector_quantization_hidden_dimension=16, upsample_groups=32)

# Keys every transformers 4.57 sub-config carries when saved; the hub predictor config has them.
_SAVED_CONFIG_DEFAULTS = {
    "_name_or_path": "", "add_cross_attention": False, "architectures": None, "bad_words_ids": None,
    "begin_suppress_tokens": None, "bos_token_id": None, "chunk_size_feed_forward": 0,
    "cross_attention_hidden_size": None, "decoder_start_token_id": None, "diversity_penalty": 0.0,
    "do_sample": False, "early_stopping": False, "encoder_no_repeat_ngram_size": 0, "eos_token_id": None,
    "exponential_decay_length_penalty": None, "finetuning_task": None, "forced_bos_token_id": None,
    "forced_eos_token_id": None, "id2label": {"0": "LABEL_0", "1": "LABEL_1"}, "is_decoder": False,
    "is_encoder_decoder": False, "label2id": {"LABEL_0": 0, "LABEL_1": 1}, "length_penalty": 1.0,
    "max_length": 20, "min_length": 0, "no_repeat_ngram_size": 0, "num_beam_groups": 1, "num_beams": 1,
    "num_return_sequences": 1, "output_attentions": False, "output_hidden_states": False, "output_scores": False,
    "pad_token_id": None, "prefix": None, "problem_type": None, "pruned_heads": {}, "remove_invalid_values": False,
    "repetition_penalty": 1.0, "return_dict": True, "return_dict_in_generate": False, "sep_token_id": None,
    "suppress_tokens": None, "task_specific_params": None, "temperature": 1.0, "tf_legacy_loss": False,
    "tie_encoder_decoder": False, "tie_word_embeddings": False, "tokenizer_class": None, "top_k": 50, "top_p": 1.0, "dtype": None,
    "torchscript": False, "typical_p": 1.0, "use_bfloat16": False,
}


def check_choice(model_type: str, size: str) -> None:
    if model_type not in MODEL_TYPES:
        raise ValueError(f"model_type {model_type!r}: expected one of {', '.join(MODEL_TYPES)}")
    if size not in SIZES:
        raise ValueError(f"size {size!r}: expected one of {', '.join(SIZES)}")


def model_config(model_type: str, size: str) -> dict:
    """config.json of a model folder."""
    check_choice(model_type, size)
    shapes = _LM_SHAPES[size]
    predictor = {**_SAVED_CONFIG_DEFAULTS, "attention_bias": False, "attention_dropout": 0, **shapes["predictor"],
                 "hidden_act": "silu", "initializer_range": 0.02,
                 "layer_types": ["full_attention"] * shapes["predictor"]["num_hidden_layers"],
                 "max_position_embeddings": 65536, "max_window_layers": 28,
                 "model_type": "qwen3_tts_talker_code_predictor", "num_code_groups": 16, "rms_norm_eps": 1e-06,
                 "rope_scaling": None, "rope_theta": 1000000, "sliding_window": None, "use_cache": True,
                 "use_sliding_window": False, "vocab_size": 2048}
    custom_voice = model_type == "custom_voice"
    talker = {
        "attention_bias": False, "attention_dropout": 0, "code_predictor_config": dict(sorted(predictor.items())),
        "codec_bos_id": 2149, "codec_eos_token_id": 2150, "codec_think_id": 2154,
        "codec_language_id": {**LANGUAGE_IDS, **(DIALECT_LANGUAGE_IDS if custom_voice else {})},
        "codec_nothink_id": 2155, "codec_pad_id": 2148, "codec_think_bos_id": 2156, "codec_think_eos_id": 2157,
        "spk_id": dict(SPEAKER_IDS) if custom_voice else {},
        "spk_is_dialect": dict(SPEAKER_DIALECTS) if custom_voice else {},
        "head_dim": shapes["talker"]["head_dim"], "hidden_act": "silu", "hidden_size": shapes["talker"]["hidden_size"],
        "initializer_range": 0.02, "intermediate_size": shapes["talker"]["intermediate_size"],
        "max_position_embeddings": 32768, "model_type": "qwen3_tts_talker",
        "num_attention_heads": shapes["talker"]["num_attention_heads"], "num_code_groups": 16,
        "num_hidden_layers": shapes["talker"]["num_hidden_layers"],
        "num_key_value_heads": shapes["talker"]["num_key_value_heads"], "position_id_per_seconds": 13,
        "rms_norm_eps": 1e-06,
        "rope_scaling": {"interleaved": True, "mrope_section": list(shapes["mrope_section"]), "rope_type": "default",
                         "type": "default"},
        "rope_theta": 1000000, "sliding_window": None, "text_hidden_size": shapes["talker"]["text_hidden_size"],
        "text_vocab_size": 151936, "use_cache": True, "use_sliding_window": False, "vocab_size": 3072,
    }
    config = {
        "architectures": ["Qwen3TTSForConditionalGeneration"], "assistant_token_id": 77091,
        "im_end_token_id": 151645, "im_start_token_id": 151644, "tts_bos_token_id": 151672,
        "tts_eos_token_id": 151673, "tts_pad_token_id": 151671, "model_type": "qwen3_tts",
        "tokenizer_type": "qwen3_tts_tokenizer_12hz", "tts_model_size": shapes["size_label"],
        "tts_model_type": model_type, "talker_config": talker,
        # Without a transformers_version below 5, transformers rewrites the tokenizer's regex on load.
        "transformers_version": "4.57.3",
    }
    if model_type == "base":
        config["speaker_encoder_config"] = {"enc_dim": talker["hidden_size"], "sample_rate": 24000,
                                            **shapes["speaker_encoder"]}
    return config


def codec_config(size: str) -> dict:
    """speech_tokenizer/config.json."""
    check_choice("base", size)
    tiny = size.startswith("tiny")
    decoder = {
        "attention_bias": False, "attention_dropout": 0.0, "latent_dim": 1024, "codebook_dim": 512,
        "codebook_size": 2048, "decoder_dim": 1536, "hidden_act": "silu", "hidden_size": 512,
        "intermediate_size": 1024, "layer_scale_initial_scale": 0.01, "max_position_embeddings": 8000,
        "head_dim": 64, "num_attention_heads": 16, "num_hidden_layers": 8, "num_key_value_heads": 16,
        "num_quantizers": 16, "num_semantic_quantizers": 1, "rms_norm_eps": 1e-05, "rope_theta": 10000,
        "semantic_codebook_size": 4096, "sliding_window": 72, "upsample_rates": [8, 5, 4, 3],
        "upsampling_ratios": [2, 2], "vector_quantization_hidden_dimension": 512,
        **(_TINY_CODEC_DECODER if tiny else {}),
    }
    encoder = {
        "_frame_rate": 12.5, "attention_bias": False, "attention_dropout": 0.0, "audio_channels": 1,
        "codebook_dim": 256, "codebook_size": 2048, "compress": 2, "dilation_growth_rate": 2, "head_dim": 64,
        "hidden_act": "gelu", "hidden_size": 512, "initializer_range": 0.02, "intermediate_size": 2048,
        "kernel_size": 7, "last_kernel_size": 3, "layer_scale_initial_scale": 0.01, "max_position_embeddings": 8000,
        "norm_eps": 1e-05, "num_attention_heads": 8, "num_filters": 64, "num_hidden_layers": 8,
        "num_key_value_heads": 8, "num_quantizers": 32, "num_residual_layers": 1, "num_semantic_quantizers": 1,
        "pad_mode": "constant", "residual_kernel_size": 3, "rope_theta": 10000.0, "sampling_rate": 24000,
        "sliding_window": 250, "trim_right_ratio": 1.0, "upsample_groups": 512, "upsampling_ratios": [8, 6, 5, 4],
        "use_cache": False, "use_causal_conv": True, "use_conv_shortcut": False, "use_streaming": False,
        "vector_quantization_hidden_dimension": 256,
        **(_TINY_CODEC_ENCODER if tiny else {}),
    }
    return {
        "architectures": ["Qwen3TTSTokenizerV2Model"], "model_type": "qwen3_tts_tokenizer_12hz",
        "encoder_valid_num_quantizers": 16, "input_sample_rate": 24000, "output_sample_rate": 24000,
        "decode_upsample_rate": 1920, "encode_downsample_rate": 1920,
        "decoder_config": dict(sorted(decoder.items())), "encoder_config": dict(sorted(encoder.items())),
        "transformers_version": "4.57.3",
    }
