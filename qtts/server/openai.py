"""The OpenAI-compatible HTTP surface: the speech request body and the error shape."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from ..engine.request import (MAX_FRAMES, MAX_REPETITION_PENALTY, MAX_SEED, MAX_TEMPERATURE, MAX_TOP_K, MIN_SEED,
                              check_text)
from ..errors import InvalidRequestError

RESPONSE_FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")
# error types other than invalid_request_error (4xx) and server_error (5xx)
ERROR_TYPES = {401: "authentication_error", 404: "not_found_error", 429: "rate_limit_error",
               503: "service_unavailable"}


class ApiError(Exception):
    """An error answered as OpenAI does: `{"error": {"message", "type", "param", "code"}}`."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        kind = ERROR_TYPES.get(self.status, "invalid_request_error" if self.status < 500 else "server_error")
        return {"error": {"message": self.message, "type": kind,
                          "param": self.param, "code": self.code}}


def _valid_text(value: str) -> str:
    try:
        check_text("the text", value)
    except InvalidRequestError as exc:
        raise ValueError(str(exc)) from None
    return value


Text = Annotated[str, AfterValidator(_valid_text)]  # valid Unicode (no lone surrogates), not overly long
Temperature = Annotated[float, Field(ge=0, le=MAX_TEMPERATURE, allow_inf_nan=False)]
TopK = Annotated[int, Field(ge=0, le=MAX_TOP_K)]
TopP = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]


class VoiceRef(BaseModel):
    """A custom voice passed as `{"id": ...}`, as the OpenAI API does for custom voices."""

    model_config = ConfigDict(extra="forbid")
    id: Text


class SynthesisOptions(BaseModel):
    """The Qwen3-TTS knobs beyond OpenAI's API, accepted as extra body fields."""

    model_config = ConfigDict(extra="forbid")
    language: Text = "auto"
    seed: int | None = Field(default=None, ge=MIN_SEED, le=MAX_SEED)
    temperature: Temperature | None = None
    top_k: TopK | None = None
    top_p: TopP | None = None
    repetition_penalty: float | None = Field(default=None, gt=0, le=MAX_REPETITION_PENALTY, allow_inf_nan=False)
    subtalker_temperature: Temperature | None = None
    subtalker_top_k: TopK | None = None
    subtalker_top_p: TopP | None = None
    max_frames: int | None = Field(default=None, ge=1, le=MAX_FRAMES)
    min_frames: int | None = Field(default=None, ge=0, le=MAX_FRAMES)  # no EOS before this; = max_frames forces the length
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

    model: Text | None = None
    input: Text
    voice: Text | VoiceRef | None = None
    instructions: Text | None = None
    response_format: Literal["mp3", "opus", "aac", "flac", "wav", "pcm"] = "mp3"
    speed: float = Field(default=1.0, ge=0.25, le=4.0, allow_inf_nan=False)
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
