"""The OpenAI-compatible HTTP surface: the speech request body and the error shape."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

RESPONSE_FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
               409: "invalid_request_error", 413: "invalid_request_error", 415: "invalid_request_error",
               422: "invalid_request_error", 429: "rate_limit_error", 500: "server_error",
               503: "service_unavailable"}


class ApiError(Exception):
    """An error answered as OpenAI does: `{"error": {"message", "type", "param", "code"}}`."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": ERROR_TYPES.get(self.status, "server_error"),
                          "param": self.param, "code": self.code}}


class VoiceRef(BaseModel):
    """A custom voice passed as `{"id": ...}`, as the OpenAI API does for custom voices."""

    model_config = ConfigDict(extra="forbid")
    id: str


class SynthesisOptions(BaseModel):
    """The Qwen3-TTS knobs beyond OpenAI's API, accepted as extra body fields."""

    model_config = ConfigDict(extra="forbid")
    language: str = "auto"
    seed: int | None = None
    temperature: float | None = Field(default=None, ge=0)
    top_k: int | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, gt=0, le=1)
    repetition_penalty: float | None = Field(default=None, gt=0)
    subtalker_temperature: float | None = Field(default=None, ge=0)
    subtalker_top_k: int | None = Field(default=None, ge=0)
    subtalker_top_p: float | None = Field(default=None, gt=0, le=1)
    max_frames: int | None = Field(default=None, ge=1)
    min_frames: int | None = Field(default=None, ge=0)  # no EOS before this; = max_frames forces the length
    greedy: bool = False

    @field_validator("min_frames")
    @classmethod
    def _min_frames_within_max(cls, value: int | None, info: ValidationInfo) -> int | None:
        cap = info.data.get("max_frames")
        if value is not None and cap is not None and value > cap:
            raise ValueError(f"min_frames ({value}) is above max_frames ({cap})")
        return value

    def sampling(self) -> dict:
        """Keyword arguments for `TTS.request` (None means the checkpoint's default)."""
        options = {name: getattr(self, name) for name in SynthesisOptions.model_fields if name != "language"}
        if options["min_frames"] is None:
            del options["min_frames"]  # TTS.request's own default (upstream's 2)
        return options


class SpeechBody(SynthesisOptions):
    """`POST /v1/audio/speech`. `speed` other than 1.0 is refused: Qwen3-TTS has no rate control and
    a time stretch would change the voice; ask the model for slower or faster speech in `instructions`."""

    model: str | None = None
    input: str
    voice: str | VoiceRef | None = None
    instructions: str | None = None
    response_format: Literal["mp3", "opus", "aac", "flac", "wav", "pcm"] = "mp3"
    speed: float = Field(default=1.0, ge=0.25, le=4.0)
    stream_format: Literal["audio", "sse"] = "audio"


def validation_error(exc: ValidationError) -> ApiError:
    """The first problem of a pydantic validation error, as a 400 naming the field."""
    first = exc.errors()[0]
    if not first["loc"]:
        return ApiError(400, f"the request body must be a JSON object: {first['msg']}", None, "invalid_body")
    param = str(first["loc"][0])
    if first["type"] == "extra_forbidden":
        return ApiError(400, f"unrecognized request argument: {param}", param, "unknown_parameter")
    if first["type"] == "missing":
        return ApiError(400, f"missing required parameter: {param}", param, "missing_required_parameter")
    return ApiError(400, f"invalid {param}: {first['msg']}", param, "invalid_value")
