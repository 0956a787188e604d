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

from ..engine.longform import split_request
from ..engine.longform_stream import LongformStream
from ..engine.remote import EngineProcessError
from ..engine.request import SpeechRequest
from ..errors import InvalidRequestError, OverloadedError, UnknownLanguageError, UnknownSpeakerError
from .openai import ApiError, SynthesisOptions, VoiceRef
from .state import ServerState
from .voices_api import damaged_voice_error
from .voices_store import DamagedVoiceError

log = logging.getLogger("qtts.server")

CLIENT_GONE = 499  # nginx's status for "the client closed the request"
# a long input's parts: the one being heard and the next generate, so a part is ready when the last ends
# and one request holds at most two of the engine's rows
PARTS_AHEAD = 1
LANGUAGE_CODES = {"en": "english", "zh": "chinese", "ja": "japanese", "ko": "korean", "de": "german",
                  "fr": "french", "es": "spanish", "it": "italian", "pt": "portuguese", "ru": "russian"}


def speech_request(state: ServerState, text: str, voice: str | VoiceRef | None, instructions: str | None,
                   options: SynthesisOptions, text_open: bool = False) -> SpeechRequest:
    """A validated engine request, or an ApiError naming the field that is wrong. text_open: `text` is the
    start of a text still being written (Stream.append_text brings the rest)."""
    if not isinstance(text, str) or not (text.strip() or text_open):
        raise ApiError(400, "input is empty: give the text to speak", "input", "empty_input")
    limit = state.settings.max_input_chars
    if len(text) > limit:
        raise ApiError(400, f"input has {len(text)} characters; this server takes at most {limit}", "input",
                       "string_above_max_length")
    mode = _voice_mode(state, voice, (instructions or "").strip() or None)
    language = LANGUAGE_CODES.get(options.language.lower(), options.language)
    try:
        return state.tts.request(text, language=language, text_open=text_open, **mode, **options.sampling())
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
    try:
        return {"voice": state.voices.prompt(record.id), "instruct": instructions}
    except DamagedVoiceError as exc:
        raise damaged_voice_error(record, exc, "voice") from None


def api_error(exc: BaseException) -> ApiError:
    """The HTTP error for an exception from request building or the engine (the engine logs its own
    failures; the request's one log line carries this error's message)."""
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
    return ApiError(500, f"the engine failed: {type(exc).__name__}: {exc}", code="engine_error")


class SpeechRun:
    """One request submitted to the engine: its audio chunks, timing, and the metrics it reports once.

    An input too long for one request (longform.split_request) is spoken in parts, one after another
    with a short pause between; `stream` is then a LongformStream, which reads like the engine's Stream.

    Every run logs one line when it finishes, with its status and, if it failed, why; the state
    keeps the runs in flight so a shutdown can end them with a proper error (`interrupt`).
    """

    def __init__(self, state: ServerState, request: SpeechRequest, endpoint: str, started: float | None = None,
                 count_outcome: bool = False):
        """count_outcome: count this run in the request counter (websocket utterances; HTTP requests are
        counted by the RequestCounter middleware)."""
        self.state, self.endpoint, self.count_outcome = state, endpoint, count_outcome
        self.started = time.perf_counter() if started is None else started
        self.text = request.text
        try:
            if state.draining:
                raise ApiError(503, "the server is shutting down; retry on another instance", code="shutting_down",
                               headers={"Retry-After": "1"})
            self.stream = _submit(state, split_request(state.tts.model, request, state.engine.max_len))
        except Exception as exc:
            error = api_error(exc)
            if count_outcome:
                state.metrics.count(endpoint, error.status)
            log.log(logging.ERROR if error.status >= 500 else logging.INFO, "%s not started: status=%d %s",
                    endpoint, error.status, error.message)
            raise error from None
        self.samples = 0
        self.first_audio_s: float | None = None
        self.finished = False
        self.error: ApiError | None = None  # why the stream failed, for the log line
        self.interruption: ApiError | None = None
        state.runs.add(self)

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
        """float32 chunks as the engine makes them; raises ApiError if the engine fails or the run is
        interrupted. The engine's exception is not chained: one error object may end many streams."""
        try:
            async for chunk in self.stream:
                if self.first_audio_s is None:  # when the engine had it, not when a queued utterance is read
                    self.first_audio_s = (self.stream.first_chunk_at or time.perf_counter()) - self.started
                    self.state.metrics.first_audio.labels(self.endpoint).observe(self.first_audio_s)
                self.samples += len(chunk)
                yield chunk
        except Exception as exc:
            self.error = api_error(exc)
            raise self.error from None
        if self.interruption is not None:
            self.error = self.interruption
        elif self.stream.error is not None:
            self.error = api_error(self.stream.error)
        elif self.stream.finish_reason == "cancelled" and not self.finished:  # not by us: the engine stopped
            self.error = ApiError(503, "the request was cancelled: the engine stopped", code="cancelled")
        if self.error is not None:
            raise self.error

    def interrupt(self, error: ApiError) -> None:
        """End the stream now: its reader gets `error` (e.g. the server is shutting down)."""
        self.interruption = error
        self.stream.cancel()

    def finish(self, status: int) -> None:
        """Record the outcome once, in the metrics and one log line; anything but success cancels the
        stream, freeing its slot at once."""
        if self.finished:
            return
        self.finished = True
        self.state.runs.discard(self)
        if status != 200:
            self.stream.cancel()
        elapsed = time.perf_counter() - self.started
        self.state.metrics.speed(self.endpoint, self.audio_seconds, elapsed)
        if self.count_outcome:
            self.state.metrics.count(self.endpoint, status)
        first = f"{self.first_audio_s * 1000:.0f} ms" if self.first_audio_s is not None else "-"
        level = (logging.INFO if status in (200, CLIENT_GONE) else
                 logging.ERROR if status >= 500 and status != 503 else logging.WARNING)
        error = f" error={self.error.message!r}" if self.error is not None else ""
        log.log(level, "%s %s status=%d audio=%.2fs first_audio=%s elapsed=%.2fs finish=%s%s", self.endpoint, self.id,
                status, self.audio_seconds, first, elapsed, self.stream.finish_reason, error)


def _submit(state: ServerState, parts: list[SpeechRequest]):
    """The engine's Stream of a request spoken whole, or a LongformStream of its parts (the first ones
    submitted now, so an engine that refuses them refuses before the response starts)."""
    def submit(part: SpeechRequest):
        return state.engine.submit(part, chunk_frames=state.settings.chunk_frames)

    if len(parts) == 1:
        return submit(parts[0])
    stream = LongformStream(submit, parts, ahead=PARTS_AHEAD)
    stream.start()
    return stream
