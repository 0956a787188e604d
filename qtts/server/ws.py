"""Websocket `/v1/audio/speech/stream`: text in as an LLM writes it, audio out sentence by sentence.

Client -> server, JSON text messages:
  {"type": "session.update" (or vLLM-Omni's "session.config"), "voice", "instructions", "language",
   "response_format" (default "pcm"), "binary" (default true), and any extra field of
   POST /v1/audio/speech (seed, temperature, max_frames, greedy ...)}
  {"type": "input.text", "text": "..."}  more text; each sentence it completes starts speaking at once
                                         (text_mode "stream": speaking starts with the first words, and
                                         each piece joins the utterance as it arrives; no sentence wait)
  {"type": "input.flush"}                speak what is buffered even without a sentence end (stream mode:
                                         the utterance's text is complete; the next piece starts another)
  {"type": "input.done"}                 flush; the server finishes every utterance, then closes (1000)
  {"type": "cancel"}                     stop speaking now and drop all queued text
Server -> client:
  {"type": "session.created" | "session.updated", "session": {...}}
  {"type": "audio.start", "utterance": n, "text": "..."}
  the utterance's audio: binary messages whose bytes concatenate to one file in response_format
    ("pcm": 24 kHz 16-bit little-endian mono); with "binary": false, JSON
    {"type": "audio.delta", "utterance": n, "audio": base64} instead
  {"type": "audio.done", "utterance": n, "text", "finish_reason", "audio_seconds", "usage",
   "text_wait_s": time its generation waited for text not yet sent (stream mode; not an engine stall)}
  {"type": "cancelled", "utterances": [n, ...]}
  {"type": "error", "error": {"message", "type", "param", "code"}, "utterance": n or null}; the session stays open
  {"type": "session.done"} after input.done, then the server closes.
Utterances are spoken in order; the next one is already generating while the current one streams.
A text message over MAX_MESSAGE_CHARS gets an error (code "message_too_large"); one over
MAX_MESSAGE_BYTES closes the socket with 1009 (uvicorn's ws_max_size: `qtts serve` sets it).
Authentication: `Authorization: Bearer KEY`, or `?api_key=KEY` since browsers cannot set websocket
headers. The handshake always succeeds; a missing or bad key then closes with 1008 and a server that
is starting or shutting down with 1013, the reason saying why (browsers see close codes, not HTTP
statuses). Disconnecting cancels everything the session had submitted; a server shutting down ends
the utterances still speaking after its grace period with an error event, then closes with 1012.
"""
from __future__ import annotations

import asyncio
import base64
import json
from collections import deque
from contextlib import suppress
from dataclasses import dataclass
from typing import Literal

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from pydantic import ValidationError
from starlette.websockets import WebSocketDisconnected

from ..errors import AudioError
from .encoding import StreamEncoder, check_format, stream_encoder
from .openai import ApiError, SynthesisOptions, Text, VoiceRef, validation_error
from .sentences import SentenceSplitter
from .state import ServerState
from .synthesis import CLIENT_GONE, SpeechRun, log, speech_request

ENDPOINT = "/v1/audio/speech/stream"
LOOKAHEAD = 2  # utterances generating at once per session: the one streaming and the next
MAX_PENDING = 256  # sentences waiting per session
MAX_SENTENCE_CHARS = 300
MAX_MESSAGE_CHARS = 65_536
MAX_MESSAGE_BYTES = 1024 * 1024
INLINE_SPLIT_CHARS = 1024  # longer text is split into sentences off the event loop
SOCKET_CLOSED = (WebSocketDisconnect, WebSocketDisconnected, OSError)  # what sending or receiving on a gone socket raises
router = APIRouter()


class SessionConfig(SynthesisOptions):
    voice: Text | VoiceRef | None = None
    instructions: Text | None = None
    text_mode: Literal["sentence", "stream"] = "sentence"
    response_format: Literal["mp3", "opus", "aac", "flac", "wav", "pcm"] = "pcm"
    binary: bool = True


@dataclass
class Utterance:
    """One sentence submitted to the engine, with how its audio goes out."""

    number: int
    text: str
    run: SpeechRun
    encoder: StreamEncoder
    response_format: str
    binary: bool


@router.websocket(ENDPOINT)
async def speech_stream(websocket: WebSocket) -> None:
    state: ServerState = websocket.app.state.qtts
    try:
        state.check_api_key(websocket.headers.get("authorization"), websocket.query_params.get("api_key"))
        state.require_ready()
    except ApiError as exc:
        await websocket.accept()  # closing before accepting would answer HTTP 403, whatever the reason
        await websocket.close(code=1008 if exc.status == 401 else 1013, reason=exc.message)
        return
    await SpeechSession(websocket, state).run()


class SpeechSession:
    """One websocket: its settings, the text not yet spoken, and the utterances being generated."""

    def __init__(self, websocket: WebSocket, state: ServerState):
        self.ws, self.state = websocket, state
        self.config = SessionConfig()
        self.splitter = SentenceSplitter(min(MAX_SENTENCE_CHARS, state.settings.max_input_chars))
        self.pending: deque[tuple[int, str]] = deque()
        self.runs: deque[Utterance] = deque()  # submitted, in speaking order
        self.next_utterance = 0
        self.open: Utterance | None = None  # text_mode "stream": the utterance whose text is still arriving
        self.input_done = False
        self.wake = asyncio.Event()
        self.send_lock = asyncio.Lock()
        self.speaker: asyncio.Task | None = None

    async def run(self) -> None:
        await self.ws.accept()
        await self._send_json({"type": "session.created", "session": self._describe()})
        self.speaker = asyncio.create_task(self._speak())
        try:
            while True:
                message = await self.ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                if message.get("text") is None:
                    await self._send_error(ApiError(400, "send JSON text messages", code="invalid_message"))
                    continue
                try:
                    await self._handle(message["text"])
                except SOCKET_CLOSED:
                    raise
                except Exception as exc:  # a bug here must not take the session down
                    log.exception("websocket message failed")
                    await self._send_error(ApiError(500, f"internal error: {type(exc).__name__}",
                                                    code="internal_error"))
        except SOCKET_CLOSED:
            pass  # the client left, or the socket closed under us
        finally:
            self.speaker.cancel()
            self._drop_runs()

    async def _handle(self, text: str) -> None:
        if len(text) > MAX_MESSAGE_CHARS:
            await self._send_error(ApiError(413, f"a message of {len(text)} characters is over the {MAX_MESSAGE_CHARS} "
                                            "limit; send text in smaller input.text pieces", code="message_too_large"))
            return
        try:
            message = json.loads(text)
            kind = message.get("type") if isinstance(message, dict) else None
        except (ValueError, RecursionError):  # RecursionError: JSON nested too deeply
            kind, message = None, None
        if self.input_done and kind in ("input.text", "input.flush", "input.done"):
            await self._send_error(ApiError(400, "input.done was sent: this session takes no more text",
                                            "type", "input_closed"))
        elif kind in ("session.update", "session.config"):
            await self._update(message)
        elif kind == "input.text":
            piece = message.get("text")
            if not isinstance(piece, str):
                await self._send_error(ApiError(400, "input.text needs a string `text`", "text", "invalid_value"))
                return
            if self.config.text_mode == "stream":
                await self._stream_text(piece)
            elif len(piece) > INLINE_SPLIT_CHARS:
                await self._queue(await asyncio.to_thread(self.splitter.feed, piece))
            else:
                await self._queue(self.splitter.feed(piece))
        elif kind in ("input.flush", "input.done"):
            self._end_open()
            await self._queue([s for s in [self.splitter.flush()] if s])
            if kind == "input.done":
                self.input_done = True
                self.wake.set()
        elif kind == "cancel":
            await self._cancel()
        else:
            await self._send_error(ApiError(400, "each message must be a JSON object with `type`: session.update, "
                                            "input.text, input.flush, input.done or cancel", "type",
                                            "invalid_message"))

    async def _update(self, message: dict) -> None:
        fields = {k: v for k, v in message.items() if k != "type"}
        try:
            config = SessionConfig.model_validate({**self.config.model_dump(exclude_unset=True), **fields})
            check_format(config.response_format)
            if config.voice is not None or config.instructions:  # fail early on an unknown voice or language
                speech_request(self.state, "Hello.", config.voice, config.instructions, config)
        except ValidationError as exc:
            await self._send_error(validation_error(exc))
            return
        except AudioError as exc:
            await self._send_error(ApiError(400, str(exc), "response_format", "unsupported_format"))
            return
        except ApiError as exc:
            await self._send_error(exc)
            return
        if config.text_mode != self.config.text_mode:  # text so far is spoken as it was sent
            self._end_open()
            await self._queue([s for s in [self.splitter.flush()] if s])
        self.config = config
        await self._send_json({"type": "session.updated", "session": self._describe()})

    async def _stream_text(self, piece: str) -> None:
        """text_mode "stream": the piece joins the utterance being spoken (or starts one) at once."""
        utterance = self.open
        if utterance is not None and len(utterance.text) + len(piece) > self.state.settings.max_input_chars:
            self._end_open()  # the server's input limit: the rest is another utterance
            utterance = None
        if utterance is None:
            if not piece.strip():
                return  # nothing to say yet: whitespace before the first word
            config, number = self.config, self.next_utterance
            try:
                request = speech_request(self.state, piece[: self.state.settings.max_input_chars], config.voice,
                                         config.instructions, config, text_open=True)
                encoder = stream_encoder(config.response_format, self.state.tts.sample_rate)
                run = SpeechRun(self.state, request, ENDPOINT, count_outcome=True)
            except ApiError as exc:
                await self._send_error(exc, number)
                return
            self.next_utterance += 1
            self.open = Utterance(number, piece, run, encoder, config.response_format, config.binary)
            self.runs.append(self.open)
            self.wake.set()
            return
        utterance.text = utterance.run.text = utterance.text + piece
        if len(piece) > INLINE_SPLIT_CHARS:  # tokenizing a long piece: off the event loop
            await asyncio.to_thread(utterance.run.stream.append_text, piece)
        else:
            utterance.run.stream.append_text(piece)

    def _end_open(self) -> None:
        """The open utterance's text is complete."""
        if self.open is not None:
            self.open.run.stream.end_text()
            self.open = None

    async def _queue(self, sentences: list[str]) -> None:
        for sentence in sentences:
            if len(self.pending) >= MAX_PENDING:
                await self._send_error(ApiError(429, f"more than {MAX_PENDING} sentences are waiting; slow down "
                                                "or cancel", code="queue_full"))
                return
            self.pending.append((self.next_utterance, sentence))
            self.next_utterance += 1
        self.wake.set()

    async def _cancel(self) -> None:
        if self.speaker is not None:
            self.speaker.cancel()
            with suppress(asyncio.CancelledError):
                await self.speaker
        dropped = [u.number for u in self.runs] + [n for n, _ in self.pending]
        self.open = None
        self._drop_runs()
        self.pending.clear()
        self.splitter.clear()
        await self._send_json({"type": "cancelled", "utterances": dropped})
        self.speaker = asyncio.create_task(self._speak())

    def _drop_runs(self) -> None:
        for utterance in self.runs:
            utterance.run.finish(CLIENT_GONE)
        self.runs.clear()

    async def _speak(self) -> None:
        """Speak utterances in order until input.done has been answered."""
        try:
            await self._speak_in_order()
        except SOCKET_CLOSED:
            pass  # the socket closed; the receiving side cleans up
        except Exception:
            log.exception("websocket session failed")
            await self.ws.close(code=1011)

    async def _speak_in_order(self) -> None:
        while True:
            await self._submit_pending()
            if self.runs:
                await self._stream(self.runs[0])
                self.runs.popleft()
            elif self.input_done and not self.pending:
                await self._send_json({"type": "session.done"})
                await self.ws.close(code=1000)
                return
            else:
                self.wake.clear()
                await self.wake.wait()

    async def _submit_pending(self) -> None:
        while self.pending and len(self.runs) < LOOKAHEAD:
            number, text = self.pending.popleft()
            config = self.config
            try:
                request = speech_request(self.state, text, config.voice, config.instructions, config)
                encoder = stream_encoder(config.response_format, self.state.tts.sample_rate)
                run = SpeechRun(self.state, request, ENDPOINT, count_outcome=True)
            except ApiError as exc:
                await self._send_error(exc, number)
                continue
            self.runs.append(Utterance(number, text, run, encoder, config.response_format, config.binary))

    async def _stream(self, utterance: Utterance) -> None:
        run, status = utterance.run, CLIENT_GONE
        try:
            await self._send_json({"type": "audio.start", "utterance": utterance.number, "text": utterance.text,
                                   "format": utterance.response_format})
            async for chunk in run.chunks():
                await self._send_audio(utterance, utterance.encoder.encode(chunk))
                await self._submit_pending()
            await self._send_audio(utterance, utterance.encoder.finish())
            await self._send_json({"type": "audio.done", "utterance": utterance.number, "text": utterance.text,
                                   "finish_reason": run.stream.finish_reason,
                                   "audio_seconds": round(run.audio_seconds, 3), "usage": run.usage(),
                                   "text_wait_s": round(run.stream.text_wait_s, 3)})
            status = 200
        except ApiError as exc:
            status = exc.status
            await self._send_error(exc, utterance.number)
        finally:
            run.finish(status)

    async def _send_audio(self, utterance: Utterance, data: bytes) -> None:
        if not data:
            return
        async with self.send_lock:
            if utterance.binary:
                await self.ws.send_bytes(data)
            else:
                await self.ws.send_text(json.dumps({"type": "audio.delta", "utterance": utterance.number,
                                                    "audio": base64.b64encode(data).decode()}))

    async def _send_json(self, payload: dict) -> None:
        async with self.send_lock:
            await self.ws.send_text(json.dumps(payload))

    async def _send_error(self, exc: ApiError, utterance: int | None = None) -> None:
        await self._send_json({"type": "error", **exc.body(), "utterance": utterance})

    def _describe(self) -> dict:
        return {**self.config.model_dump(mode="json"), "sample_rate": self.state.tts.sample_rate,
                "model": self.state.settings.model_name}
