"""The two clone voices the engine's prompt tests speak with (a tiny Base model's x-vector and ICL voices)."""
import numpy as np


def clone_voices(tts) -> dict:
    """{"xvector": ..., "icl": ...} made from a 2 s synthetic reference."""
    t = np.arange(48000) / 24000
    wave = (0.3 * np.sin(2 * np.pi * 180 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    return {"xvector": tts.create_voice(wave, sample_rate=24000),
            "icl": tts.create_voice(wave, reference_text="This is the reference recording.", sample_rate=24000)}


def voice_request(tts, voices, options: dict, text: str, **extra):
    """A greedy request with options, its "voice" named by a key of voices."""
    options = dict(options)
    if "voice" in options:
        options["voice"] = voices[options["voice"]]
    return tts.request(text, greedy=True, **options, **extra)
