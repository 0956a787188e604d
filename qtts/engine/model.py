"""A loaded checkpoint as the engine needs it: configs, tokenizer, talker, codec decoder, prefix cache."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import (SAMPLE_RATE, CodecConfig, ModelConfig, load_codec_config, load_generation_defaults,
                      load_model_config)
from ..kernels import kernels_enabled
from ..models.codec_decoder import CodecDecoder, load_codec_decoder
from ..models.quantize import quantize_weights
from ..models.talker import Talker
from ..text import TextTokenizer
from ..weights import load_module, read_tensors
from .prefix_cache import DEFAULT_PREFIX_CACHE_MB, PrefixCache
from .request import SamplingParams

KV_CACHE_OPTIONS = (None, "int8", "int4")
DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
          "fp32": torch.float32, "float32": torch.float32}


def pick_device(device: str | torch.device | None) -> torch.device:
    """The device to run on: the one given, else cuda when available, else cpu."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def pick_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """The dtype to run in: the one given (a name or a torch dtype), else bf16 on GPU and fp32 on CPU."""
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(DTYPES)}")
        return DTYPES[dtype]
    return dtype


@dataclass
class ModelBundle:
    """What an engine runs: one checkpoint's configs and tokenizer, and (unless loaded without a
    generator) its talker, codec decoder and prompt-prefix cache on `device`."""

    folder: Path
    config: ModelConfig
    codec_config: CodecConfig
    generation_defaults: dict
    tokenizer: TextTokenizer
    device: torch.device
    dtype: torch.dtype
    max_len: int
    use_graphs: bool
    talker: Talker | None = None
    codec_decoder: CodecDecoder | None = None
    prefix_cache: PrefixCache | None = None
    kv_cache: str | None = None  # the talker KV cache's quantization: None (the model's dtype), "int8" or "int4"
    load_options: dict = field(default_factory=dict)  # load_model's keywords: how to load it again

    @property
    def sample_rate(self) -> int:
        return SAMPLE_RATE

    @property
    def has_generator(self) -> bool:
        return self.talker is not None

    @property
    def code_limit(self) -> int:
        """The largest codec code id (the codec clamps to it)."""
        return self.codec_config.decoder.codebook_size - 1

    def sampling(self, **overrides) -> SamplingParams:
        """Sampling parameters: generation_config.json defaults, then the given overrides."""
        return SamplingParams.from_generation_config(self.generation_defaults, **overrides)


def load_model(folder: Path, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None,
               max_len: int = 4096, use_graphs: bool | None = None, fused_kernels: bool | None = None,
               prefix_cache_mb: float = DEFAULT_PREFIX_CACHE_MB, generator: bool = True, fp8_talker: bool = False,
               fp8_predictor: bool = False, kv_cache: str | None = None) -> ModelBundle:
    """Load a checkpoint folder (see TTS.from_pretrained for the options); generator=False loads only
    what building requests takes (configs, tokenizer)."""
    if kv_cache not in KV_CACHE_OPTIONS:
        raise ValueError(f"unknown KV cache option {kv_cache!r}; use one of int8, int4 (or none)")
    device = pick_device(device)
    dtype = pick_dtype(dtype, device)
    folder = Path(folder)
    options = {"device": str(device), "dtype": dtype, "max_len": max_len, "use_graphs": use_graphs,
               "fused_kernels": fused_kernels, "prefix_cache_mb": prefix_cache_mb, "fp8_talker": fp8_talker,
               "fp8_predictor": fp8_predictor, "kv_cache": kv_cache}
    bundle = ModelBundle(folder=folder, config=load_model_config(folder),
                         codec_config=load_codec_config(folder / "speech_tokenizer"),
                         generation_defaults=load_generation_defaults(folder),
                         tokenizer=TextTokenizer.from_folder(folder), device=device, dtype=dtype, max_len=max_len,
                         use_graphs=device.type == "cuda" if use_graphs is None else use_graphs,
                         kv_cache=kv_cache, load_options=options)
    if not generator:
        return bundle
    talker = Talker(bundle.config.talker)
    load_module(talker, read_tensors(folder, "talker."), f"{folder}/model.safetensors")
    bundle.talker = talker.to(device=device, dtype=dtype).eval()
    if kernels_enabled(device) if fused_kernels is None else fused_kernels:
        bundle.talker.model.fuse()
        bundle.talker.code_predictor.model.fuse(gemv=True)
    quantize_weights(bundle.talker, talker_fp8=fp8_talker, predictor_fp8=fp8_predictor)
    bundle.codec_decoder = load_codec_decoder(folder / "speech_tokenizer", device, dtype)
    if prefix_cache_mb > 0:
        bundle.prefix_cache = PrefixCache(int(prefix_cache_mb * 2**20))
    return bundle
