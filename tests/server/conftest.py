"""Real servers on loopback for the server tests: uvicorn in a thread, the real engine, tiny checkpoints."""
import io
import logging
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import uvicorn

from qtts.api import TTS
from qtts.server.app import create_app
from qtts.server.serving import DrainingServer
from qtts.server.state import ServerSettings
from qtts.server.ws import MAX_MESSAGE_BYTES
from qtts.testing.ports import free_port

FAST = {"max_frames": 8, "greedy": True}  # extra body fields that keep a request to a few frames
# The codec decodes concurrent streams as one batch, whose float rounding can move a 16-bit sample
# by one step; different codes would differ by thousands.
PCM_TOLERANCE = 2


def assert_same_audio(expected: bytes, actual: bytes) -> None:
    """Same length and the same 16-bit samples up to the batching tolerance."""
    a, b = (np.frombuffer(x, "<i2").astype(np.int32) for x in (expected, actual))
    assert len(a) == len(b) > 0
    assert np.abs(a - b).max() <= PCM_TOLERANCE


def silent_flac(seconds: float, sample_rate: int, channels: int, claimed_seconds: float) -> bytes:
    """A silent FLAC whose header claims another length (what a decode bomb looks like)."""
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros((int(seconds * sample_rate), channels), np.int16), sample_rate, format="FLAC")
    data = bytearray(buffer.getvalue())
    total = int(claimed_seconds * sample_rate)  # STREAMINFO's 36-bit sample count, at byte 21 of the file
    data[21] = (data[21] & 0xF0) | (total >> 32)
    data[22:26] = (total & 0xFFFFFFFF).to_bytes(4, "big")
    return bytes(data)


@contextmanager
def captured_logs(*names: str):
    """The records logged at INFO or above to these loggers (and their children) while the block runs."""
    records = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    try:
        yield records
    finally:
        for logger, level in zip(loggers, levels):
            logger.removeHandler(handler)
            logger.setLevel(level)


class LiveServer:
    """`create_app` served on 127.0.0.1 and a free port until `close()`, as `qtts serve` serves it
    (DrainingServer; a short shutdown grace unless one is given)."""

    def __init__(self, tts: TTS, voices_dir: Path, log_level: str = "warning", **settings):
        settings.setdefault("shutdown_grace_s", 1.0)
        self.app = create_app(tts, ServerSettings(voices_dir=voices_dir, **settings))
        self.port = free_port()
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level=log_level,
                                ws_ping_interval=None, ws_max_size=MAX_MESSAGE_BYTES, timeout_graceful_shutdown=5)
        self.server = DrainingServer(config, self.app.state.qtts)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/audio/speech/stream"

    @property
    def engine(self):
        return self.app.state.qtts.engine

    def wait_idle(self, timeout_s: float = 10.0) -> dict:
        """Engine stats once no stream is active or queued (the test fails if that never happens)."""
        deadline = time.monotonic() + timeout_s
        while True:
            stats = self.engine.stats()
            if stats["active"] == 0 and stats["queued"] == 0:
                return stats
            if time.monotonic() > deadline:
                raise AssertionError(f"engine still busy after {timeout_s} s: {stats}")
            time.sleep(0.02)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture(scope="module")
def custom_voice_tts(tiny_custom_voice):
    return TTS.from_pretrained(tiny_custom_voice, device="cpu")


@pytest.fixture(scope="module")
def custom_voice_server(custom_voice_tts, tmp_path_factory):
    server = LiveServer(custom_voice_tts, tmp_path_factory.mktemp("voices"), model_name="tiny-custom-voice")
    yield server
    server.close()
