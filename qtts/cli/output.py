"""Audio files the command line writes: whole at once (all or nothing), or growing while generated."""
from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

from ..audio import encode_audio, format_of_path
from ..server.encoding import stream_encoder

WAV_HEADER_BYTES = 44


def write_whole(path: Path, samples: np.ndarray, sample_rate: int) -> None:
    """Encode `samples` in the format `path`'s suffix names and write the file whole or not at all."""
    write_atomically(path, encode_audio(samples, sample_rate, format_of_path(path)))


def write_atomically(path: Path, data: bytes) -> None:
    """`data` written beside `path`, then renamed onto it: an interruption never leaves half a file."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        partial.write_bytes(data)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


class GrowingAudioFile:
    """An audio file that grows on disk chunk by chunk, so a player can open it while it is generated.

    A wav is written with the "unknown length" header that players read to the end of the data, and
    gets its real sizes on close. Used as a context manager, an exception (Ctrl-C included) removes
    the unfinished file.
    """

    def __init__(self, path: Path, sample_rate: int):
        self.path = path
        self.format = format_of_path(path)
        self.encoder = stream_encoder(self.format, sample_rate)
        self.file = open(path, "wb")

    def write(self, samples: np.ndarray) -> None:
        self.file.write(self.encoder.encode(samples))
        self.file.flush()

    def close(self) -> None:
        self.file.write(self.encoder.finish())
        if self.format == "wav":
            size = self.file.tell()
            self.file.seek(4)
            self.file.write(struct.pack("<I", size - 8))
            self.file.seek(WAV_HEADER_BYTES - 4)
            self.file.write(struct.pack("<I", size - WAV_HEADER_BYTES))
        self.file.close()

    def discard(self) -> None:
        self.file.close()
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> "GrowingAudioFile":
        return self

    def __exit__(self, error_type, error, traceback) -> None:
        if error_type is None:
            self.close()
        else:
            self.discard()
