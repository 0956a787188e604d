"""From API fields to an engine request, and one submitted request's audio, timing and metrics.

Shared by the HTTP endpoint and the websocket. Voices by model type:
CustomVoice: `voice` is a built-in speaker (any case), `instructions` an optional style.
VoiceDesign: `instructions` describes the voice; `voice` is ignored (clients must send one).
Base: `voice` names a stored clone voice, by id or by name.
"""
from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

import numpy as np

from ..engine.remote import EngineProcessError
from ..engine.request import SpeechRequest
from ..errors import InvalidRequestError, OverloadedError, UnknownLanguageError, UnknownSpeakerError
from .openai import ApiError, SynthesisOptions, VoiceRef
from .state import ServerState

log = logging.getLogger("qtts.server")

CLIENT_GONE = 499  # nginx's status for "the client closed the request"
LANGUAGE_CODES = {"en": "english", "zh": "chinese", "ja": "japanese", "ko": "korean", "de": "german",
                  "fr": "french", "es": "spanish", "it": "italian", "pt": "portuguese", "ru": "russian"}


def speech_request(state: ServerState, text: str, voice: str | VoiceRef | None, instructions: str | None,
                   options: SynthesisOptions) -> SpeechRequest:
    """A validated engine request, or an ApiError naming the field that is wrong."""
    if not isinstance(text, str) or not text.strip():
        raise ApiError(400, "input is empty: give the text to speak", "input", "empty_input")
    limit = state.settings.max_input_chars
    if len(text) > limit:
        raise ApiError(400, f"input has {len(text)} characters; this server takes at most {limit}", "input",
                       "string_above_max_length")
    mode = _voice_mode(state, voice, (instructions or "").strip() or None)
    language = LANGUAGE_CODES.get(options.language.lower(), options.language)
    try:
        return state.tts.request(text, language=language, **mode, **options.sampling())
    except UnknownSpeakerError as exc:
        raise ApiError(400, str(exc), "voice", "unknown_voice") from exc
    except UnknownLanguageError as exc:
        raise ApiError(400, str(exc), "language", "unknown_language") from exc
    except InvalidRequestError as exc:
        raise ApiError(400, str(exc), None, "invalid_request") from exc


def _voice_mode(state: ServerState, voice: str | VoiceRef | None, instructions: str | None) -> dict:
    name = voice.id if isinstance(voice, VoiceRef) else voice
    tts = state.tts
    if tts.model_type == "custom_voice":
        if not name or name.lower() not in {s.lower() for s in tts.speakers}:
            what = f"unknown voice {name!r}" if name else "no voice given"
            raise ApiError(400, f"{what}; this model's voices are: {', '.join(tts.speakers)}", "voice",
                           "unknown_voice")
        return {"speaker": name.lower(), "instruct": instructions}
    if tts.model_type == "voice_design":
        if not instructions:
            raise ApiError(400, "this is a VoiceDesign model: describe the voice in `instructions` "
                           "(e.g. 'a calm low male voice')", "instructions", "missing_instructions")
        return {"instruct": instructions}
    if not name:
        raise ApiError(400, "this is a Base (cloning) model: name a stored voice in `voice` "
                       "(create one with POST /v1/voices)", "voice", "unknown_voice")
    record = state.voices.find(name)
    if record is None:
        raise ApiError(404, f"no stored voice {name!r}; GET /v1/voices lists them", "voice", "voice_not_found")
    return {"voice": state.voices.prompt(record.id), "instruct": instructions}


def api_error(exc: BaseException) -> ApiError:
    """The HTTP error for an exception from request building or the engine."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, OverloadedError):
        return ApiError(429, f"the server is at capacity ({exc}); retry shortly", code="overloaded",
                        headers={"Retry-After": "1"})
    if isinstance(exc, InvalidRequestError):
        return ApiError(400, str(exc), code="invalid_request")
    if isinstance(exc, EngineProcessError):
        return ApiError(503, f"the engine is not running ({exc}); retry shortly", code="engine_unavailable",
                        headers={"Retry-After": "5"})
    log.error("engine error", exc_info=exc)
    return ApiError(500, f"the engine failed: {type(exc).__name__}: {exc}", code="engine_error")


class SpeechRun:
    """One request submitted to the engine: its audio chunks, timing, and the metrics it reports once."""

    def __init__(self, state: ServerState, request: SpeechRequest, endpoint: str, started: float | None = None,
                 count_outcome: bool = False):
        """count_outcome: count this run in the request counter (websocket utterances; HTTP requests are
        counted by the RequestCounter middleware)."""
        self.state, self.endpoint, self.count_outcome = state, endpoint, count_outcome
        self.started = time.perf_counter() if started is None else started
        self.text = request.text
        try:
            self.stream = state.engine.submit(request, chunk_frames=state.settings.chunk_frames)
        except Exception as exc:
            error = api_error(exc)
            if count_outcome:
                state.metrics.count(endpoint, error.status)
            raise error from exc
        self.samples = 0
        self.first_audio_s: float | None = None
        self.finished = False

    @property
    def id(self) -> str:
        return self.stream.id

    @property
    def audio_seconds(self) -> float:
        return self.samples / self.state.tts.sample_rate

    def usage(self) -> dict:
        input_tokens = len(self.state.tts.tokenizer.encode(self.text))
        output_tokens = int(self.stream.frames)
        return {"input_tokens": input_tokens, "output_tokens": output_tokens,
                "total_tokens": input_tokens + output_tokens}

    async def chunks(self) -> AsyncIterator[np.ndarray]:
        """float32 chunks as the engine makes them; raises ApiError if the engine fails."""
        try:
            async for chunk in self.stream:
                if self.first_audio_s is None:  # when the engine had it, not when a queued utterance is read
                    self.first_audio_s = (self.stream.first_chunk_at or time.perf_counter()) - self.started
                    self.state.metrics.first_audio.labels(self.endpoint).observe(self.first_audio_s)
                self.samples += len(chunk)
                yield chunk
        except Exception as exc:
            raise api_error(exc) from exc
        if self.stream.error is not None:
            raise api_error(self.stream.error)
        if self.stream.finish_reason == "cancelled" and not self.finished:  # not by us: the engine stopped
            raise ApiError(503, "the request was cancelled: the server is shutting down", code="cancelled")

    def finish(self, status: int) -> None:
        """Record the outcome once; anything but success cancels the stream, freeing its slot at once."""
        if self.finished:
            return
        self.finished = True
        if status != 200:
            self.stream.cancel()
        elapsed = time.perf_counter() - self.started
        self.state.metrics.speed(self.endpoint, self.audio_seconds, elapsed)
        if self.count_outcome:
            self.state.metrics.count(self.endpoint, status)
        first = f"{self.first_audio_s * 1000:.0f} ms" if self.first_audio_s is not None else "-"
        log.info("%s %s status=%d audio=%.2fs first_audio=%s elapsed=%.2fs finish=%s", self.endpoint, self.id,
                 status, self.audio_seconds, first, elapsed, self.stream.finish_reason)
