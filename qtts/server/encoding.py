"""Streaming audio encoders: float chunks in, the bytes of one growing audio file out.

wav and pcm are written directly (the wav header says "unknown length", 0xFFFFFFFF, which players
and libsndfile read up to the end of the data); flac, mp3, opus (in Ogg) and aac (ADTS) go through
PyAV, whose muxers are told to hand bytes over after each packet. Concatenating everything
`encode` and `finish` return gives a complete file. A streamed FLAC's header says its length is
unknown (total samples 0, no MD5), as FLAC allows; libsndfile (soundfile) cannot read such files,
FFmpeg/PyAV and browsers can (docs/security.md says so for users).
"""
from __future__ import annotations

import struct
from typing import Protocol

import numpy as np

from ..audio import float_to_pcm16
from ..errors import AudioError

MEDIA_TYPES = {"wav": "audio/wav", "pcm": "audio/pcm", "flac": "audio/flac", "mp3": "audio/mpeg",
               "opus": "audio/ogg", "aac": "audio/aac"}
# format -> (container, codec, muxer options)
_AV_FORMATS = {"flac": ("flac", "flac", {}), "mp3": ("mp3", "libmp3lame", {}),
               "opus": ("ogg", "libopus", {"page_duration": "20000"}), "aac": ("adts", "aac", {})}
UNKNOWN_LENGTH = 0xFFFFFFFF


class StreamEncoder(Protocol):
    """Encodes one mono stream; `encode` may return b"" while a codec fills its frame."""

    def encode(self, samples: np.ndarray) -> bytes: ...

    def finish(self) -> bytes: ...


class PcmEncoder:
    """Raw 16-bit little-endian samples."""

    def encode(self, samples: np.ndarray) -> bytes:
        return float_to_pcm16(samples).astype("<i2").tobytes()

    def finish(self) -> bytes:
        return b""


class WavEncoder(PcmEncoder):
    """A 16-bit PCM RIFF header with unknown sizes, then the samples as they come."""

    def __init__(self, sample_rate: int):
        self.header = wav_header(sample_rate)

    def encode(self, samples: np.ndarray) -> bytes:
        header, self.header = self.header, b""
        return header + super().encode(samples)

    def finish(self) -> bytes:
        return self.encode(np.zeros(0, dtype=np.float32)) if self.header else b""


class _ByteSink:
    def __init__(self):
        self.parts: list[bytes] = []

    def write(self, data) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        data, self.parts = b"".join(self.parts), []
        return data


class AvEncoder:
    """flac, mp3, opus or aac through PyAV (FFmpeg inside the wheel)."""

    def __init__(self, fmt: str, sample_rate: int):
        import av

        container_format, codec, options = _AV_FORMATS[fmt]
        self.sample_rate = sample_rate
        self.sink = _ByteSink()
        self.container = av.open(self.sink, mode="w", format=container_format,
                                 options={"flush_packets": "1", **options}, buffer_size=4096)
        self.stream = self.container.add_stream(codec, rate=sample_rate, layout="mono")

    def encode(self, samples: np.ndarray) -> bytes:
        import av

        if len(samples):
            frame = av.AudioFrame.from_ndarray(float_to_pcm16(samples).reshape(1, -1), format="s16",
                                               layout="mono")
            frame.sample_rate = self.sample_rate
            self._mux(frame)
        return self.sink.take()

    def finish(self) -> bytes:
        self._mux(None)
        self.container.close()
        return self.sink.take()

    def _mux(self, frame) -> None:
        for packet in self.stream.encode(frame):
            self.container.mux(packet)


def wav_header(sample_rate: int) -> bytes:
    """A mono 16-bit PCM wav header whose RIFF and data sizes say 'unknown' (streamed)."""
    fmt = struct.pack("<HHIIHH", 1, 1, sample_rate, sample_rate * 2, 2, 16)
    return (b"RIFF" + struct.pack("<I", UNKNOWN_LENGTH) + b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
            + b"data" + struct.pack("<I", UNKNOWN_LENGTH))


def check_format(fmt: str) -> None:
    """Raise AudioError unless `fmt` can be encoded here (mp3, opus and aac need PyAV)."""
    if fmt not in MEDIA_TYPES:
        raise AudioError(f"unknown audio format {fmt!r}; choose one of {', '.join(MEDIA_TYPES)}")
    if fmt in ("flac", "mp3", "opus", "aac"):
        try:
            import av  # noqa: F401
        except ImportError as exc:
            raise AudioError(f"{fmt} output needs PyAV on the server (`pip install av`); "
                             "ask for wav or pcm instead") from exc


def stream_encoder(fmt: str, sample_rate: int) -> StreamEncoder:
    """A fresh encoder for one response in `fmt` (see MEDIA_TYPES)."""
    check_format(fmt)
    if fmt == "pcm":
        return PcmEncoder()
    if fmt == "wav":
        return WavEncoder(sample_rate)
    return AvEncoder(fmt, sample_rate)
