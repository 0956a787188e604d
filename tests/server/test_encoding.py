import io

import av
import numpy as np
import pytest
import soundfile as sf

from qtts.server.encoding import stream_encoder

SAMPLE_RATE = 24000


def encode_in_chunks(fmt, samples, chunk=1920):
    encoder = stream_encoder(fmt, SAMPLE_RATE)
    parts = [encoder.encode(samples[i:i + chunk]) for i in range(0, len(samples), chunk)]
    return parts + [encoder.finish()]


def tone(seconds=1.0):
    t = np.arange(int(SAMPLE_RATE * seconds)) / SAMPLE_RATE
    return (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def test_streamed_wav_and_pcm_hold_the_exact_samples():
    samples = tone()
    wav = b"".join(encode_in_chunks("wav", samples))
    pcm = b"".join(encode_in_chunks("pcm", samples))
    decoded, sr = sf.read(io.BytesIO(wav), dtype="int16")
    assert sr == SAMPLE_RATE
    assert np.array_equal(decoded, np.frombuffer(pcm, "<i2"))
    assert np.abs(decoded / 32767 - samples).max() < 1e-4


@pytest.mark.parametrize("fmt", ["flac", "mp3", "opus", "aac"])
def test_compressed_streams_send_bytes_early_and_decode(fmt):
    samples = tone()
    parts = encode_in_chunks(fmt, samples)
    assert sum(len(p) for p in parts[:3]) > 0, "the first bytes must not wait for the end"
    with av.open(io.BytesIO(b"".join(parts))) as container:
        stream = container.streams.audio[0]
        decoded = sum(frame.samples for frame in container.decode(stream)) / stream.codec_context.sample_rate
    assert decoded == pytest.approx(1.0, abs=0.1)


def test_unknown_format_is_refused():
    from qtts.errors import AudioError

    with pytest.raises(AudioError, match="choose one of"):
        stream_encoder("ogg", SAMPLE_RATE)


def test_streamed_flac_leaves_its_length_open_and_load_audio_reads_it():
    """docs/security.md: a streamed FLAC's header cannot hold its length; qtts and PyAV read it anyway."""
    from qtts.audio import load_audio

    samples = tone()
    flac = b"".join(encode_in_chunks("flac", samples))
    assert flac[22:26] == b"\0\0\0\0" and flac[21] & 0x0F == 0  # STREAMINFO's total samples: unknown
    decoded, sample_rate = load_audio(flac)
    assert sample_rate == SAMPLE_RATE and np.abs(decoded - samples).max() < 1e-4
