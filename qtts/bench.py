"""Single-stream speed: ms per frame, RTF, first (audible) audio latency, memory, bandwidth."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
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


def source_commit() -> str | None:
    """The git commit the results come from: $QTTS_COMMIT (set where the tree is a copy without git), else HEAD."""
    if os.environ.get("QTTS_COMMIT"):
        return os.environ["QTTS_COMMIT"]
    try:
        found = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
                               capture_output=True, text=True, timeout=10)
    except OSError:
        return None
    return found.stdout.strip() or None


def save_results(data: dict, path: str | Path) -> Path:
    """Write benchmark results as JSON, stamped with the commit, the command, the device, the date and a
    digest of the package's source; and a copy into $OUT when a GPU session sets it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    stamp = {"commit": source_commit(), "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
             "device": data.get("device", device), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
             "source_digest": source_digest()}
    text = json.dumps({**data, **stamp}, indent=1)
    path.write_text(text)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], path.name).write_text(text)
    return path


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def _request(tts: TTS, text: str, frames: int | None, voice=None, **kw):
    """A request of the model's mode with exactly `frames` frames (None: until EOS), seed 0 unless given."""
    mode = {"speaker": tts.speakers[0]} if tts.model_type == "custom_voice" else {}
    if tts.model_type == "voice_design":
        mode = {"instruct": "A calm, warm narrator."}
    if tts.model_type == "base":
        mode = {"voice": voice}
    forced = {} if frames is None else {"max_frames": frames, "min_frames": frames}
    return tts.request(text, language="english", **{"seed": 0, **mode, **forced, **kw})


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
    """One request of exactly `frames` frames through the engine, codec included: ms per frame and RTF."""
    request = _request(tts, BENCH_TEXT, frames)
    tts.generate(request)  # warm-up: graph capture, allocator
    times = []
    for _ in range(repeats):
        _sync(tts.device)
        start = time.perf_counter()
        tts.generate(request)
        _sync(tts.device)
        times.append(time.perf_counter() - start)
    total_s = min(times)
    ms_per_frame = 1000 * total_s / frames
    return {"frames": frames, "ms_per_frame": ms_per_frame, "rtf": frames / 12.5 / total_s, "wall_s": total_s,
            "weight_bytes_per_frame": weight_bytes_per_frame(tts),
            "achieved_gb_per_s": weight_bytes_per_frame(tts) / (ms_per_frame / 1000) / 1e9}


def bench_batch(tts: TTS, requests: int, frames: int, repeats: int = 2, voice=None) -> dict:
    """An offline batch through `generate_many`: `requests` texts of exactly `frames` frames each, every
    one decoded to audio; audio seconds made per wall second (best of `repeats`, after a warm-up run).
    voice: the clone voice of a Base model."""
    texts = [f"{BENCH_TEXT} Part {index}." for index in range(requests)]
    batch = [_request(tts, text, frames, voice=voice, seed=index) for index, text in enumerate(texts)]
    for _ in tts.generate_many(batch, max_batch=requests):  # warm-up: graphs of every batch bucket on the way
        pass
    times = []
    for _ in range(repeats):
        _sync(tts.device)
        start = time.perf_counter()
        audio_s = sum(speech.duration_s for _, speech in tts.generate_many(batch, max_batch=requests))
        _sync(tts.device)
        times.append(time.perf_counter() - start)
    wall_s = min(times)
    return {"requests": requests, "frames": frames, "audio_s": audio_s, "wall_s": wall_s,
            "audio_s_per_s": audio_s / wall_s}


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


def run(tts: TTS, frames: int = 250, requests: int = 20,
        schedules: tuple[tuple[int, ...], ...] = ((1, 2, 4, 8, 12), (2, 4, 8), (4,), (8,)),
        on_stage: Callable[[int, int, str], None] | None = None) -> dict:
    """Every measurement; on_stage(done, total, name), if given, is called as each stage starts."""
    stages = len(schedules) + 2
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
    on_stage(stages - 1, stages, "first audio, cold voice prompt")
    result["first_audio"].append(bench_first_audio(tts, schedules[0], requests, cold=True))
    if tts.device.type == "cuda":
        result["peak_memory_gb"] = torch.cuda.max_memory_allocated(tts.device) / 2**30
    return result

