"""`/v1/voices`: make clone voices from reference audio, list, get and delete them.

`POST /v1/voices` takes multipart/form-data: `name`, `audio` (the reference recording: wav, flac,
ogg, mp3, m4a, webm ...) and an optional `transcript` of it (which enables in-context cloning, the
closer match). Built-in CustomVoice speakers are listed as voices of type "builtin".
The reference is refused from its header when that says it is too long, and otherwise decoded a
block at a time up to the length limit, a few uploads at a time (ServerState.upload_decodes).
"""
from __future__ import annotations

import unicodedata

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from .. import audio as audio_io
from ..errors import AudioError, AudioTooLongError
from .openai import ApiError
from .state import ServerState
from .voices_store import DamagedVoiceError, DuplicateVoiceError, VoiceRecord

MAX_NAME_CHARS = 64
FORM_OVERHEAD_BYTES = 64 * 1024  # room for the multipart headers and the text fields
router = APIRouter()


def _builtin(name: str) -> dict:
    return {"id": name, "object": "voice", "name": name, "type": "builtin"}


@router.get("/v1/voices")
async def list_voices(request: Request) -> dict:
    state: ServerState = request.app.state.qtts
    clones = [record.to_json() for record in state.voices.list()]
    return {"object": "list", "data": [_builtin(s) for s in state.tts.speakers] + clones}


@router.get("/v1/voices/{voice_id}")
async def get_voice(voice_id: str, request: Request) -> dict:
    state: ServerState = request.app.state.qtts
    if voice_id.lower() in state.tts.speakers:
        return _builtin(voice_id.lower())
    record = state.voices.find(voice_id)
    if record is None:
        raise ApiError(404, f"no voice {voice_id!r}", "voice_id", "voice_not_found")
    try:
        await run_in_threadpool(state.voices.prompt, record.id)  # a listed voice must also be usable
    except DamagedVoiceError as exc:
        raise damaged_voice_error(record, exc, "voice_id") from None
    return record.to_json()


def damaged_voice_error(record: VoiceRecord, exc: DamagedVoiceError, param: str) -> ApiError:
    """The answer for a stored voice whose file is missing or unreadable (410: asking again will not help)."""
    return ApiError(410, f"voice {record.name!r} ({record.id}) cannot be used: {exc}; delete it and create it "
                    "again", param, "voice_damaged")


@router.delete("/v1/voices/{voice_id}")
async def delete_voice(voice_id: str, request: Request) -> dict:
    state: ServerState = request.app.state.qtts
    if voice_id.lower() in state.tts.speakers:
        raise ApiError(400, f"{voice_id!r} is a built-in voice of the model and cannot be deleted", "voice_id",
                       "builtin_voice")
    record = state.voices.find(voice_id)
    if record is None or not state.voices.delete(record.id):
        raise ApiError(404, f"no voice {voice_id!r}", "voice_id", "voice_not_found")
    return {"id": record.id, "object": "voice.deleted", "deleted": True}


@router.post("/v1/voices", status_code=201)
async def create_voice(request: Request) -> JSONResponse:
    state: ServerState = request.app.state.qtts
    state.require_ready()
    if state.tts.model_type != "base":
        raise ApiError(400, f"voice cloning needs a Base model; this server runs a {state.tts.model_type} model",
                       code="wrong_model_type")
    form = await _read_form(request, state.settings.max_upload_bytes)
    name = _check_name(form.get("name"))
    upload = form.get("audio")
    if not isinstance(upload, UploadFile):
        raise ApiError(400, "attach the reference recording as the file field `audio`", "audio",
                       "missing_required_parameter")
    media_type = (upload.content_type or "application/octet-stream").split(";")[0].strip().lower()
    if not (media_type.startswith("audio/") or media_type in ("application/octet-stream", "video/webm",
                                                               "video/mp4", "video/ogg")):
        raise ApiError(415, f"`audio` has content type {media_type}; send an audio file", "audio",
                       "unsupported_media_type")
    transcript = str(form.get("transcript") or "").strip() or None
    data = await upload.read()
    async with state.upload_decodes:
        wav, sample_rate, prompt = await run_in_threadpool(_make_voice, state, data, transcript)
    try:
        record = state.voices.add(name, prompt, reference_seconds=len(wav) / sample_rate)
    except DuplicateVoiceError as exc:
        raise ApiError(409, str(exc), "name", "voice_exists") from exc
    return JSONResponse(record.to_json(), status_code=201)


def _check_name(value) -> str:
    name = str(value or "").strip()
    if not name or len(name) > MAX_NAME_CHARS:
        raise ApiError(400, f"`name` must be 1 to {MAX_NAME_CHARS} characters", "name", "invalid_value")
    if name.casefold().startswith("voice_"):
        raise ApiError(400, "`name` may not start with 'voice_' (that prefix is for ids)", "name", "invalid_value")
    if "/" in name or any(unicodedata.category(ch) == "Cc" for ch in name):
        raise ApiError(400, "`name` may not hold '/' or control characters (it goes in URLs: /v1/voices/{name})",
                       "name", "invalid_value")
    return name


def _make_voice(state: ServerState, data: bytes, transcript: str | None):
    limit = state.settings.max_upload_seconds
    try:
        wav, sample_rate = audio_io.load_audio(data, max_seconds=limit)
        with state.voice_encoder_lock:
            return wav, sample_rate, state.tts.create_voice(wav, reference_text=transcript, sample_rate=sample_rate)
    except AudioTooLongError as exc:
        raise ApiError(413, f"{exc} (3-10 s of clear speech works best)", "audio", "audio_too_long") from exc
    except AudioError as exc:
        raise ApiError(422, str(exc), "audio", "invalid_audio") from exc


async def _read_form(request: Request, max_upload_bytes: int):
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise ApiError(415, "send the voice as multipart/form-data with fields name, audio and transcript",
                       code="unsupported_media_type")
    limit = max_upload_bytes + FORM_OVERHEAD_BYTES
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"upload of {declared} bytes is over the {max_upload_bytes}-byte limit",
                       "audio", "upload_too_large")

    async def capped():
        received = 0
        async for part in request.stream():
            received += len(part)
            if received > limit:
                raise ApiError(413, f"upload is over the {max_upload_bytes}-byte limit", "audio", "upload_too_large")
            yield part

    try:
        return await _StrictTextParser(request.headers, capped(), max_files=1, max_fields=8).parse()
    except MultiPartException as exc:
        raise ApiError(400, f"malformed multipart body: {exc.message}", code="invalid_form") from exc


class _StrictTextParser(MultiPartParser):
    """Refuses text fields that are not valid in their charset (UTF-8 unless the form says otherwise);
    starlette would read them as Latin-1 and store the name garbled."""

    def on_part_end(self) -> None:
        part = self._current_part
        if part.file is None:
            try:
                part.data.decode(self._charset)
            except (UnicodeDecodeError, LookupError):
                raise MultiPartException(f"field {part.field_name!r} is not valid {self._charset} text") from None
        super().on_part_end()
