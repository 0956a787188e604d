"""Graphed prompt prefill (padded row buckets) gives the eager prefill's tokens; CPU stands in for CUDA."""
import torch

from qtts.api import TTS
from qtts.engine import prompt_graphs as prompt_graphs_module
from qtts.engine.prompt_graphs import PromptGraphs, prompt_bucket

TEXT = "Padding rows must never change what the real rows compute."


class _ReplayCallsFunction:
    """Stands in for a captured CUDA graph: replay runs the captured function again."""

    def __init__(self, fn):
        self.fn = fn

    def replay(self):
        self.fn()


def test_prompt_bucket():
    assert [prompt_bucket(n) for n in (1, 2, 3, 5, 8, 9, 100)] == [1, 2, 4, 8, 8, 16, 128]


def test_padded_prompt_rows_give_the_eager_tokens(tiny_custom_voice, monkeypatch):
    monkeypatch.setattr(prompt_graphs_module, "capture_graph", lambda fn, pool: _ReplayCallsFunction(fn))
    plain = TTS.from_pretrained(tiny_custom_voice, device="cpu", dtype="fp32", prefix_cache_mb=0)
    graphed = TTS.from_pretrained(tiny_custom_voice, device="cpu", dtype="fp32")
    for non_streaming in (True, False):
        request = plain.request(TEXT, speaker="aiden", greedy=True, max_frames=12, non_streaming_mode=non_streaming)
        expected = plain.generate(request).codes
        step = graphed.frame_runner(graphed.plans([request])).step
        step.prompt_runner = step.prompt_runner or PromptGraphs(step, pool=None)
        for _ in range(3):  # eager warm-up, capture, replay
            assert torch.equal(graphed.generate(request).codes, expected)
    assert len(step.prompt_runner._graphs) >= 2
