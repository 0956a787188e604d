"""`POST /v1/audio/speech`: OpenAI's speech endpoint, streamed as the engine produces audio.

stream_format "audio": the body is one audio file in `response_format`, sent chunk by chunk (a wav
header says "unknown length"). stream_format "sse": `data: {"type": "speech.audio.delta", "audio":
base64}` events whose decoded bytes concatenate to that same file, then `speech.audio.done` with usage and
finish_reason ("length" when the frame cap of the input, or of any of its parts, cut it short; an audio
body cannot say so, its headers are sent with the first audio). An input too long for one request is
spoken in parts, cut at sentence ends, with a 0.25 s pause between (synthesis.SpeechRun).
The response starts only once the first audio exists, so errors before it get a proper status; a
client that goes away, before or after that, cancels its engine stream at once. An error after the
first audio (the engine died, the server is shutting down) ends an SSE stream with an `error` event
and cuts an audio body short (no final chunk: the only signal left once the headers are out); either
way the request is counted and logged once, with the error's status.
"""
from __future__ import annotations

import asyncio
import base64
import json
import time

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import ValidationError

from ..errors import AudioError
from .encoding import MEDIA_TYPES, StreamEncoder, stream_encoder
from .metrics import ResponseAborted
from .openai import ApiError, SpeechBody, validation_error
from .synthesis import CLIENT_GONE, SpeechRun, speech_request

ENDPOINT = "/v1/audio/speech"
router = APIRouter()


@router.post(ENDPOINT)
async def create_speech(request: Request) -> Response:
    started = time.perf_counter()
    state = request.app.state.qtts
    state.require_ready()
    body = await read_json(request, limit=4 * state.settings.max_input_chars + 65536)
    try:
        speech = SpeechBody.model_validate(body)
    except ValidationError as exc:
        raise validation_error(exc) from exc
    if speech.speed != 1.0:
        raise ApiError(400, "speed other than 1.0 is not supported: Qwen3-TTS has no speaking-rate control; "
                       "ask for faster or slower speech in `instructions` instead", "speed", "unsupported_speed")
    engine_request = speech_request(state, speech.input, speech.voice, speech.instructions, speech)
    try:
        encoder = stream_encoder(speech.response_format, state.tts.sample_rate)
    except AudioError as exc:
        raise ApiError(400, str(exc), "response_format", "unsupported_format") from exc
    run = SpeechRun(state, engine_request, ENDPOINT, started)
    chunks = run.chunks()
    try:
        first = await _first_chunk_or_disconnect(request, chunks)
    except _ClientGone:
        run.finish(CLIENT_GONE)
        return Response(status_code=CLIENT_GONE)
    except BaseException as exc:
        run.finish(exc.status if isinstance(exc, ApiError) else CLIENT_GONE)
        raise
    headers = {"x-request-id": run.id, "cache-control": "no-store"}
    if speech.stream_format == "sse":
        return StreamingResponse(_sse_body(request, run, chunks, first, encoder), media_type="text/event-stream",
                                 headers=headers)
    return StreamingResponse(_audio_body(request, run, chunks, first, encoder),
                             media_type=MEDIA_TYPES[speech.response_format], headers=headers)


async def read_json(request: Request, limit: int) -> object:
    """The JSON body, checked for content type, size and syntax."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise ApiError(415, f"send the request as application/json (got {content_type or 'no content type'})",
                       code="unsupported_media_type")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body of {declared} bytes is over the {limit}-byte limit", code="body_too_large")
    raw = bytearray()
    async for part in request.stream():
        raw += part
        if len(raw) > limit:
            raise ApiError(413, f"request body is over the {limit}-byte limit", code="body_too_large")
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise ApiError(400, f"the body is not valid JSON: {exc}", code="invalid_json") from None
    except RecursionError:
        raise ApiError(400, "the body is not valid JSON: nested too deeply", code="invalid_json") from None


class _ClientGone(Exception):
    pass


async def _first_chunk_or_disconnect(request: Request, chunks):
    """The first audio chunk (None if the stream ended without audio), unless the client leaves first."""
    first = asyncio.ensure_future(anext(chunks, None))
    gone = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({first, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not first.done():
            first.cancel()
    if not first.done() or first.cancelled():
        raise _ClientGone()
    return first.result()


async def _wait_for_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _finish(request: Request, run: SpeechRun, status: int) -> None:
    run.finish(status)
    request.state.status = status  # what RequestCounter counts: the response itself may say 200


async def _audio_body(request: Request, run: SpeechRun, chunks, first, encoder: StreamEncoder):
    status = CLIENT_GONE
    try:
        async for data in _encoded(chunks, first, encoder):
            yield data
        status = 200
    except ApiError as exc:
        status = exc.status
        raise ResponseAborted() from None
    finally:
        _finish(request, run, status)


def _event(payload: dict) -> bytes:
    return f"data: {json.dumps(payload)}\n\n".encode()


async def _sse_body(request: Request, run: SpeechRun, chunks, first, encoder: StreamEncoder):
    status = CLIENT_GONE
    try:
        async for data in _encoded(chunks, first, encoder):
            yield _event({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()})
        yield _event({"type": "speech.audio.done", "usage": run.usage(), "finish_reason": run.stream.finish_reason})
        status = 200
    except ApiError as exc:
        status = exc.status
        yield _event({"type": "error", **exc.body()})
    finally:
        _finish(request, run, status)


async def _encoded(chunks, first, encoder: StreamEncoder):
    """Non-empty pieces of the encoded file: the first chunk, the rest, then the encoder's tail."""
    if first is not None:
        data = encoder.encode(first)
        if data:
            yield data
        async for chunk in chunks:
            data = encoder.encode(chunk)
            if data:
                yield data
    tail = encoder.finish()
    if tail:
        yield tail
