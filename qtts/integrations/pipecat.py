"""A Pipecat TTS service that streams the LLM's text to a qtts server as the LLM writes it.

    tts = QttsTTSService(url="ws://HOST:8000/v1/audio/speech/stream",
                         settings=QttsTTSService.Settings(voice="ryan", language="en"))

Install with `pip install 'qtts[pipecat]'`. Each reply of the LLM (and each TTSSpeakFrame) gets a websocket
session of its own on /v1/audio/speech/stream (protocol in qtts/server/ws.py): its text goes out token by token
as `input.text`, the end of the reply as `input.done`, and the session's audio (24 kHz 16-bit PCM) comes back
into that reply's audio context until `session.done`. A session per reply is what lets the service know when
a reply's audio is complete, and lets the next reply start generating while the previous one still plays.
An interruption sends `cancel`, which stops the server's generation at once, and closes the session.

`text_mode="stream"` makes the server speak from the reply's first words, each token joining the utterance as
it arrives (the server's default, "sentence", waits for each sentence's end). `options` are sent with every session.update too: any extra field of
POST /v1/audio/speech (seed, temperature, max_frames, greedy ...).
"""
from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

try:
    from loguru import logger
    from pipecat.frames.frames import CancelFrame, EndFrame, ErrorFrame, Frame, TTSAudioRawFrame, TTSStoppedFrame
    from pipecat.services.settings import TTSSettings
    from pipecat.services.tts_service import TextAggregationMode, TTSService
    from pipecat.transcriptions.language import Language, resolve_language
    from pipecat.utils.types import NOT_GIVEN, NotGiven, is_given
    from websockets.asyncio.client import ClientConnection, connect
    from websockets.exceptions import WebSocketException
except ModuleNotFoundError as exc:
    raise ModuleNotFoundError(f"{exc.name} is missing: the Pipecat service needs `pip install 'qtts[pipecat]'`") from exc

SAMPLE_RATE = 24000
DEFAULT_URL = "ws://127.0.0.1:8000/v1/audio/speech/stream"
# Languages Qwen3-TTS speaks, by the codes the server takes; others go as their base code.
LANGUAGES = {Language.ZH: "zh", Language.EN: "en", Language.JA: "ja", Language.KO: "ko", Language.DE: "de",
             Language.FR: "fr", Language.ES: "es", Language.IT: "it", Language.PT: "pt", Language.RU: "ru"}


@dataclass
class QttsTTSSettings(TTSSettings):
    """voice: a built-in speaker (CustomVoice) or a stored voice (Base); instructions: how to speak, or for a
    VoiceDesign model the voice itself. Changes apply to the sessions opened after them."""

    instructions: str | None | NotGiven = field(default_factory=lambda: NOT_GIVEN)


@dataclass
class _Session:
    """One websocket session, speaking one audio context."""

    websocket: ClientConnection
    receiving: Any = None  # the task reading the session's audio


class QttsTTSService(TTSService):
    """Speaks each LLM reply through a qtts websocket session, sending its text as it arrives."""

    Settings = QttsTTSSettings
    _settings: Settings

    def __init__(self, *, url: str = DEFAULT_URL, api_key: str | None = None, text_mode: str | None = None,
                 options: Mapping[str, Any] | None = None, settings: Settings | None = None,
                 text_aggregation_mode: TextAggregationMode = TextAggregationMode.TOKEN, **kwargs):
        """url: the server's /v1/audio/speech/stream; api_key: the server's key, if it has one;
        text_aggregation_mode: TOKEN sends each token at once (the server waits for what it needs)."""
        default_settings = self.Settings(model=None, voice=None, language=None, instructions=None)
        if settings is not None:
            default_settings.apply_update(settings)
        super().__init__(text_aggregation_mode=text_aggregation_mode, push_start_frame=True,
                         sample_rate=SAMPLE_RATE, settings=default_settings, **kwargs)
        self._url = url
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._options = {**(options or {}), **({"text_mode": text_mode} if text_mode else {})}
        self._sessions: dict[str, _Session] = {}

    def can_generate_metrics(self) -> bool:
        return True

    def language_to_service_language(self, language: Language) -> str | None:
        return resolve_language(language, LANGUAGES, use_base_code=True)

    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame | None, None]:
        """Send a piece of the reply; its audio arrives on the session's receiving task."""
        try:
            session = self._sessions.get(context_id) or await self._open_session(context_id)
            await session.websocket.send(json.dumps({"type": "input.text", "text": text}))
        except (OSError, WebSocketException) as exc:
            await self._close_session(context_id, cancel=False)
            yield ErrorFrame(error=f"cannot reach the qtts server at {self._url}: {exc}")
            yield TTSStoppedFrame(context_id=context_id)
            await self.remove_audio_context(context_id)
            return
        yield None

    async def flush_audio(self, context_id: str | None = None):
        """The reply is complete: the server speaks what is left, then ends the session."""
        session = self._sessions.get(context_id or self.get_active_audio_context_id() or "")
        if session is not None:
            with suppress(WebSocketException):
                await session.websocket.send(json.dumps({"type": "input.done"}))

    async def on_audio_context_interrupted(self, context_id: str):
        await self.stop_all_metrics()
        await self._close_session(context_id, cancel=True)
        await super().on_audio_context_interrupted(context_id)

    async def stop(self, frame: EndFrame):
        await super().stop(frame)  # returns once every audio context has played
        await self._close_all_sessions()

    async def cancel(self, frame: CancelFrame):
        await super().cancel(frame)
        await self._close_all_sessions()

    async def cleanup(self):
        await super().cleanup()
        await self._close_all_sessions()

    async def _open_session(self, context_id: str) -> _Session:
        websocket = await connect(self._url, additional_headers=self._headers, max_size=None)
        await websocket.send(json.dumps({"type": "session.update", **self._session_fields()}))
        session = self._sessions[context_id] = _Session(websocket)
        session.receiving = self.create_task(self._receive(context_id, session), name=f"qtts-session-{context_id}")
        return session

    def _session_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"response_format": "pcm", "binary": True, **self._options}
        for name in ("voice", "language", "instructions"):
            value = getattr(self._settings, name)
            if is_given(value) and value:
                fields[name] = str(value)
        return fields

    async def _receive(self, context_id: str, session: _Session) -> None:
        """Route the session's audio into its context until the server has spoken everything."""
        try:
            async for message in session.websocket:
                if isinstance(message, bytes):
                    await self.append_to_audio_context(
                        context_id, TTSAudioRawFrame(message, self.sample_rate, 1, context_id=context_id))
                    continue
                event = json.loads(message)
                if event.get("type") == "error":
                    await self.push_error(error_msg=f"qtts: {event['error']['message']}")
                elif event.get("type") == "session.done":
                    break
        except WebSocketException as exc:
            await self.push_error(error_msg=f"the qtts session ended: {exc}", exception=exc)
        if self._sessions.get(context_id) is session:  # not interrupted: the context ends with its audio
            del self._sessions[context_id]
            await self.append_to_audio_context(context_id, TTSStoppedFrame(context_id=context_id))
            await self.remove_audio_context(context_id)
            await session.websocket.close()

    async def _close_session(self, context_id: str, cancel: bool) -> None:
        session = self._sessions.pop(context_id, None)
        if session is None:
            return
        if cancel:
            with suppress(WebSocketException):
                await session.websocket.send(json.dumps({"type": "cancel"}))
        if session.receiving is not None:
            await self.cancel_task(session.receiving)
        await session.websocket.close()
        logger.debug(f"{self}: closed the qtts session of context {context_id}")

    async def _close_all_sessions(self) -> None:
        for context_id in list(self._sessions):
            await self._close_session(context_id, cancel=True)
