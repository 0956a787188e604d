"""One synthesis request: what to say, in which voice, and how to sample.

`validated()` holds the ranges every entry point enforces (the HTTP and websocket models use the
same constants): wide enough for any useful setting, narrow enough that every value fits the
engine's float32 and int64 row tensors.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..errors import InvalidRequestError
from ..voices import VoicePrompt

MAX_TEXT_CHARS = 20_000
MAX_TEMPERATURE = 100.0
MAX_REPETITION_PENALTY = 100.0
MAX_TOP_K = 2**31 - 1
MAX_FRAMES = 1_000_000  # 22 hours of audio
MIN_SEED, MAX_SEED = -(2**63), 2**63 - 1  # a 64-bit signed integer


@dataclass(frozen=True)
class SamplingParams:
    """Upstream's sampling knobs; the `subtalker_*` ones apply to codebooks 1..15."""

    do_sample: bool = True
    temperature: float = 0.9
    top_k: int = 50
    top_p: float = 1.0
    repetition_penalty: float = 1.05
    subtalker_do_sample: bool = True
    subtalker_temperature: float = 0.9
    subtalker_top_k: int = 50
    subtalker_top_p: float = 1.0
    seed: int | None = None

    @classmethod
    def greedy(cls, **overrides) -> "SamplingParams":
        return cls(do_sample=False, subtalker_do_sample=False, **overrides)

    @classmethod
    def from_generation_config(cls, defaults: dict, **overrides) -> "SamplingParams":
        """Defaults from generation_config.json, then explicit overrides (None means 'not given')."""
        keys = {"do_sample": "do_sample", "temperature": "temperature", "top_k": "top_k", "top_p": "top_p",
                "repetition_penalty": "repetition_penalty", "subtalker_do_sample": "subtalker_dosample",
                "subtalker_temperature": "subtalker_temperature", "subtalker_top_k": "subtalker_top_k",
                "subtalker_top_p": "subtalker_top_p"}
        values = {name: defaults[key] for name, key in keys.items() if key in defaults}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values).validated()

    def validated(self) -> "SamplingParams":
        """Check ranges (NaN is in none); a temperature of 0 means greedy, as most TTS APIs read it."""
        params = self
        for prefix in ("", "subtalker_"):
            temperature = getattr(params, prefix + "temperature")
            top_k = getattr(params, prefix + "top_k")
            top_p = getattr(params, prefix + "top_p")
            if not 0 <= temperature <= MAX_TEMPERATURE:
                raise InvalidRequestError(f"{prefix}temperature must be in [0, {MAX_TEMPERATURE:g}], got {temperature}")
            if temperature == 0:
                params = replace(params, **{prefix + "temperature": 1.0,
                                            ("subtalker_do_sample" if prefix else "do_sample"): False})
            if not 0 <= top_k <= MAX_TOP_K:
                raise InvalidRequestError(f"{prefix}top_k must be in [0, {MAX_TOP_K}] (0 disables it), got {top_k}")
            if not 0 < top_p <= 1:
                raise InvalidRequestError(f"{prefix}top_p must be in (0, 1], got {top_p}")
        if not 0 < params.repetition_penalty <= MAX_REPETITION_PENALTY:
            raise InvalidRequestError(f"repetition_penalty must be in (0, {MAX_REPETITION_PENALTY:g}], "
                                      f"got {params.repetition_penalty}")
        if params.seed is not None and not MIN_SEED <= params.seed <= MAX_SEED:
            raise InvalidRequestError(f"seed must be a 64-bit signed integer, got {params.seed}")
        return params


@dataclass(frozen=True)
class SpeechRequest:
    """A request in any mode.

    CustomVoice: `speaker` (+ optional `instruct`); VoiceDesign: `instruct`; Base: `voice`.
    `non_streaming_mode` None picks upstream's default for the mode (True for CustomVoice and
    VoiceDesign, False for cloning). `max_frames` caps the output (12.5 frames per second).
    """

    text: str
    speaker: str | None = None
    instruct: str | None = None
    language: str = "auto"
    voice: VoicePrompt | None = None
    non_streaming_mode: bool | None = None
    sampling: SamplingParams = field(default_factory=SamplingParams)
    max_frames: int | None = None
    min_frames: int = 2  # upstream hard-codes 2; benchmarks raise it to force a frame count
    text_open: bool = False  # more text follows (Stream.append_text, end_text); streaming text mode only
    resolved: bool = field(default=False, compare=False, repr=False)  # checked against a model (resolve_mode)

    def validated(self) -> "SpeechRequest":
        if not isinstance(self.text, str) or not (self.text.strip() or self.text_open):
            raise InvalidRequestError("text is empty: give the words to speak")
        for name, value in (("text", self.text), ("instruct", self.instruct)):
            if value is not None:
                check_text(name, value)
        if self.max_frames is not None and not 1 <= self.max_frames <= MAX_FRAMES:
            raise InvalidRequestError(f"max_frames must be in [1, {MAX_FRAMES}], got {self.max_frames}")
        if not 0 <= self.min_frames <= MAX_FRAMES:
            raise InvalidRequestError(f"min_frames must be in [0, {MAX_FRAMES}], got {self.min_frames}")
        return replace(self, sampling=self.sampling.validated())


def check_text(name: str, value: str) -> None:
    """Raise InvalidRequestError unless `value` is text the tokenizer takes: a str of valid Unicode
    (no lone UTF-16 surrogates, which JSON's \\ud800 escapes can produce) within MAX_TEXT_CHARS."""
    if not isinstance(value, str):
        raise InvalidRequestError(f"{name} must be a string, got {type(value).__name__}")
    if len(value) > MAX_TEXT_CHARS:
        raise InvalidRequestError(f"{name} has {len(value)} characters; the limit is {MAX_TEXT_CHARS}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidRequestError(f"{name} holds a lone UTF-16 surrogate at character {exc.start}; "
                                  "send valid Unicode text") from None
