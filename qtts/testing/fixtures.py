"""Random-weight checkpoints in the exact official hub layout, for tests and benchmarks.

    write_checkpoint(folder, "custom_voice", "tiny")   # writes a complete model folder
    fixture_dir("base", "1.7b")                         # the same, cached; written only once

The folder holds what a hub model repo holds: config.json, generation_config.json,
model.safetensors (LM, bf16 by default), vocab.json + merges.txt + tokenizer_config.json,
preprocessor_config.json and speech_tokenizer/{config.json, model.safetensors (fp32),
preprocessor_config.json}. Shapes and layout: qtts/testing/configs.py and tensors.py.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from tqdm import tqdm

from .configs import (CODEC_PREPROCESSOR_CONFIG, GENERATION_CONFIG, PROCESSOR_CONFIG, check_choice, codec_config,
                      model_config)
from .random_weights import tensor_bytes, write_safetensors
from .tensors import codec_tensor_specs, lm_tensor_specs
from .tokenizer import write_tokenizer

# Bump when the generated files change, so cached fixtures from older code are not reused.
FIXTURE_VERSION = 2


def write_checkpoint(folder: str | os.PathLike, model_type: str = "custom_voice", size: str = "tiny",
                     seed: int = 0, dtype: torch.dtype = torch.bfloat16, progress: bool = False) -> Path:
    """Write a random-weight checkpoint folder and return its path.

    model_type: "base" | "custom_voice" | "voice_design"; size: "tiny" (1.7B-like), "tiny-0.6b"
    (0.6B-like), "0.6b" or "1.7b" (real shapes; 1.7B is ~4 GB in bf16). The same (model_type,
    size, seed) always gives the same bytes. `dtype` is the LM file's; the codec is fp32, as on the hub.
    progress: show a bar of the weight bytes written on stderr.
    """
    check_choice(model_type, size)
    folder = Path(folder)
    codec_folder = folder / "speech_tokenizer"
    codec_folder.mkdir(parents=True, exist_ok=True)
    config, codec = model_config(model_type, size), codec_config(size)
    _write_json(folder / "config.json", config)
    _write_json(folder / "generation_config.json", GENERATION_CONFIG)
    _write_json(folder / "preprocessor_config.json", PROCESSOR_CONFIG)
    write_tokenizer(folder)
    _write_json(codec_folder / "config.json", codec)
    _write_json(codec_folder / "preprocessor_config.json", CODEC_PREPROCESSOR_CONFIG)
    weights = [(folder / "model.safetensors", lm_tensor_specs(config), dtype),
               (codec_folder / "model.safetensors", codec_tensor_specs(codec), torch.float32)]
    total = sum(tensor_bytes(spec, file_dtype) for _, specs, file_dtype in weights for spec in specs)
    with tqdm(total=total, unit="B", unit_scale=True, desc="writing weights", file=sys.stderr,
              disable=not progress) as bar:
        for path, specs, file_dtype in weights:
            write_safetensors(path, specs, seed, file_dtype, on_tensor=bar.update)
    return folder


def fixture_cache_root() -> Path:
    """$QTTS_FIXTURE_CACHE, else ~/.cache/qtts/fixtures."""
    return Path(os.environ.get("QTTS_FIXTURE_CACHE") or Path.home() / ".cache" / "qtts" / "fixtures")


def fixture_dir(model_type: str, size: str = "tiny", seed: int = 0) -> Path:
    """A cached checkpoint folder (see write_checkpoint), written on first use.

    Writers race safely: each writes a private temporary folder and renames it into place;
    a loser discards its copy.
    """
    check_choice(model_type, size)
    root = fixture_cache_root()
    target = root / f"{model_type}-{size}-seed{seed}-v{FIXTURE_VERSION}"
    if target.is_dir():
        return target
    root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=root))
    try:
        write_checkpoint(scratch, model_type, size, seed)
        scratch.chmod(0o755)  # mkdtemp makes it private
        os.rename(scratch, target)
    except OSError:
        if not target.is_dir():
            raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def _write_json(path: Path, value: dict) -> None:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
