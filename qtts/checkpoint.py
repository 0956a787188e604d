"""Find a checkpoint folder: a local path, or a hub id fetched with huggingface_hub."""
from __future__ import annotations

import os
from pathlib import Path

from .errors import CheckpointError

REQUIRED_FILES = ("config.json", "speech_tokenizer/config.json")


def resolve_checkpoint(path_or_id: str | os.PathLike) -> Path:
    """A local folder as is; otherwise a hub id such as 'Qwen/Qwen3-TTS-12Hz-1.7B-CustomVoice'."""
    path = Path(path_or_id).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(f"{path} is a file; pass the checkpoint folder")
        return check_layout(path)
    text = str(path_or_id)
    if text.count("/") != 1 or text.startswith((".", "/", "~")):
        raise CheckpointError(f"{text}: no such folder (and not a hub id like 'Qwen/Qwen3-TTS-12Hz-0.6B-Base')")
    try:
        from huggingface_hub import snapshot_download

        return check_layout(Path(snapshot_download(text)))
    except CheckpointError:
        raise
    except Exception as exc:  # network, auth or not-found errors from the hub client
        raise CheckpointError(
            f"could not fetch {text!r} from the Hugging Face hub ({type(exc).__name__}). "
            "Offline? Download the checkpoint elsewhere and pass its local folder instead."
        ) from exc


def check_layout(folder: Path) -> Path:
    """The folder, once it holds every file a checkpoint needs; CheckpointError naming the missing ones.

    The tokenizer may come either as `tokenizer.json` (what `transformers` saves) or as
    `vocab.json` + `merges.txt` + `tokenizer_config.json` (what the hub ships).
    """
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if not (folder / "tokenizer.json").is_file():
        bpe_files = ("vocab.json", "merges.txt", "tokenizer_config.json")
        absent = [name for name in bpe_files if not (folder / name).is_file()]
        if absent:
            missing.append(f"tokenizer.json (or {' + '.join(absent)})")
    has_weights = (folder / "model.safetensors").is_file() or (folder / "model.safetensors.index.json").is_file()
    if not has_weights:
        missing.append("model.safetensors")
    codec = folder / "speech_tokenizer"
    if not ((codec / "model.safetensors").is_file() or (codec / "model.safetensors.index.json").is_file()):
        missing.append("speech_tokenizer/model.safetensors")
    if missing:
        raise CheckpointError(f"{folder} is not a complete Qwen3-TTS 12Hz checkpoint; missing: {', '.join(missing)}")
    return folder
