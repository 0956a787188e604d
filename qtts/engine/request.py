"""One synthesis request: what to say, in which voice, and how to sample."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..errors import InvalidRequestError
from ..voices import VoicePrompt

MAX_TEXT_CHARS = 20_000


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
        """Check ranges; a temperature of 0 means greedy, as most TTS APIs read it."""
        params = self
        for prefix in ("", "subtalker_"):
            temperature = getattr(params, prefix + "temperature")
            top_k = getattr(params, prefix + "top_k")
            top_p = getattr(params, prefix + "top_p")
            if temperature < 0:
                raise InvalidRequestError(f"{prefix}temperature must be >= 0, got {temperature}")
            if temperature == 0:
                params = replace(params, **{prefix + "temperature": 1.0,
                                            ("subtalker_do_sample" if prefix else "do_sample"): False})
            if top_k < 0:
                raise InvalidRequestError(f"{prefix}top_k must be >= 0 (0 disables it), got {top_k}")
            if not 0 < top_p <= 1:
                raise InvalidRequestError(f"{prefix}top_p must be in (0, 1], got {top_p}")
        if params.repetition_penalty <= 0:
            raise InvalidRequestError(f"repetition_penalty must be > 0, got {params.repetition_penalty}")
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
    resolved: bool = field(default=False, compare=False, repr=False)  # checked against a model (resolve_mode)

    def validated(self) -> "SpeechRequest":
        if not isinstance(self.text, str) or not self.text.strip():
            raise InvalidRequestError("text is empty: give the words to speak")
        if len(self.text) > MAX_TEXT_CHARS:
            raise InvalidRequestError(f"text has {len(self.text)} characters; the limit is {MAX_TEXT_CHARS}")
        if self.max_frames is not None and self.max_frames < 1:
            raise InvalidRequestError(f"max_frames must be >= 1, got {self.max_frames}")
        if self.min_frames < 0:
            raise InvalidRequestError(f"min_frames must be >= 0, got {self.min_frames}")
        return replace(self, sampling=self.sampling.validated())
