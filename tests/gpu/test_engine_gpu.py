"""The engine on CUDA: graphs captured at warm-up serve requests exactly as solo fp32 runs."""
import numpy as np
import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

TEXTS = ["Hello there.", "A somewhat longer sentence to speak aloud.", "Short.", "One two three four five."]


def test_warmed_up_engine_matches_solo_runs(tiny_custom_voice, exact_fp32):
    from qtts.api import TTS
    from qtts.engine.engine import Engine

    tts = TTS.from_pretrained(tiny_custom_voice, device="cuda", dtype="fp32", max_len=512)
    engine = Engine(tts, max_batch=8, max_len=512)
    engine.warmup(max_attend=256)
    graphs_after_warmup = len(engine.runner._graphs)
    assert graphs_after_warmup > 0 and engine.codec._graphs
    engine.start()
    try:
        # the checkpoint's default sampling: the flags the warm-up captured graphs for
        requests = [tts.request(text, speaker="aiden", seed=index, max_frames=20, min_frames=20)
                    for index, text in enumerate(TEXTS)]
        streams = [engine.submit(request) for request in requests]
        audio = [np.concatenate(list(stream)) for stream in streams]
    finally:
        engine.stop()
    for request, samples in zip(requests, audio):
        solo = tts.generate(request).samples
        assert samples.shape == solo.shape
        assert np.abs(samples - solo).max() < 1e-3
    assert len(engine.runner._graphs) == graphs_after_warmup  # nothing was captured while serving


@pytest.mark.parametrize("concurrent_prefill", [False, True], ids=["prefill behind the frame", "prefill alongside"])
def test_requests_arriving_mid_frame_match_solo_runs(tiny_custom_voice, exact_fp32, concurrent_prefill):
    """Arrivals while a frame runs are prefilled behind it (or alongside it, on a stream of their own) and
    rows end while others join: every stream still equals its solo run."""
    import time

    from qtts.api import TTS
    from qtts.engine.engine import Engine

    tts = TTS.from_pretrained(tiny_custom_voice, device="cuda", dtype="fp32", max_len=512)
    engine = Engine(tts, max_batch=8, max_len=512, concurrent_prefill=concurrent_prefill)
    assert engine.concurrent_prefill == concurrent_prefill
    engine.warmup(max_attend=256)
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
    for request, samples in zip(requests, audio):
        solo = tts.generate(request).samples
        assert samples.shape == solo.shape
        assert np.abs(samples - solo).max() < 1e-3
