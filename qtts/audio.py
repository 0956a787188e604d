"""Audio in and out: read reference audio, resample it like upstream, encode speech for clients.

Reading: soundfile (WAV, FLAC, OGG/Vorbis/Opus, MP3), then PyAV for anything else it can
decode (M4A/AAC, WebM, ...). Multi-channel audio is averaged to mono, as upstream does.
Resampling: soxr at the quality librosa's default `soxr_hq` uses, with librosa's output length,
so references resampled here give the same samples as upstream's `librosa.resample`.
"""
from __future__ import annotations

import io
import math
import os
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from .config import SAMPLE_RATE
from .errors import AudioError

MIN_REFERENCE_SECONDS = 0.5  # below this the x-vector is unreliable and the codec gets 6 frames or fewer
SILENCE_PEAK = 1e-4  # a reference whose loudest sample is quieter than this (-80 dBFS) is silence
MAX_CHANNELS = 16
FORMATS = ("wav", "pcm", "flac", "mp3", "opus", "aac")
# format -> (container, codec) for the formats PyAV encodes
_AV_FORMATS = {"mp3": ("mp3", "libmp3lame"), "opus": ("ogg", "libopus"), "aac": ("adts", "aac")}
_SUFFIX_FORMATS = {"wav": "wav", "flac": "flac", "mp3": "mp3", "opus": "opus", "ogg": "opus", "aac": "aac",
                   "pcm": "pcm", "raw": "pcm"}


def load_audio(source, sample_rate: int | None = None) -> tuple[np.ndarray, int]:
    """Mono float32 samples and their sample rate.

    source: a file path, the bytes of an audio file, a binary file-like object, or an array
    (samples,) / (samples, channels) with `sample_rate` given (or the tuple (array, sample_rate)).
    Signed integer arrays are scaled from their full range to [-1, 1). Raises AudioError for data that
    cannot be read, holds no samples, or holds NaN/inf.
    """
    if isinstance(source, tuple) and len(source) == 2:
        source, sample_rate = source
    if isinstance(source, np.ndarray) or _is_tensor(source):
        if sample_rate is None:
            raise AudioError("an audio array needs its sample rate: pass (array, sample_rate)")
        wav, sr = _from_array(source), sample_rate
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise AudioError(f"audio file not found: {path}")
        wav, sr = _decode(path.read_bytes(), str(path))
    elif isinstance(source, (bytes, bytearray, memoryview)):
        wav, sr = _decode(bytes(source), "the audio bytes")
    elif hasattr(source, "read"):
        wav, sr = _decode(source.read(), "the audio file object")
    else:
        raise AudioError(f"cannot read audio from a {type(source).__name__}: pass a path, bytes, a file "
                         "or (array, sample_rate)")
    if not isinstance(sr, (int, np.integer)) or sr <= 0:
        raise AudioError(f"sample rate must be a positive integer, got {sr!r}")
    if wav.size == 0:
        raise AudioError("the audio holds no samples")
    if not np.isfinite(wav).all():
        raise AudioError("the audio holds NaN or infinite samples")
    return wav, int(sr)


def check_reference(wav: np.ndarray, sample_rate: int) -> None:
    """Raise AudioError unless the audio can serve as a voice reference (long and loud enough)."""
    seconds = wav.shape[-1] / sample_rate
    if seconds < MIN_REFERENCE_SECONDS:
        raise AudioError(f"reference audio is {seconds:.2f} s long; at least {MIN_REFERENCE_SECONDS} s is needed "
                         "(3-10 s of clear speech works best)")
    peak = float(np.abs(wav).max())
    if peak < SILENCE_PEAK:
        raise AudioError(f"reference audio is silent (peak {peak:.1e}); record or choose audio with speech in it")


def load_reference(source, sample_rate: int | None = None) -> tuple[np.ndarray, int]:
    """`load_audio` plus `check_reference`: audio fit to clone a voice from, at its own rate."""
    wav, sr = load_audio(source, sample_rate)
    check_reference(wav, sr)
    return wav, sr


def resample(wav: np.ndarray, sr_from: int, sr_to: int) -> np.ndarray:
    """float32 audio at sr_to; same samples as `librosa.resample(wav, orig_sr=sr_from, target_sr=sr_to)`."""
    wav = np.asarray(wav, dtype=np.float32)
    if sr_from == sr_to:
        return wav
    out = soxr.resample(wav, sr_from, sr_to, quality="soxr_hq")
    length = int(math.ceil(wav.shape[-1] * float(sr_to) / sr_from))
    if out.shape[-1] > length:
        out = out[..., :length]
    elif out.shape[-1] < length:
        out = np.pad(out, [(0, 0)] * (out.ndim - 1) + [(0, length - out.shape[-1])])
    return np.asarray(out, dtype=np.float32)


def to_24k(wav: np.ndarray, sample_rate: int) -> np.ndarray:
    """Resample to the model's 24 kHz."""
    return resample(wav, sample_rate, SAMPLE_RATE)


def float_to_pcm16(wav: np.ndarray) -> np.ndarray:
    """int16 samples of float audio: clipped to [-1, 1], scaled by 32767, rounded."""
    return np.rint(np.clip(np.asarray(wav, dtype=np.float32), -1.0, 1.0) * 32767.0).astype(np.int16)


def encode_audio(wav: np.ndarray, sample_rate: int, fmt: str) -> bytes:
    """The bytes of a mono audio file in `fmt`: wav, flac (16-bit), pcm (raw 16-bit little-endian),
    mp3, opus (in Ogg) or aac (ADTS); the last three need PyAV (`pip install av`)."""
    fmt = fmt.lower()
    if fmt not in FORMATS:
        raise AudioError(f"unknown audio format {fmt!r}; choose one of {', '.join(FORMATS)}")
    pcm = float_to_pcm16(wav)
    if fmt == "pcm":
        return pcm.astype("<i2").tobytes()
    if fmt in ("wav", "flac"):
        buffer = io.BytesIO()
        sf.write(buffer, pcm, sample_rate, format=fmt.upper(), subtype="PCM_16")
        return buffer.getvalue()
    return _encode_with_av(pcm, sample_rate, fmt)


def format_of_path(path: str | os.PathLike) -> str:
    """The format (one of FORMATS) a file's suffix names; AudioError for a suffix that names none."""
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in _SUFFIX_FORMATS:
        raise AudioError(f"cannot tell the audio format from {str(path)!r}; use one of "
                         f"{', '.join('.' + s for s in _SUFFIX_FORMATS)}")
    return _SUFFIX_FORMATS[suffix]


def write_audio(path: str | os.PathLike, wav: np.ndarray, sample_rate: int) -> None:
    """Write mono audio to a file whose suffix names the format (.wav .flac .mp3 .opus .ogg .aac .pcm)."""
    Path(path).write_bytes(encode_audio(wav, sample_rate, format_of_path(path)))


def _is_tensor(x) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "numpy")


def _from_array(array) -> np.ndarray:
    if _is_tensor(array):
        array = array.detach().float().cpu().numpy()
    if array.ndim == 2 and array.shape[1] > MAX_CHANNELS:
        raise AudioError(f"audio array of shape {array.shape}: expected (samples,) or (samples, channels); "
                         "transpose a (channels, samples) array")
    if array.ndim not in (1, 2):
        raise AudioError(f"audio array of shape {array.shape}: expected (samples,) or (samples, channels)")
    if np.issubdtype(array.dtype, np.signedinteger):
        array = array.astype(np.float32) / float(-np.iinfo(array.dtype).min)
    elif not np.issubdtype(array.dtype, np.floating):
        raise AudioError(f"audio array has dtype {array.dtype}; expected float or signed integer samples")
    array = array.astype(np.float32, copy=False)
    return array.mean(axis=1) if array.ndim == 2 else array


def _decode(data: bytes, what: str) -> tuple[np.ndarray, int]:
    if not data:
        raise AudioError(f"{what} is empty")
    try:
        wav, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as sf_error:  # soundfile raises LibsndfileError, RuntimeError or TypeError
        try:
            return _decode_with_av(data)
        except ImportError:
            raise AudioError(f"could not read {what}: {sf_error}. WAV, FLAC, OGG and MP3 are supported; "
                             "install PyAV (`pip install av`) for other formats") from sf_error
        except Exception as av_error:
            raise AudioError(f"could not read {what}: not a supported audio file ({av_error})") from av_error
    return wav.mean(axis=1), sr


def _decode_with_av(data: bytes) -> tuple[np.ndarray, int]:
    import av

    with av.open(io.BytesIO(data), mode="r") as container:
        if not container.streams.audio:
            raise AudioError("the file has no audio stream")
        stream = container.streams.audio[0]
        to_planar = av.AudioResampler(format="fltp")
        chunks, sr = [], stream.codec_context.sample_rate
        for frame in container.decode(stream):
            for planar in to_planar.resample(frame):
                chunks.append(planar.to_ndarray())
        for planar in to_planar.resample(None):
            chunks.append(planar.to_ndarray())
    if not chunks:
        return np.zeros(0, dtype=np.float32), sr
    return np.concatenate(chunks, axis=1).astype(np.float32).mean(axis=0), sr


def _encode_with_av(pcm: np.ndarray, sample_rate: int, fmt: str) -> bytes:
    try:
        import av
    except ImportError as exc:
        raise AudioError(f"{fmt} output needs PyAV: `pip install av` (or ask for wav, flac or pcm)") from exc
    container_format, codec = _AV_FORMATS[fmt]
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=container_format) as container:
        stream = container.add_stream(codec, rate=sample_rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = sample_rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue()
