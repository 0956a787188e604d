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
