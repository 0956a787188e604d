"""Every tensor of a checkpoint, by name, shape and random init, derived from its config.json.

The names are the official hub names (the upstream modules' state_dict keys, persistent
buffers included); the tables double as documentation of the file layout. Init scales keep
activations near unit size through any depth (weights ~ N(0, 1/fan_in)), so that embeddings,
attention, MLPs and text all move the logits, greedy decoding gives varied codes and the
codec's waveform stays mostly inside [-1, 1].
"""
from __future__ import annotations

import math
from typing import NamedTuple


class Init(NamedTuple):
    kind: str  # "normal" (std a, mean b) | "uniform" [a, b) | "constant" (a)
    a: float
    b: float = 0.0


class TensorSpec(NamedTuple):
    name: str
    shape: tuple[int, ...]
    init: Init


BIAS = Init("normal", 0.1)
NORM = Init("normal", 0.1, 1.0)
QK_NORM = Init("normal", 0.2, 2.0)  # sharper attention, so each position's output depends on its context
SCALE = Init("uniform", 0.25, 0.75)  # layer scales and ConvNeXt gamma: every branch contributes
SNAKE = Init("normal", 0.1)  # log-scale alpha/beta of SnakeBeta, near exp(0) = 1
USAGE = Init("uniform", 0.5, 1.5)  # codebook cluster_usage: codebook rows = embedding_sum / usage


def fan_in(*dims: int, gain: float = 1.0) -> Init:
    return Init("normal", gain / math.sqrt(math.prod(dims)))


def _linear(name: str, out: int, into: int, bias: bool = False) -> list[TensorSpec]:
    specs = [TensorSpec(f"{name}.weight", (out, into), fan_in(into))]
    return specs + ([TensorSpec(f"{name}.bias", (out,), BIAS)] if bias else [])


def _conv(name: str, out: int, into: int, kernel: int, bias: bool = True, gain: float = 1.0,
          transposed_stride: int = 0) -> list[TensorSpec]:
    """Conv1d (out, in, k), or ConvTranspose1d (in, out, k) when transposed_stride is given."""
    if transposed_stride:
        weight = TensorSpec(f"{name}.weight", (into, out, kernel), fan_in(into, kernel / transposed_stride, gain=gain))
    else:
        weight = TensorSpec(f"{name}.weight", (out, into, kernel), fan_in(into, kernel, gain=gain))
    return [weight] + ([TensorSpec(f"{name}.bias", (out,), BIAS)] if bias else [])


def _attention(name: str, hidden: int, q_dim: int, kv_dim: int) -> list[TensorSpec]:
    return (_linear(f"{name}.q_proj", q_dim, hidden) + _linear(f"{name}.k_proj", kv_dim, hidden)
            + _linear(f"{name}.v_proj", kv_dim, hidden) + _linear(f"{name}.o_proj", hidden, q_dim))


def _qwen3_layers(prefix: str, cfg: dict, qk_norm: bool = True, layer_scale: bool = False) -> list[TensorSpec]:
    """Decoder layers of the talker, the code predictor and the codec's pre-transformer."""
    hidden, inter, head_dim = cfg["hidden_size"], cfg["intermediate_size"], cfg["head_dim"]
    q_dim, kv_dim = cfg["num_attention_heads"] * head_dim, cfg["num_key_value_heads"] * head_dim
    specs = []
    for i in range(cfg["num_hidden_layers"]):
        layer = f"{prefix}.layers.{i}"
        specs += [TensorSpec(f"{layer}.input_layernorm.weight", (hidden,), NORM),
                  TensorSpec(f"{layer}.post_attention_layernorm.weight", (hidden,), NORM)]
        specs += _attention(f"{layer}.self_attn", hidden, q_dim, kv_dim)
        if qk_norm:
            specs += [TensorSpec(f"{layer}.self_attn.q_norm.weight", (head_dim,), QK_NORM),
                      TensorSpec(f"{layer}.self_attn.k_norm.weight", (head_dim,), QK_NORM)]
        specs += _linear(f"{layer}.mlp.gate_proj", inter, hidden)
        specs += _linear(f"{layer}.mlp.up_proj", inter, hidden)
        specs += _linear(f"{layer}.mlp.down_proj", hidden, inter)
        if layer_scale:
            specs += [TensorSpec(f"{layer}.self_attn_layer_scale.scale", (hidden,), SCALE),
                      TensorSpec(f"{layer}.mlp_layer_scale.scale", (hidden,), SCALE)]
    return specs + [TensorSpec(f"{prefix}.norm.weight", (hidden,), NORM)]


def lm_tensor_specs(config: dict) -> list[TensorSpec]:
    """model.safetensors: talker, code predictor, and the speaker encoder of Base models."""
    talker = config["talker_config"]
    predictor = talker["code_predictor_config"]
    hidden, text_hidden, pred_hidden = talker["hidden_size"], talker["text_hidden_size"], predictor["hidden_size"]
    specs = [TensorSpec("talker.model.text_embedding.weight", (talker["text_vocab_size"], text_hidden),
                        Init("normal", 1.0)),
             TensorSpec("talker.model.codec_embedding.weight", (talker["vocab_size"], hidden), Init("normal", 1.0))]
    specs += _qwen3_layers("talker.model", talker)
    specs += _linear("talker.text_projection.linear_fc1", text_hidden, text_hidden, bias=True)
    specs += _linear("talker.text_projection.linear_fc2", hidden, text_hidden, bias=True)
    specs += _linear("talker.codec_head", talker["vocab_size"], hidden)
    cp = "talker.code_predictor"
    groups = predictor["num_code_groups"] - 1
    specs += [TensorSpec(f"{cp}.model.codec_embedding.{k}.weight", (predictor["vocab_size"], hidden),
                         Init("normal", 1.0)) for k in range(groups)]
    specs += _qwen3_layers(f"{cp}.model", predictor)
    for k in range(groups):
        specs += _linear(f"{cp}.lm_head.{k}", predictor["vocab_size"], pred_hidden)
    if pred_hidden != hidden:
        specs += _linear(f"{cp}.small_to_mtp_projection", pred_hidden, hidden, bias=True)
    if config.get("tts_model_type") == "base":
        specs += speaker_encoder_specs(config.get("speaker_encoder_config") or {})
    return specs


def speaker_encoder_specs(cfg: dict) -> list[TensorSpec]:
    """ECAPA-TDNN (Base models); missing keys take upstream's class defaults, as upstream does."""
    channels = cfg.get("enc_channels", [512, 512, 512, 512, 1536])
    kernels = cfg.get("enc_kernel_sizes", [5, 3, 3, 3, 1])
    scale, se, attention = cfg.get("enc_res2net_scale", 8), cfg.get("enc_se_channels", 128), \
        cfg.get("enc_attention_channels", 128)
    relu = math.sqrt(2)
    p = "speaker_encoder"
    specs = _conv(f"{p}.blocks.0.conv", channels[0], cfg.get("mel_dim", 128), kernels[0], gain=relu)
    for i in range(1, len(channels) - 1):
        c, block = channels[i], f"{p}.blocks.{i}"
        specs += _conv(f"{block}.tdnn1.conv", c, channels[i - 1], 1, gain=relu)
        for j in range(scale - 1):
            specs += _conv(f"{block}.res2net_block.blocks.{j}.conv", c // scale, c // scale, kernels[i], gain=relu)
        specs += _conv(f"{block}.tdnn2.conv", c, c, 1, gain=relu)
        specs += _conv(f"{block}.se_block.conv1", se, c, 1, gain=relu)
        specs += _conv(f"{block}.se_block.conv2", c, se, 1)
    last = channels[-1]
    specs += _conv(f"{p}.mfa.conv", last, last, kernels[-1], gain=relu)
    specs += _conv(f"{p}.asp.tdnn.conv", attention, last * 3, 1, gain=relu)
    specs += _conv(f"{p}.asp.conv", last, attention, 1)
    # Small output gain: x-vectors about as large as the codec embedding rows they stand in for.
    return specs + _conv(f"{p}.fc", cfg.get("enc_dim", 1024), last * 2, 1, gain=0.1)


def codec_tensor_specs(config: dict) -> list[TensorSpec]:
    """speech_tokenizer/model.safetensors: the Mimi encoder and the codec decoder."""
    return _mimi_encoder_specs(config["encoder_config"]) + _codec_decoder_specs(config["decoder_config"])


def _mimi_encoder_specs(cfg: dict) -> list[TensorSpec]:
    p, filters, compress = "encoder", cfg["num_filters"], cfg["compress"]
    specs = _conv(f"{p}.encoder.layers.0.conv", filters, cfg["audio_channels"], cfg["kernel_size"])
    index, channels = 1, filters
    for ratio in reversed(cfg["upsampling_ratios"]):
        for _ in range(cfg["num_residual_layers"]):
            block = f"{p}.encoder.layers.{index}.block"
            specs += _conv(f"{block}.1.conv", channels // compress, channels, cfg["residual_kernel_size"])
            specs += _conv(f"{block}.3.conv", channels, channels // compress, 1)
            index += 1
        specs += _conv(f"{p}.encoder.layers.{index + 1}.conv", channels * 2, channels, ratio * 2)
        index, channels = index + 2, channels * 2
    specs += _conv(f"{p}.encoder.layers.{index + 1}.conv", cfg["hidden_size"], channels, cfg["last_kernel_size"])
    hidden, head_dim = cfg["hidden_size"], cfg["head_dim"]
    for i in range(cfg["num_hidden_layers"]):
        layer = f"{p}.encoder_transformer.layers.{i}"
        specs += _attention(f"{layer}.self_attn", hidden, cfg["num_attention_heads"] * head_dim,
                            cfg["num_key_value_heads"] * head_dim)
        specs += _linear(f"{layer}.mlp.fc1", cfg["intermediate_size"], hidden)
        specs += _linear(f"{layer}.mlp.fc2", hidden, cfg["intermediate_size"])
        for norm in ("input_layernorm", "post_attention_layernorm"):
            specs += [TensorSpec(f"{layer}.{norm}.weight", (hidden,), NORM),
                      TensorSpec(f"{layer}.{norm}.bias", (hidden,), BIAS)]
        specs += [TensorSpec(f"{layer}.self_attn_layer_scale.scale", (hidden,), SCALE),
                  TensorSpec(f"{layer}.mlp_layer_scale.scale", (hidden,), SCALE)]
    specs += _conv(f"{p}.downsample.conv", hidden, hidden, 4, bias=False)
    vq_dim, size = cfg["vector_quantization_hidden_dimension"], cfg["codebook_size"]
    semantic = cfg["num_semantic_quantizers"]
    for rvq, layers in (("semantic", semantic), ("acoustic", cfg["num_quantizers"] - semantic)):
        q = f"{p}.quantizer.{rvq}_residual_vector_quantizer"
        for j in range(layers):
            # Each stage quantizes a smaller residual, so its codebook is smaller too.
            specs += [TensorSpec(f"{q}.layers.{j}.codebook.initialized", (1,), Init("constant", 1.0)),
                      TensorSpec(f"{q}.layers.{j}.codebook.cluster_usage", (size,), USAGE),
                      TensorSpec(f"{q}.layers.{j}.codebook.embed_sum", (size, cfg["codebook_dim"]),
                                 Init("normal", 0.75 ** j))]
        specs += _conv(f"{q}.input_proj", vq_dim, hidden, 1, bias=False)
        specs += _conv(f"{q}.output_proj", hidden, vq_dim, 1, bias=False)
    return specs


def _codec_decoder_specs(cfg: dict) -> list[TensorSpec]:
    p, dim, size, latent = "decoder", cfg["codebook_dim"], cfg["codebook_size"], cfg["latent_dim"]
    specs = []
    for rvq, layers in (("rvq_first", 1), ("rvq_rest", cfg["num_quantizers"] - 1)):
        q = f"{p}.quantizer.{rvq}"
        specs += _conv(f"{q}.input_proj", dim // 2, dim, 1, bias=False)
        specs += _conv(f"{q}.output_proj", dim, dim // 2, 1, bias=False, gain=1 / math.sqrt(layers))
        for j in range(layers):
            specs += [TensorSpec(f"{q}.vq.layers.{j}._codebook.cluster_usage", (size,), USAGE),
                      TensorSpec(f"{q}.vq.layers.{j}._codebook.embedding_sum", (size, dim // 2), Init("normal", 1.0))]
    specs += _conv(f"{p}.pre_conv.conv", latent, dim, 3)
    specs += _linear(f"{p}.pre_transformer.input_proj", cfg["hidden_size"], latent, bias=True)
    specs += _qwen3_layers(f"{p}.pre_transformer", cfg, qk_norm=False, layer_scale=True)
    specs += _linear(f"{p}.pre_transformer.output_proj", latent, cfg["hidden_size"], bias=True)
    for u, factor in enumerate(cfg["upsampling_ratios"]):
        block = f"{p}.upsample.{u}"
        specs += _conv(f"{block}.0.conv", latent, latent, factor, transposed_stride=factor)
        specs += [TensorSpec(f"{block}.1.gamma", (latent,), SCALE)]
        specs += _conv(f"{block}.1.dwconv.conv", latent, 1, 7)
        specs += [TensorSpec(f"{block}.1.norm.weight", (latent,), NORM),
                  TensorSpec(f"{block}.1.norm.bias", (latent,), BIAS)]
        specs += _linear(f"{block}.1.pwconv1", 4 * latent, latent, bias=True)
        specs += _linear(f"{block}.1.pwconv2", latent, 4 * latent, bias=True)
    width = cfg["decoder_dim"]
    specs += _conv(f"{p}.decoder.0.conv", width, latent, 7)
    for b, rate in enumerate(cfg["upsample_rates"], start=1):
        block, out = f"{p}.decoder.{b}.block", width // 2
        specs += _snake(f"{block}.0", width)
        specs += _conv(f"{block}.1.conv", out, width, 2 * rate, transposed_stride=rate)
        for unit in (2, 3, 4):
            specs += _snake(f"{block}.{unit}.act1", out)
            specs += _conv(f"{block}.{unit}.conv1.conv", out, out, 7)
            specs += _snake(f"{block}.{unit}.act2", out)
            specs += _conv(f"{block}.{unit}.conv2.conv", out, out, 1, gain=0.5)
        width = out
    last = len(cfg["upsample_rates"]) + 1
    specs += _snake(f"{p}.decoder.{last}", width)
    # Small output gain: a waveform mostly inside the final clamp to [-1, 1].
    return specs + _conv(f"{p}.decoder.{last + 1}.conv", 1, width, 7, gain=0.05)


def _snake(name: str, channels: int) -> list[TensorSpec]:
    return [TensorSpec(f"{name}.alpha", (channels,), SNAKE), TensorSpec(f"{name}.beta", (channels,), SNAKE)]
