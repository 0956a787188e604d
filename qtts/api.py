"""The Python API: load a checkpoint once, then speak in any of its modes, whole, streamed or in batches.

Every call runs on the serving engine (engine/engine.py), driven from the caller's thread: one
request is a batch of one, and a batch call is continuous batching over up to max_batch rows.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import audio as audio_io
from .checkpoint import resolve_checkpoint
from .config import SAMPLE_RATE
from .engine.engine import Engine
from .engine.longform import PAUSE_SAMPLES, split_request
from .engine.longform_stream import LongformStream, joined_finish_reason
from .engine.model import ModelBundle, load_model, pick_device, pick_dtype
from .engine.planning import check_request
from .engine.prefix_cache import DEFAULT_PREFIX_CACHE_MB
from .engine.request import SamplingParams, SpeechRequest
from .engine.scheduler import Scheduler
from .engine.stream import Stream
from .errors import WrongModelTypeError
from .voices import VoicePrompt

__all__ = ["TTS", "Speech", "SpeechStream", "pick_device", "pick_dtype"]

DEFAULT_CHUNK_FRAMES = (1, 2, 4, 8, 12)
WHOLE_CLIP = (1 << 30,)  # a chunk schedule that hands a request's audio over once, at its end
# offline work has no listener waiting: admit as many prompts per frame as rows are free
BATCH_PREFILLS_PER_FRAME = 16


@dataclass
class Speech:
    """A finished utterance: float32 mono samples in [-1, 1].

    A text too long for one request is spoken in parts (`TTS.split`): `parts` holds each part's Speech,
    `samples` joins theirs with 0.25 s of silence between, `codes` are theirs one after another, and
    finish_reason is "length" if any part stopped at its frame cap. A text spoken whole has no parts.
    """

    samples: np.ndarray
    sample_rate: int
    codes: torch.Tensor  # (frames, 16) generated codec codes
    finish_reason: str  # "stop" (the model ended) or "length" (frame cap reached)
    parts: list["Speech"] = field(default_factory=list)

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sample_rate


class SpeechStream:
    """Audio chunks of one request while they are generated (iterate it; `close()` cancels the rest).

    Once it has ended, `finish_reason` says why: "stop", or "length" if the text or any of its parts
    stopped at its frame cap; `parts` holds the engine Stream of each part started so far.
    """

    def __init__(self, chunks: Iterator[np.ndarray], source: LongformStream):
        self._chunks, self._source = chunks, source

    def __iter__(self) -> "SpeechStream":
        return self

    def __next__(self) -> np.ndarray:
        return next(self._chunks)

    def close(self) -> None:
        self._chunks.close()

    @property
    def finish_reason(self) -> str | None:
        return self._source.finish_reason

    @property
    def frames(self) -> int:
        return self._source.frames

    @property
    def parts(self) -> list[Stream]:
        return list(self._source.streams)


class TTS:
    """A loaded Qwen3-TTS 12Hz model (Base, CustomVoice or VoiceDesign)."""

    def __init__(self, model: ModelBundle, max_batch: int | None = None):
        self.model = model
        self.max_batch = max_batch or (16 if model.device.type == "cuda" else 8)
        self._engine: Engine | None = None
        self._speaker_encoder = None
        self._codec_encoder = None

    @classmethod
    def from_pretrained(cls, path_or_id: str | Path, device: str | torch.device | None = None,
                        dtype: str | torch.dtype | None = None, max_len: int = 4096,
                        use_graphs: bool | None = None, fused_kernels: bool | None = None,
                        prefix_cache_mb: float = DEFAULT_PREFIX_CACHE_MB, generator: bool = True,
                        max_batch: int | None = None, fp8_talker: bool = False, fp8_predictor: bool = False,
                        kv_cache: str | None = None) -> "TTS":
        """Load a checkpoint folder or hub id.

        max_len bounds prompt + generated frames of one request; use_graphs (default: on CUDA)
        replays each frame as a captured CUDA graph; fused_kernels (default: on CUDA with Triton)
        runs single-token steps through the fused kernels; prefix_cache_mb bounds the device memory
        of the cache of voice-prompt K/V (0 turns it off; see `prefix_cache.stats()`). max_batch:
        rows the engine decodes together (default 16 on GPU, 8 on CPU; a batch call may ask for more).
        generator=False skips the talker and codec decoder: requests and voices can be made, not
        speech (a server whose engine runs in another process). Quantization, off by default (see
        docs/quantization.md for what each passes): fp8_talker and fp8_predictor store those decoder
        layers' projections in FP8 (Hopper and newer run them as FP8 GEMMs); kv_cache "int8" or "int4"
        stores the talker's K/V quantized.
        """
        model = load_model(resolve_checkpoint(path_or_id), device, dtype, max_len, use_graphs, fused_kernels,
                           prefix_cache_mb, generator, fp8_talker, fp8_predictor, kv_cache)
        return cls(model, max_batch)

    # ----- facts ------------------------------------------------------------------------------
    @property
    def folder(self) -> Path:
        return self.model.folder

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def max_len(self) -> int:
        return self.model.max_len

    @property
    def use_graphs(self) -> bool:
        return self.model.use_graphs

    @property
    def config(self):
        return self.model.config

    @property
    def codec_config(self):
        return self.model.codec_config

    @property
    def tokenizer(self):
        return self.model.tokenizer

    @property
    def talker(self):
        return self.model.talker

    @property
    def codec_decoder(self):
        return self.model.codec_decoder

    @property
    def prefix_cache(self):
        return self.model.prefix_cache

    @property
    def model_type(self) -> str:
        return self.config.model_type

    @property
    def speakers(self) -> list[str]:
        return self.config.speakers

    @property
    def languages(self) -> list[str]:
        return self.config.languages

    @property
    def sample_rate(self) -> int:
        return SAMPLE_RATE

    def sampling(self, **overrides) -> SamplingParams:
        """Sampling parameters: generation_config.json defaults, then the given overrides."""
        return self.model.sampling(**overrides)

    # ----- modes --------------------------------------------------------------------------------
    def speak(self, text: str, speaker: str, language: str = "auto", instruct: str | None = None,
              **options) -> Speech:
        """CustomVoice: one of the built-in speakers, optionally with a style instruction (1.7B)."""
        return self.generate(self.request(text, speaker=speaker, language=language, instruct=instruct, **options))

    def design(self, text: str, instruct: str, language: str = "auto", **options) -> Speech:
        """VoiceDesign: a voice made from a description."""
        return self.generate(self.request(text, instruct=instruct, language=language, **options))

    def clone(self, text: str, voice: VoicePrompt, language: str = "auto", **options) -> Speech:
        """Base: speak in the voice of a prompt made by `create_voice`."""
        return self.generate(self.request(text, voice=voice, language=language, **options))

    def request(self, text: str, *, speaker=None, instruct=None, language="auto", voice=None,
                non_streaming_mode=None, max_frames=None, min_frames=2, seed=None, greedy=False, text_open=False,
                **sampling) -> SpeechRequest:
        """Build a checked request; sampling keywords override generation_config.json. text_open: more
        text follows through the stream's append_text/end_text (see `stream_text`)."""
        params = self.sampling(seed=seed, **sampling)
        if greedy:
            params = replace(params, do_sample=False, subtalker_do_sample=False)
        req = SpeechRequest(text=text, speaker=speaker, instruct=instruct, language=language, voice=voice,
                            non_streaming_mode=non_streaming_mode, sampling=params, max_frames=max_frames,
                            min_frames=min_frames, text_open=text_open)
        return check_request(self.model, req)

    def split(self, request: SpeechRequest) -> list[SpeechRequest]:
        """The parts a request's text is spoken in: [request] when it fits max_len; a longer text is cut at
        sentence ends (then clauses, words) into parts that fit, each with the request's voice and options
        and a seed derived from its seed (part 0 keeps it). Every call here splits this way by itself.
        Raises InvalidRequestError when not even one character fits after the voice's prompt."""
        return split_request(self.model, request, self.max_len)

    # ----- voices -------------------------------------------------------------------------------
    def create_voice(self, reference, reference_text: str | None = None,
                     sample_rate: int | None = None) -> VoicePrompt:
        """A clone voice from reference audio (path, bytes, file or array + sample_rate).

        With `reference_text` (its transcript) the voice uses in-context learning, which sounds
        closer to the reference; without it only the speaker embedding (x-vector) is used.
        """
        if self.model_type != "base":
            raise WrongModelTypeError(f"voice cloning needs a Base model; this is a {self.model_type} model")
        source = (reference, sample_rate) if sample_rate is not None else reference
        wav, sr = audio_io.load_reference(source)
        wav24 = torch.from_numpy(audio_io.resample(wav, sr, SAMPLE_RATE)).to(self.device)
        embedding = self.speaker_encoder.embed(wav24.unsqueeze(0))[0]
        codes = None
        if reference_text and reference_text.strip():
            codes = self.codec_encoder.encode(wav24.unsqueeze(0).to(self.dtype))[0]
        return VoicePrompt(speaker_embedding=embedding.float().cpu(),
                           reference_codes=None if codes is None else codes.cpu(),
                           reference_text=reference_text.strip() if codes is not None else None)

    @property
    def speaker_encoder(self):
        if self._speaker_encoder is None:
            from .models.speaker_encoder import load_speaker_encoder

            self._speaker_encoder = load_speaker_encoder(self.folder, self.config.speaker_encoder,
                                                         self.device, self.dtype)
        return self._speaker_encoder

    @property
    def codec_encoder(self):
        if self._codec_encoder is None:
            from .models.codec_encoder import load_codec_encoder

            self._codec_encoder = load_codec_encoder(self.folder / "speech_tokenizer", self.device, self.dtype)
        return self._codec_encoder

    # ----- generation ---------------------------------------------------------------------------
    def engine(self, max_batch: int | None = None) -> Engine:
        """The engine every call here runs on, driven from the caller's thread; built on first use, and
        again (larger) when a batch call asks for more rows than it has."""
        if not self.model.has_generator:
            raise RuntimeError("this TTS was loaded with generator=False: it builds requests and voices only")
        rows = max(max_batch or 0, self.max_batch)
        if self._engine is None or self._engine.max_batch < rows:
            self._engine = None  # its buffers go before the larger engine's are allocated
            scheduler = Scheduler(rows, max_prefills_per_frame=BATCH_PREFILLS_PER_FRAME, low_buffer_s=0)
            self._engine = Engine(self.model, max_batch=rows, max_queue=None, scheduler=scheduler)
        return self._engine

    @torch.no_grad()
    def generate(self, request: SpeechRequest, on_frame=None) -> Speech:
        """The whole utterance at once. on_frame, if given, is called once per generated frame."""
        (_, result), = self.generate_many([request], on_frame=on_frame, raise_errors=True)
        return result

    def generate_codes(self, requests: list[SpeechRequest], on_frame=None) -> list[tuple[torch.Tensor, str]]:
        """Codec codes (frames, 16) and finish reason for each request, generated as one batch."""
        results = dict(self.generate_many(requests, on_frame=on_frame, raise_errors=True))
        return [(results[index].codes, results[index].finish_reason) for index in range(len(requests))]

    @torch.no_grad()
    def generate_many(self, requests: Iterable[SpeechRequest], max_batch: int | None = None, progress: bool = False,
                      on_frame=None, raise_errors: bool = False) -> Iterator[tuple[int, Speech | Exception]]:
        """Speak many requests with continuous batching; yields (index, Speech) as each one finishes.

        Up to max_batch (default: this TTS's) generate together, and a finished one's row is taken by
        the next at once, so a long text does not hold the short ones. A text too long for one request is
        spoken in parts (`split`) that generate side by side; its Speech comes when its last part is done.
        A request that fails yields (index, the exception) and the rest go on, unless raise_errors.
        progress: a bar on stderr with the total and the audio seconds made per second. on_frame: called
        once per generated frame.
        """
        requests = list(requests)
        engine = self.engine(max_batch)
        streams: dict[tuple[int, int], Stream] = {}  # (request, part) -> the part's stream
        audio: dict[tuple[int, int], list[np.ndarray]] = {}
        finished: dict[int, list[Speech | None]] = {}  # request -> its parts' speech, as they finish
        bar = tqdm(total=len(requests), desc="requests", unit="req", file=sys.stderr) if progress else None
        made_s, started = 0.0, time.perf_counter()

        def drop(index: int) -> None:  # a request that failed: its other parts stop
            for key in [key for key in streams if key[0] == index]:
                streams.pop(key).cancel()
                audio.pop(key)
            finished.pop(index, None)

        try:
            for index, request in enumerate(requests):
                try:
                    parts = self.split(request)
                    finished[index] = [None] * len(parts)
                    for number, part in enumerate(parts):
                        streams[index, number] = engine.submit(part, WHOLE_CLIP, make_stream=_code_keeping_stream)
                        audio[index, number] = []
                except Exception as exc:
                    drop(index)
                    if raise_errors:
                        raise
                    yield index, exc
            while streams:
                frames_before = sum(stream.frames for stream in streams.values())
                engine.step()
                if on_frame is not None:
                    for _ in range(sum(stream.frames for stream in streams.values()) - frames_before):
                        on_frame()
                for key, stream in list(streams.items()):
                    if key not in streams:  # dropped with a part that failed
                        continue
                    index, number = key
                    try:
                        audio[key] += stream.take_ready()
                        if stream.finish_reason == "error":
                            raise stream.error
                    except Exception as exc:
                        drop(index)
                        if raise_errors:
                            raise
                        yield index, exc
                        continue
                    if not stream.done:
                        continue
                    del streams[key]
                    finished[index][number] = _speech(stream, audio.pop(key))
                    if any(part is None for part in finished[index]):
                        continue
                    speech = _joined(finished.pop(index))
                    made_s += speech.duration_s
                    if bar is not None:
                        bar.set_postfix_str(f"{made_s / max(time.perf_counter() - started, 1e-9):.1f} audio-s/s")
                        bar.update()
                    yield index, speech
        finally:
            for stream in streams.values():
                stream.cancel()
            if bar is not None:
                bar.close()

    def stream(self, request: SpeechRequest, chunk_frames: tuple[int, ...] = DEFAULT_CHUNK_FRAMES) -> SpeechStream:
        """Audio chunks while frames are generated; chunk k holds chunk_frames[k] frames (the last size repeats).

        The codec decoder keeps its causal state between chunks, so the concatenated chunks equal
        the whole-utterance decode of the same codes. A text too long for one request comes part after
        part (`split`) with 0.25 s of silence between; up to max_batch parts generate side by side.
        Stopping the iteration early (`close()`) cancels the request.
        """
        engine = self.engine()
        source = LongformStream(lambda part: engine.submit(part, chunk_frames), self.split(request),
                                ahead=engine.max_batch - 1)
        return SpeechStream(_read_stepping(engine, source), source)

    @torch.no_grad()
    def stream_text(self, pieces: Iterable[str], chunk_frames: tuple[int, ...] = DEFAULT_CHUNK_FRAMES,
                    **request_options) -> Iterator[np.ndarray]:
        """Speak text while it is still being written (an LLM's tokens): audio chunks as in `stream`.

        Speech starts once the first words have settled and each frame runs as soon as its text token
        has; the result equals `stream` of the whole text in streaming text mode, whatever the pieces.
        request_options: `request`'s keywords (speaker, voice, instruct, language, seed ...).
        """
        engine = self.engine()
        stream = engine.submit(self.request("", text_open=True, **request_options), chunk_frames)
        try:
            for piece in pieces:
                stream.append_text(piece)
                while engine.step():
                    yield from stream.take_ready()
                yield from stream.take_ready()
            stream.end_text()
            while not stream.done:
                engine.step()
                yield from stream.take_ready()
            yield from stream.take_ready()
        finally:
            if not stream.done:
                stream.cancel()

    @torch.no_grad()
    def decode_codes(self, codes: torch.Tensor, reference_codes: torch.Tensor | None = None) -> np.ndarray:
        """Waveform of generated codes in one pass; an ICL reference is decoded first as context and cut off."""
        if not self.model.has_generator:
            raise RuntimeError("this TTS was loaded with generator=False: it builds requests and voices only")
        if codes.shape[0] == 0:
            return np.zeros(0, dtype=np.float32)
        codes = codes.to(self.device)
        if reference_codes is not None:
            codes = torch.cat([reference_codes.to(self.device), codes])
        wave = self.codec_decoder(codes.clamp(0, self.model.code_limit).T.unsqueeze(0))
        wave = wave.reshape(-1).float().cpu().numpy()
        if reference_codes is not None:
            wave = wave[reference_codes.shape[0] * self.codec_config.decoder.samples_per_frame:]
        return wave


def _code_keeping_stream(request, chunk_frames, on_cancel, **options) -> Stream:
    return Stream(request, chunk_frames, on_cancel, keep_codes=True, **options)


def _speech(stream: Stream, chunks: list[np.ndarray]) -> Speech:
    samples = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
    codes = torch.stack(stream.codes).cpu() if stream.codes else torch.zeros(0, 16, dtype=torch.long)
    return Speech(samples=samples, sample_rate=SAMPLE_RATE, codes=codes, finish_reason=stream.finish_reason)


def _joined(parts: list[Speech]) -> Speech:
    """A request's Speech from its parts' (a text spoken whole is its one part)."""
    if len(parts) == 1:
        return parts[0]
    pause = np.zeros(PAUSE_SAMPLES, dtype=np.float32)
    samples = np.concatenate([piece for part in parts for piece in (pause, part.samples)][1:])
    return Speech(samples=samples, sample_rate=SAMPLE_RATE, codes=torch.cat([part.codes for part in parts]),
                  finish_reason=joined_finish_reason([part.finish_reason for part in parts]), parts=parts)


@torch.no_grad()
def _read_stepping(engine: Engine, source: LongformStream) -> Iterator[np.ndarray]:
    """source's audio, stepping the engine on this thread until it has ended (cancelled if left early)."""
    try:
        while True:
            yield from source.take_ready()
            if source.done:
                return
            engine.step()
    finally:
        if not source.done:
            source.cancel()
