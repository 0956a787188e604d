"""What the command line can check before it loads a model, so that a typo costs no generation."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ..audio import format_of_path
from ..errors import AudioError, QttsError

NEEDS_PYAV = ("mp3", "opus", "aac")


def device(name: str | None) -> None:
    """QttsError unless `name` is a device this torch can run on (cpu, cuda, cuda:N)."""
    import torch

    if name is None:
        return
    try:
        parsed = torch.device(name)
    except RuntimeError:
        raise QttsError(f"--device {name!r} is not a device; use cpu, cuda or cuda:N") from None
    if parsed.type == "cpu":
        return
    if parsed.type != "cuda":
        raise QttsError(f"--device {name}: qtts runs on cpu or cuda")
    if torch.version.cuda is None:
        raise QttsError(f"--device {name}: this torch {torch.__version__} is a CPU-only build; use --device cpu, "
                        "or install a CUDA build of torch")
    if not torch.cuda.is_available():
        raise QttsError(f"--device {name}: no CUDA GPU is visible; use --device cpu")
    if parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise QttsError(f"--device {name}: there are {torch.cuda.device_count()} CUDA devices (cuda:0 ...)")


def audio_output(path: str | os.PathLike, streamed: bool = False) -> Path:
    """`path` as a writable audio file whose suffix names a format this machine can encode."""
    fmt = format_of_path(path)
    if fmt in NEEDS_PYAV or (streamed and fmt == "flac"):  # streamed flac goes through PyAV too
        try:
            import av  # noqa: F401
        except ImportError:
            raise AudioError(f"{path}: {fmt} output needs PyAV (`pip install av`); or write .wav") from None
    return writable_file(path)


def writable_file(path: str | os.PathLike) -> Path:
    """`path` once its folder exists and takes new files; QttsError saying what is wrong otherwise."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise QttsError(f"{path} is a folder; give a file name")
    writable_folder(path.parent, create=False)
    if path.exists() and not os.access(path, os.W_OK):
        raise QttsError(f"{path} exists and is read-only")
    return path


def writable_folder(folder: str | os.PathLike, create: bool) -> Path:
    """`folder` (made first when `create`) once a file can be written into it."""
    folder = Path(folder).expanduser()
    if create:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise QttsError(f"cannot create the folder {folder}: {exc.strerror}") from None
    if not folder.is_dir():
        raise QttsError(f"the folder {folder} does not exist; create it first")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise QttsError(f"cannot write into {folder}: {exc.strerror}") from None
    return folder


def input_file(path: str | os.PathLike, option: str) -> Path:
    """`path` once it is a readable file; QttsError naming `option` otherwise."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise QttsError(f"{option} {path} is a folder; give a file")
    if not path.is_file():
        raise QttsError(f"{option} {path}: no such file")
    if not os.access(path, os.R_OK):
        raise QttsError(f"{option} {path} is not readable")
    return path
