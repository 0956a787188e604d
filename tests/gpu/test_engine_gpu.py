"""The engine on CUDA: graphs captured at warm-up serve every request, exactly as solo fp32 runs."""
import time

import numpy as np
import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

TEXTS = ["Hello there.", "A somewhat longer sentence to speak aloud.", "Short.", "One two three four five."]


def _sampling(index: int) -> dict:
    """Greedy, the checkpoint's sampling, and top-p: every variant a warm-up must have captured."""
    return ({"greedy": True}, {"seed": index}, {"seed": index, "top_p": 0.8, "subtalker_top_p": 0.9})[index % 3]


def _warm_engine(folder):
    from qtts.api import TTS
    from qtts.engine.engine import Engine

    tts = TTS.from_pretrained(folder, device="cuda", dtype="fp32", max_len=512)
    engine = Engine(tts.model, max_batch=8)
    assert not engine.ready
    engine.warmup()
    assert engine.ready and engine.runner.graphs.graphs and engine.codec._graphs
    return tts, engine


def test_warmed_up_engine_captures_nothing_while_serving_and_matches_solo_runs(tiny_custom_voice, exact_fp32):
    tts, engine = _warm_engine(tiny_custom_voice)
    graphs = len(engine.runner.graphs.graphs)
    engine.start()
    try:
        requests = [tts.request(text, speaker="aiden", max_frames=20, min_frames=20, **_sampling(index))
                    for index, text in enumerate(TEXTS * 2)]
        streams = [engine.submit(request) for request in requests]
        audio = [np.concatenate(list(stream)) for stream in streams]
    finally:
        engine.stop()
    assert engine.stats()["late_graph_captures"] == 0 and len(engine.runner.graphs.graphs) == graphs
    for request, samples in zip(requests, audio):
        solo = tts.generate(request).samples
        assert samples.shape == solo.shape
        assert np.abs(samples - solo).max() < 1e-3


def test_requests_arriving_mid_frame_match_solo_runs(tiny_custom_voice, exact_fp32):
    """Arrivals while a frame runs are prefilled behind it and rows end while others join: every stream
    still equals its solo run."""
    tts, engine = _warm_engine(tiny_custom_voice)
    engine.start()
    frames = [12, 5, 20, 7, 16, 3, 9, 25, 6, 11]
    try:
        requests = [tts.request(TEXTS[index % len(TEXTS)], speaker="aiden", seed=index, max_frames=count,
                                min_frames=count) for index, count in enumerate(frames)]
        streams = []
        for request in requests:
            streams.append(engine.submit(request))
            time.sleep(0.002)
        audio = [np.concatenate(list(stream)) for stream in streams]
    finally:
        engine.stop()
    assert all(stream.finish_reason == "length" for stream in streams)
    assert engine.stats()["late_graph_captures"] == 0
    for request, samples in zip(requests, audio):
        solo = tts.generate(request).samples
        assert samples.shape == solo.shape
        assert np.abs(samples - solo).max() < 1e-3


SERVE_AFTER_WARMUP = r"""
import json, sys, threading, time
import numpy as np
from qtts.api import TTS
from qtts.engine.engine import Engine

tts = TTS.from_pretrained(sys.argv[1], device="cuda", max_len=512)
engine = Engine(tts.model, max_batch=16)
engine.warmup()
engine.start()
texts = ["Hi.", "Hello there, how are you today?", "Numbers: 1, 22, 333.", "A longer sentence, with commas, to speak."]
speakers = sorted(tts.speakers)
streams = []
for index in range(24):  # arrivals alone, in bursts and mid-frame; every sampling variant; lengths 1..40 frames
    sampling = ({"greedy": True}, {"seed": index}, {"seed": index, "top_p": 0.8, "subtalker_top_p": 0.9})[index % 3]
    frames = 1 + (index * 7) % 40
    request = tts.request(texts[index % 4], speaker=speakers[index % len(speakers)], max_frames=frames,
                          min_frames=min(frames, 2), **sampling)
    streams.append(engine.submit(request))
    time.sleep((0.0, 0.003, 0.02)[index % 3])
for stream in streams:
    list(stream)
stats = engine.stats()
engine.stop()
print(json.dumps({key: stats[key] for key in ("late_graph_captures", "late_kernel_compiles", "completed")}))
"""


def test_a_fresh_process_compiles_and_captures_nothing_after_warmup(tiny_custom_voice, tmp_path):
    """A cold server's first requests must not wait for a Triton compile or a graph capture: in a new process
    (nothing compiled in memory yet), warm up, then serve varied requests, and count what was built late."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", SERVE_AFTER_WARMUP, str(tiny_custom_voice)], cwd=root,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    stats = json.loads(done.stdout.strip().splitlines()[-1])
    assert stats["completed"] == 24
    late = [line for line in done.stderr.splitlines() if "after warm-up" in line]
    assert stats["late_graph_captures"] == 0 and stats["late_kernel_compiles"] == 0, "\n".join(late)


@pytest.mark.parametrize("cached_prefix", [False, True])
def test_a_prefill_queues_behind_the_frame_in_flight_without_waiting_for_it(tiny_custom_voice, cached_prefix):
    """An arrival is prefilled while the frame step runs: its prefill must only queue work, never make the host
    wait for the device (a pageable copy, an item() read), or the next frame's launch waits for this one's end."""
    from qtts.engine.planning import plan_request
    from qtts.engine.step import PrefillItem

    tts, engine = _warm_engine(tiny_custom_voice)
    request = tts.request("Hello there, a new arrival.", speaker="aiden", seed=1)
    plans = [plan_request(tts.model, request, engine.max_len) for _ in range(2)]
    items = [PrefillItem(plan.prompt, plan.sampling, plan.seed, plan.min_frames) for plan in plans]
    if cached_prefix:
        engine.runner.prefill_rows(0, items[:1])  # its voice's prefix is now cached: the next one restores it
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        engine.runner.prefill_rows(1, items[1:])
    finally:
        torch.cuda.set_sync_debug_mode(0)
