"""Reading, validating, resampling and encoding audio."""
import io
import tracemalloc

import numpy as np
import pytest
import soundfile as sf
import torch

from qtts import audio
from qtts.errors import AudioError, AudioTooLongError


def _tone(seconds=1.0, sr=24000, freq=220.0, amplitude=0.5):
    t = np.arange(int(seconds * sr)) / sr
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _file_bytes(wav, sr, fmt="WAV", subtype=None):
    buffer = io.BytesIO()
    sf.write(buffer, wav, sr, format=fmt, subtype=subtype)
    return buffer.getvalue()


@pytest.mark.parametrize("suffix,subtype", [("wav", "FLOAT"), ("wav", "PCM_16"), ("flac", "PCM_16")])
def test_load_file_matches_soundfile(tmp_path, suffix, subtype):
    path = tmp_path / f"ref.{suffix}"
    sf.write(path, _tone(sr=16000), 16000, subtype=subtype)
    wav, sr = audio.load_audio(path)
    expected, _ = sf.read(path, dtype="float32")
    assert sr == 16000 and wav.dtype == np.float32
    np.testing.assert_array_equal(wav, expected)
    np.testing.assert_array_equal(audio.load_audio(str(path))[0], expected)


def test_bytes_file_objects_and_arrays():
    tone = _tone()
    data = _file_bytes(tone, 24000, subtype="FLOAT")
    for source in (data, io.BytesIO(data), (tone, 24000)):
        wav, sr = audio.load_audio(source)
        assert sr == 24000
        np.testing.assert_array_equal(wav, tone)
    np.testing.assert_array_equal(audio.load_audio(torch.from_numpy(tone), sample_rate=24000)[0], tone)


def test_int16_array_is_scaled_to_unit_range():
    wav, _ = audio.load_audio((np.array([-32768, 0, 16384], dtype=np.int16), 8000))
    np.testing.assert_array_equal(wav, [-1.0, 0.0, 0.5])


def test_stereo_is_averaged_to_mono():
    left, right = _tone(freq=220), _tone(freq=330, amplitude=0.25)
    stereo = np.stack([left, right], axis=1)
    expected = (left + right) / 2
    np.testing.assert_allclose(audio.load_audio(_file_bytes(stereo, 24000, subtype="FLOAT"))[0], expected, atol=1e-7)
    np.testing.assert_allclose(audio.load_audio((stereo, 24000))[0], expected, atol=1e-7)


@pytest.mark.parametrize("sr", [16000, 22050, 44100, 48000])
def test_resample_equals_librosa(sr):
    librosa = pytest.importorskip("librosa")
    rng = np.random.default_rng(0)
    wav = (_tone(1.37, sr) + 0.05 * rng.standard_normal(int(1.37 * sr))).astype(np.float32)
    expected = librosa.resample(wav, orig_sr=sr, target_sr=24000)
    got = audio.to_24k(wav, sr)
    assert got.dtype == np.float32 and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


def test_resample_same_rate_is_identity():
    tone = _tone()
    np.testing.assert_array_equal(audio.resample(tone, 24000, 24000), tone)


@pytest.mark.parametrize("source,message", [
    (b"definitely not audio", "could not read"),
    (b"", "empty"),
    ("/no/such/reference.wav", "not found"),
    ((np.zeros(0, dtype=np.float32), 24000), "no samples"),
    ((np.array([0.1, np.nan, 0.2], dtype=np.float32), 24000), "NaN"),
    ((np.array([0.1, np.inf], dtype=np.float32), 24000), "NaN or infinite"),
    (np.zeros(100, dtype=np.float32), "sample rate"),
    ((np.zeros((2, 48000), dtype=np.float32), 24000), "transpose"),
    ((np.ones(10, dtype=np.float32), 0), "positive"),
    ((np.ones(10, dtype=np.uint8), 8000), "dtype"),
    (12345, "cannot read audio from a int"),
])
def test_unusable_audio_raises(source, message):
    with pytest.raises(AudioError, match=message):
        audio.load_audio(source)


def test_truncated_file_raises():
    data = _file_bytes(_tone(), 24000, fmt="FLAC", subtype="PCM_16")
    with pytest.raises(AudioError):
        audio.load_audio(data[:40])


def test_reference_checks():
    assert audio.load_reference((_tone(1.0), 24000))[1] == 24000
    with pytest.raises(AudioError, match="at least 0.5 s"):
        audio.load_reference((_tone(0.3), 24000))
    with pytest.raises(AudioError, match="silent"):
        audio.load_reference((np.zeros(48000, dtype=np.float32), 24000))
    with pytest.raises(AudioError, match="silent"):
        audio.load_reference((_tone(amplitude=5e-5), 24000))


def test_float_to_pcm16_clips_and_rounds():
    pcm = audio.float_to_pcm16(np.array([-2.0, -1.0, 0.0, 0.5, 1.0, 3.0], dtype=np.float32))
    np.testing.assert_array_equal(pcm, [-32767, -32767, 0, 16384, 32767, 32767])
    assert pcm.dtype == np.int16


def test_pcm_wav_flac_encoding_round_trip():
    tone = _tone()
    pcm = audio.encode_audio(tone, 24000, "pcm")
    np.testing.assert_array_equal(np.frombuffer(pcm, dtype="<i2"), audio.float_to_pcm16(tone))
    for fmt in ("wav", "flac"):
        wav, sr = audio.load_audio(audio.encode_audio(tone, 24000, fmt))
        assert sr == 24000
        np.testing.assert_allclose(wav, tone, atol=1 / 32767)


@pytest.mark.parametrize("fmt", ["mp3", "opus", "aac"])
def test_compressed_formats_decode_back(fmt):
    pytest.importorskip("av")
    tone = _tone(1.0)
    wav, sr = audio.load_audio(audio.encode_audio(tone, 24000, fmt))
    assert sr == 24000
    assert abs(len(wav) - len(tone)) < 0.1 * len(tone)
    assert 0.3 < np.abs(wav).max() < 0.7


def test_unknown_format_and_suffix(tmp_path):
    with pytest.raises(AudioError, match="unknown audio format"):
        audio.encode_audio(_tone(), 24000, "wma")
    with pytest.raises(AudioError, match="format"):
        audio.write_audio(tmp_path / "out.xyz", _tone(), 24000)


def test_write_audio_by_suffix(tmp_path):
    audio.write_audio(tmp_path / "out.flac", _tone(), 24000)
    assert sf.info(tmp_path / "out.flac").format == "FLAC"


def _silent_flac(seconds: float, sample_rate: int, channels: int, claimed_seconds: float | None = None) -> bytes:
    """A silent FLAC; claimed_seconds rewrites the length its header states (0: unknown, as when streamed)."""
    data = bytearray(_file_bytes(np.zeros((int(seconds * sample_rate), channels), np.int16), sample_rate, "FLAC",
                                 "PCM_16"))
    if claimed_seconds is not None:
        total = int(claimed_seconds * sample_rate)  # STREAMINFO's 36-bit sample count, at byte 21 of the file
        data[21] = (data[21] & 0xF0) | (total >> 32)
        data[22:26] = (total & 0xFFFFFFFF).to_bytes(4, "big")
    return bytes(data)


def _peak_bytes_while(call) -> int:
    tracemalloc.start()
    try:
        call()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def test_a_file_whose_header_says_too_long_is_refused_before_decoding():
    bomb = _silent_flac(1.0, 96000, 8, claimed_seconds=1300)  # a few kB that would decode to gigabytes

    def load():
        with pytest.raises(AudioTooLongError, match="1300.0 s"):
            audio.load_audio(bomb, max_seconds=60)

    assert _peak_bytes_while(load) < 1_000_000


def test_a_file_that_hides_its_length_is_decoded_only_up_to_the_limit():
    hidden = _silent_flac(12.0, 48000, 8, claimed_seconds=0)  # whole: 18 MB of float32 samples

    def load():
        with pytest.raises(AudioTooLongError, match="the limit is 2 s"):
            audio.load_audio(hidden, max_seconds=2)

    assert _peak_bytes_while(load) < 8_000_000
    wav, sample_rate = audio.load_audio(hidden)  # without a limit: all of it, mixed to mono block by block
    assert sample_rate == 48000 and wav.shape == (12 * 48000,)


def test_rates_and_channel_counts_beyond_any_microphone_are_refused():
    with pytest.raises(AudioError, match="sample rate of 384000 Hz"):
        audio.load_audio(_silent_flac(0.1, 384000, 1))
    with pytest.raises(AudioError, match="at most 16"):
        audio.load_audio(_file_bytes(np.zeros((100, 20), np.int16), 16000, "WAV", "PCM_16"))
