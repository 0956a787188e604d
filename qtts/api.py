"""The Python API: load a checkpoint once, then speak in any of its modes, whole or streamed."""
from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from . import audio as audio_io
from .checkpoint import resolve_checkpoint
from .config import SAMPLE_RATE, load_codec_config, load_generation_defaults, load_model_config
from .engine.generate import RowPlan, decode_rows, default_frame_cap
from .engine.prefix_cache import DEFAULT_PREFIX_CACHE_MB, PrefixCache
from .engine.prompt import build_prompt, resolve_mode
from .engine.request import SamplingParams, SpeechRequest
from .engine.runner import GraphRunner
from .kernels import kernels_enabled
from .engine.step import FrameStep
from .errors import InvalidRequestError, WrongModelTypeError
from .models.codec_decoder import StreamingCodecDecoder, load_codec_decoder
from .models.talker import Talker
from .text import TextTokenizer
from .voices import VoicePrompt
from .weights import load_module, read_tensors

DEFAULT_CHUNK_FRAMES = (1, 2, 4, 8, 12)


@dataclass
class Speech:
    """A finished utterance: float32 mono samples in [-1, 1]."""

    samples: np.ndarray
    sample_rate: int
    codes: torch.Tensor  # (frames, 16) generated codec codes
    finish_reason: str  # "stop" (the model ended) or "length" (frame cap reached)

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sample_rate


def pick_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def pick_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, str):
        names = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16,
                 "float16": torch.float16, "fp32": torch.float32, "float32": torch.float32}
        if dtype not in names:
            raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(names)}")
        return names[dtype]
    return dtype


class TTS:
    """A loaded Qwen3-TTS 12Hz model (Base, CustomVoice or VoiceDesign)."""

    def __init__(self, folder: Path, device: torch.device, dtype: torch.dtype, max_len: int = 4096,
                 use_graphs: bool | None = None, fused_kernels: bool | None = None,
                 prefix_cache_mb: float = DEFAULT_PREFIX_CACHE_MB, generator: bool = True):
        self.folder, self.device, self.dtype = folder, device, dtype
        self.max_len = max_len
        # how to load this model again (in an engine process)
        self.load_options = {"device": str(device), "dtype": dtype, "max_len": max_len, "use_graphs": use_graphs,
                             "fused_kernels": fused_kernels, "prefix_cache_mb": prefix_cache_mb}
        # shared by the single-row path and any Engine on this model; None when turned off
        self.prefix_cache = PrefixCache(int(prefix_cache_mb * 2**20)) if prefix_cache_mb > 0 and generator else None
        self.use_graphs = device.type == "cuda" if use_graphs is None else use_graphs
        self._single_row: GraphRunner | None = None
        self._single_stream: StreamingCodecDecoder | None = None
        self.config = load_model_config(folder)
        self.codec_config = load_codec_config(folder / "speech_tokenizer")
        self.generation_defaults = load_generation_defaults(folder)
        self.tokenizer = TextTokenizer.from_folder(folder)
        self._speaker_encoder = None
        self._codec_encoder = None
        self.talker = self.codec_decoder = None
        if generator:
            self._load_generator(folder, device, dtype, fused_kernels)

    def _load_generator(self, folder: Path, device: torch.device, dtype: torch.dtype, fused_kernels: bool | None):
        talker = Talker(self.config.talker)
        load_module(talker, read_tensors(folder, "talker."), f"{folder}/model.safetensors")
        self.talker = talker.to(device=device, dtype=dtype).eval()
        if kernels_enabled(device) if fused_kernels is None else fused_kernels:
            self.talker.model.fuse()
            self.talker.code_predictor.model.fuse(gemv=True)
        self.codec_decoder = load_codec_decoder(folder / "speech_tokenizer", device, dtype)

    @classmethod
    def from_pretrained(cls, path_or_id: str | Path, device: str | torch.device | None = None,
                        dtype: str | torch.dtype | None = None, max_len: int = 4096,
                        use_graphs: bool | None = None, fused_kernels: bool | None = None,
                        prefix_cache_mb: float = DEFAULT_PREFIX_CACHE_MB, generator: bool = True) -> "TTS":
        """Load a checkpoint folder or hub id.

        max_len bounds prompt + generated frames of one request; use_graphs (default: on CUDA)
        replays each frame as a captured CUDA graph; fused_kernels (default: on CUDA with Triton)
        runs single-token steps through the fused kernels; prefix_cache_mb bounds the device memory
        of the cache of voice-prompt K/V (0 turns it off; see `prefix_cache.stats()`).
        generator=False skips the talker and codec decoder: requests and voices can be made, not
        speech (a server whose engine runs in another process).
        """
        device = pick_device(device)
        return cls(resolve_checkpoint(path_or_id), device, pick_dtype(dtype, device), max_len, use_graphs,
                   fused_kernels, prefix_cache_mb, generator)

    # ----- facts ------------------------------------------------------------------------------
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
        return SamplingParams.from_generation_config(self.generation_defaults, **overrides)

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
                non_streaming_mode=None, max_frames=None, min_frames=2, seed=None, greedy=False,
                **sampling) -> SpeechRequest:
        """Build a validated request; sampling keywords override generation_config.json."""
        params = self.sampling(seed=seed, **sampling)
        if greedy:
            params = replace(params, do_sample=False, subtalker_do_sample=False)
        req = SpeechRequest(text=text, speaker=speaker, instruct=instruct, language=language, voice=voice,
                            non_streaming_mode=non_streaming_mode, sampling=params, max_frames=max_frames,
                            min_frames=min_frames)
        return resolve_mode(self.config, req.validated())

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
    def generate_codes(self, requests: list[SpeechRequest], on_frame=None) -> list[tuple[torch.Tensor, str]]:
        """Codec codes (frames, 16) and finish reason for each request, decoded as one batch.

        on_frame, if given, is called once per decoded frame step (for progress bars).
        """
        plans = self.plans(requests)
        step = self.frame_runner(plans)
        frames: list[list[torch.Tensor]] = [[] for _ in plans]
        reasons = ["length"] * len(plans)
        for events in decode_rows(step, plans, lookahead=True):
            if on_frame is not None:
                on_frame()
            for event in events:
                if event.codes is not None:
                    frames[event.row].append(event.codes)
                else:
                    reasons[event.row] = event.finish_reason
        empty = torch.zeros(0, 16, dtype=torch.long, device=self.device)
        return [(torch.stack(f) if f else empty, r) for f, r in zip(frames, reasons)]

    @torch.no_grad()
    def generate(self, request: SpeechRequest, on_frame=None) -> Speech:
        """The whole utterance at once."""
        (codes, reason), = self.generate_codes([request], on_frame)
        reference = request.voice.reference_codes if request.voice is not None and request.voice.icl else None
        samples = self.decode_codes(codes, reference)
        return Speech(samples=samples, sample_rate=SAMPLE_RATE, codes=codes.cpu(), finish_reason=reason)

    @torch.no_grad()
    def decode_codes(self, codes: torch.Tensor, reference_codes: torch.Tensor | None = None) -> np.ndarray:
        """Waveform of generated codes; an ICL reference is decoded first as context and cut off."""
        self._require_generator()
        if codes.shape[0] == 0:
            return np.zeros(0, dtype=np.float32)
        codes = codes.to(self.device)
        if reference_codes is not None:
            codes = torch.cat([reference_codes.to(self.device), codes])
        wave = self.codec_decoder(codes.clamp(0, self.codec_config.decoder.codebook_size - 1).T.unsqueeze(0))
        wave = wave.reshape(-1).float().cpu().numpy()
        if reference_codes is not None:
            # upstream cuts at a float ratio of the reference length, which can land one sample early
            total = codes.shape[0]
            wave = wave[int(reference_codes.shape[0] / total * wave.shape[0]):]
        return wave

    @torch.no_grad()
    def stream(self, request: SpeechRequest, chunk_frames: tuple[int, ...] = DEFAULT_CHUNK_FRAMES
               ) -> Iterator[np.ndarray]:
        """Audio chunks while frames are generated; chunk k holds chunk_frames[k] frames (the last size repeats).

        The codec decoder keeps its causal state between chunks, so the concatenated chunks equal
        the whole-utterance decode of the same codes. One stream at a time per TTS (it reuses one
        decode row and codec slot); serve concurrent streams with an Engine.
        """
        if not chunk_frames or min(chunk_frames) < 1:
            raise ValueError("chunk_frames must be positive frame counts, e.g. (1, 2, 4, 8)")
        plans = self.plans([request])
        step = self.frame_runner(plans)
        decoder = self.stream_decoder(chunk_frames)
        slot = decoder.allocate()
        if request.voice is not None and request.voice.icl:
            decoder.decode([slot], request.voice.reference_codes.to(self.device).T.unsqueeze(0))
        pending: list[torch.Tensor] = []
        chunk_index = 0
        limit = self.codec_config.decoder.codebook_size - 1
        for events in decode_rows(step, plans, split_first=True):
            pending += [e.codes for e in events if e.codes is not None]
            finished = any(e.codes is None for e in events)
            target = chunk_frames[min(chunk_index, len(chunk_frames) - 1)]
            if pending and (len(pending) >= target or finished):
                codes = torch.stack(pending).clamp(0, limit).T.unsqueeze(0)
                yield decoder.decode([slot], codes, last=finished).reshape(-1).float().cpu().numpy()
                pending, chunk_index = [], chunk_index + 1
        decoder.free(slot)

    def stream_decoder(self, chunk_frames: tuple[int, ...]) -> StreamingCodecDecoder:
        """One persistent single-stream codec decoder, so its CUDA graphs are captured once per chunk size."""
        if self._single_stream is None:
            self._single_stream = StreamingCodecDecoder(self.codec_decoder, max_streams=1,
                                                        use_graphs=self.use_graphs, graph_chunk_frames=())
        self._single_stream.graph_chunk_frames |= set(chunk_frames)
        if self._single_stream.active:  # a stream abandoned mid-way still holds the slot
            self._single_stream.free(0)
        return self._single_stream

    def plans(self, requests: list[SpeechRequest]) -> list[RowPlan]:
        """Prompt, seed and frame cap of each request: what a frame step needs to run it."""
        self._require_generator()
        plans = []
        for req in requests:
            prompt = build_prompt(self.talker, self.config, self.tokenizer, req)
            seed = req.sampling.seed if req.sampling.seed is not None else secrets.randbits(62)
            cap = req.max_frames if req.max_frames is not None else default_frame_cap(req.text)
            plans.append(RowPlan(prompt=prompt, sampling=req.sampling, seed=seed, max_frames=cap,
                                 min_frames=req.min_frames))
        return plans

    def _require_generator(self) -> None:
        if self.talker is None:
            raise RuntimeError("this TTS was loaded with generator=False: it builds requests and voices only")

    def frame_runner(self, plans: list[RowPlan]) -> GraphRunner:
        """A step for these rows; one row reuses a persistent step so its graphs are captured once."""
        for plan in plans:
            room = self.max_len - plan.prompt.prefill.shape[0] - 2
            if room < 1:
                raise InvalidRequestError(f"the prompt ({plan.prompt.prefill.shape[0]} positions) does not fit "
                                          f"max_len={self.max_len}; shorten the text or load with a larger max_len")
            plan.max_frames = min(plan.max_frames, room)
        if len(plans) == 1:
            if self._single_row is None:
                step = FrameStep(self.talker, self.config, rows=1, max_len=self.max_len, max_text=self.max_len,
                                 prefix_cache=self.prefix_cache)
                self._single_row = GraphRunner(step, self.use_graphs)
            return self._single_row
        # every row advances until the last one ends (plus one lookahead frame), so size for the
        # longest prompt and the largest frame cap together
        longest = max(p.prompt.prefill.shape[0] for p in plans) + max(p.max_frames for p in plans)
        max_text = max(max(1, p.prompt.trailing.shape[0]) for p in plans)
        step = FrameStep(self.talker, self.config, rows=len(plans), max_len=longest + 3, max_text=max_text,
                         prefix_cache=self.prefix_cache)
        return GraphRunner(step, use_graphs=False)
