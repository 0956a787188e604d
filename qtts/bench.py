"""Single-stream speed: ms per frame, RTF, first (audible) audio latency, memory, bandwidth."""
from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .api import TTS

BENCH_TEXT = ("The quick brown fox jumps over the lazy dog while the morning sun rises slowly over the quiet hills, "
              "and the people of the village begin another ordinary day.")
SHORT_TEXT = "Hello, how are you today?"
AUDIBLE_THRESHOLD = 1e-3  # first sample above this magnitude counts as audible


def source_digest() -> str:
    """A short hash of the package's source files: which code produced a result, also in a copy of the
    tree whose git metadata is stale (as on the GPU machine)."""
    digest = hashlib.sha256()
    package = Path(__file__).parent
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def save_results(data: dict, path: str | Path) -> Path:
    """Write benchmark results as JSON (stamped with source_digest), and a copy into $OUT when a GPU
    session sets it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({**data, "source_digest": source_digest()}, indent=1)
    path.write_text(text)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], path.name).write_text(text)
    return path


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def _request(tts: TTS, text: str, frames: int | None, **kw):
    mode = {"speaker": tts.speakers[0]} if tts.model_type == "custom_voice" else {}
    if tts.model_type == "voice_design":
        mode = {"instruct": "A calm, warm narrator."}
    forced = {} if frames is None else {"max_frames": frames, "min_frames": frames}
    return tts.request(text, language="english", seed=0, **mode, **forced, **kw)


def weight_bytes_per_frame(tts: TTS) -> int:
    """Bytes of weights one frame reads: the talker layers + head once, the predictor 15 times."""
    talker = tts.talker
    size = lambda module: sum(p.numel() * p.element_size() for p in module.parameters())  # noqa: E731
    layers = size(talker.model.layers) + size(talker.codec_head)
    predictor = talker.code_predictor
    per_step = size(predictor.model.layers) + size(predictor.small_to_mtp_projection)
    heads = size(predictor.lm_head)
    return layers + predictor.num_steps * per_step + heads


def bench_throughput(tts: TTS, frames: int, repeats: int = 3) -> dict:
    """Whole-clip generation of exactly `frames` frames, codec decode included."""
    request = _request(tts, BENCH_TEXT, frames)
    tts.generate(request)  # warm-up: graph capture, allocator
    results = []
    for _ in range(repeats):
        _sync(tts.device)
        start = time.perf_counter()
        (codes, _), = tts.generate_codes([request])
        _sync(tts.device)
        loop_s = time.perf_counter() - start
        tts.decode_codes(codes)
        _sync(tts.device)
        results.append((loop_s, time.perf_counter() - start))
    loop_s, total_s = min(results)
    audio_s = frames / 12.5
    ms_per_frame = 1000 * loop_s / frames
    return {"frames": frames, "ms_per_frame": ms_per_frame, "rtf": audio_s / total_s,
            "rtf_codes_only": audio_s / loop_s, "wall_s": total_s,
            "weight_bytes_per_frame": weight_bytes_per_frame(tts),
            "achieved_gb_per_s": weight_bytes_per_frame(tts) / (ms_per_frame / 1000) / 1e9}


def bench_first_audio(tts: TTS, chunk_frames: tuple[int, ...], requests: int, frames: int = 25,
                      cold: bool = False) -> dict:
    """Latency from the API call to the first chunk and to the first audible sample.

    cold: empty the prompt-prefix cache before each request, so the voice prompt is prefilled anew.
    """
    first, audible = [], []
    for index in range(requests + 2):
        request = _request(tts, SHORT_TEXT, frames)
        if cold and tts.prefix_cache is not None:
            tts.prefix_cache.clear()
        _sync(tts.device)
        start = time.perf_counter()
        first_at = audible_at = None
        for chunk in tts.stream(request, chunk_frames=chunk_frames):
            now = time.perf_counter()
            first_at = first_at if first_at is not None else now
            if audible_at is None and np.abs(chunk).max(initial=0) > AUDIBLE_THRESHOLD:
                audible_at = now
        if index >= 2:  # the first two are warm-up
            first.append(1000 * (first_at - start))
            audible.append(1000 * ((audible_at or time.perf_counter()) - start))
    return {"chunk_frames": list(chunk_frames), "requests": requests, "voice_prompt": "cold" if cold else "cached",
            "first_audio_ms": {"p50": percentile(first, 50), "p95": percentile(first, 95), "min": min(first)},
            "first_audible_ms": {"p50": percentile(audible, 50), "p95": percentile(audible, 95),
                                 "min": min(audible)}}


def first_audio_breakdown(tts: TTS, repeats: int = 10) -> dict:
    """Median ms of each stage before the first 1-frame chunk, as TTS.stream runs them: prompt, prefill,
    the first frame's code predictor half (the talker's half runs after the chunk), codec."""
    stages: dict[str, list[float]] = {"prompt_ms": [], "prefill_ms": [], "first_frame_ms": [], "codec_ms": []}
    for index in range(repeats + 2):
        request = _request(tts, SHORT_TEXT, 25)

        def mark() -> None:
            _sync(tts.device)
            marks.append(time.perf_counter())

        _sync(tts.device)
        marks = [time.perf_counter()]
        plan, = tts.plans([request])
        mark()
        runner = tts.frame_runner([plan])
        runner.prefill(0, plan.prompt, plan.sampling, plan.seed, plan.min_frames)
        mark()
        codes = runner.predict_frame(1)
        mark()
        decoder = tts.stream_decoder((1,))
        slot = decoder.allocate()
        decoder.decode([slot], codes[:1].unsqueeze(-1))
        decoder.free(slot)
        mark()
        if index >= 2:
            for name, start, end in zip(stages, marks, marks[1:]):
                stages[name].append(1000 * (end - start))
    return {name: percentile(values, 50) for name, values in stages.items()}


def run(tts: TTS, frames: int = 250, requests: int = 20,
        schedules: tuple[tuple[int, ...], ...] = ((1, 2, 4, 8, 12), (2, 4, 8), (4,), (8,)),
        on_stage: Callable[[int, int, str], None] | None = None) -> dict:
    """Every measurement; on_stage(done, total, name), if given, is called as each stage starts."""
    stages = len(schedules) + 3
    on_stage = on_stage or (lambda done, total, name: None)
    if tts.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(tts.device)
    on_stage(0, stages, "throughput")
    result = {"device": torch.cuda.get_device_name(tts.device) if tts.device.type == "cuda" else "cpu",
              "dtype": str(tts.dtype).replace("torch.", ""), "graphs": tts.use_graphs,
              "model_type": tts.model_type, "hidden": tts.config.talker.hidden_size,
              "throughput": bench_throughput(tts, frames)}
    result["first_audio"] = []
    for index, schedule in enumerate(schedules):
        on_stage(1 + index, stages, f"first audio, chunks {schedule}")
        result["first_audio"].append(bench_first_audio(tts, schedule, requests))
    on_stage(stages - 2, stages, "first audio, cold voice prompt")
    result["first_audio"].append(bench_first_audio(tts, schedules[0], requests, cold=True))
    on_stage(stages - 1, stages, "first audio breakdown")
    result["first_audio_breakdown"] = first_audio_breakdown(tts)
    if tts.device.type == "cuda":
        result["peak_memory_gb"] = torch.cuda.max_memory_allocated(tts.device) / 2**30
    return result

