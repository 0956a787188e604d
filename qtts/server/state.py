"""What every endpoint shares: the settings, the model, the engine, the voice store and the metrics."""
from __future__ import annotations

import asyncio
import hmac
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .metrics import ServerMetrics
from .openai import ApiError
from .voices_store import VoiceStore

MAX_CONCURRENT_DECODES = 2
log = logging.getLogger("qtts.server")


@dataclass
class ServerSettings:
    """Limits and identity of one server (the `qtts serve` flags)."""

    voices_dir: Path
    model_name: str = "qwen3-tts"
    api_key: str | None = None
    max_batch: int = 32
    max_queue: int = 256
    max_input_chars: int = 4096
    max_upload_bytes: int = 20 * 1024 * 1024
    max_upload_seconds: float = 60.0
    # a second 1-frame chunk: a new listener starts with 80 ms of audio, and the next 2 frames take 2-3
    # iterations (over 20 ms each at 128 streams), so it would run dry for one slow iteration
    chunk_frames: tuple[int, ...] = (1, 1, 2, 4, 8, 12)
    engine_process: bool = False  # run the engine in a child process (RemoteEngine)
    max_prefills_per_frame: int = 4  # Scheduler(...)
    low_buffer_s: float = 0.0  # Scheduler(...)
    speculate_text: bool = True  # Engine(...): text_mode "stream" starts on a first word not settled yet
    started_at: float | None = None  # time.perf_counter() when the command started (start-up time counts from it)
    shutdown_grace_s: float = 30.0  # how long streams may go on after a shutdown begins
    body_timeout_s: float = 30.0  # a request body that sends nothing for this long gets 408


@dataclass
class ServerState:
    settings: ServerSettings
    tts: object  # qtts.api.TTS
    engine: object  # qtts.engine.engine.Engine or qtts.engine.remote.RemoteEngine
    voices: VoiceStore
    metrics: ServerMetrics
    ready: bool = False
    created_at: float = field(default_factory=time.perf_counter)
    startup_seconds: float | None = None  # from the app's creation to ready
    draining: bool = False  # shutting down: no new speech, the runs in flight finish or are ended
    runs: set = field(default_factory=set)  # the SpeechRuns in flight (synthesis.py)
    voice_encoder_lock: threading.Lock = field(default_factory=threading.Lock)  # one reference at a time
    # uploads decoded at once: each may hold up to max_upload_seconds of mono float32 audio
    upload_decodes: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(MAX_CONCURRENT_DECODES))

    def require_ready(self) -> None:
        if not self.ready:
            raise ApiError(503, "the server is starting or shutting down; retry shortly", code="not_ready",
                           headers={"Retry-After": "1"})

    async def drain(self, grace_s: float, give_up=lambda: False) -> None:
        """Shut down gently: refuse new work, let the runs in flight go on for up to grace_s (or until
        give_up() says so), then end those left with a 503 error their clients receive."""
        self.ready, self.draining = False, True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        while self.runs and loop.time() < deadline and not give_up():
            await asyncio.sleep(0.05)
        if self.runs:
            log.warning("shutting down: ending %d streams still running after %g s", len(self.runs), grace_s)
        for run in list(self.runs):
            run.interrupt(ApiError(503, "the server is shutting down; retry on another instance",
                                   code="shutting_down", headers={"Retry-After": "1"}))
        deadline = loop.time() + 1.0
        while self.runs and loop.time() < deadline:  # until each has sent its error
            await asyncio.sleep(0.02)

    def check_api_key(self, authorization: str | None, query_key: str | None = None) -> None:
        """Raise 401 unless the request carries the API key (Bearer header, or `api_key` query for websockets)."""
        expected = self.settings.api_key
        if not expected:
            return
        given = query_key
        if authorization and authorization.lower().startswith("bearer "):
            given = authorization[7:].strip()
        if not given:
            raise ApiError(401, "missing API key: send 'Authorization: Bearer KEY'", code="missing_api_key")
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise ApiError(401, "incorrect API key", code="invalid_api_key")
