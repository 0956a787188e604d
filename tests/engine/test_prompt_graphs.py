"""Graphed prompt prefill (padded row buckets) gives the eager prefill's tokens; CPU stands in for CUDA."""
import torch

from qtts import graphs as graphs_module
from qtts.api import TTS
from qtts.engine.prompt_graphs import PromptGraphs
from qtts.engine.step import FrameStep
from qtts.graphs import GraphCache

TEXT = "Padding rows must never change what the real rows compute."


class _ReplayCallsFunction:
    """Stands in for a captured CUDA graph: replay runs the captured function again."""

    def __init__(self, fn):
        self.fn = fn

    def replay(self):
        self.fn()


def _graphs_on_cpu(monkeypatch) -> GraphCache:
    monkeypatch.setattr(graphs_module, "capture_graph", lambda fn, pool, stream=None: _ReplayCallsFunction(fn))
    return GraphCache(torch.device("cpu"))


def test_padded_prompt_rows_give_the_eager_tokens(tiny_custom_voice, monkeypatch):
    plain = TTS.from_pretrained(tiny_custom_voice, device="cpu", dtype="fp32", prefix_cache_mb=0)
    graphed = TTS.from_pretrained(tiny_custom_voice, device="cpu", dtype="fp32")
    graphs = _graphs_on_cpu(monkeypatch)
    step = graphed.engine().runner.step
    step.prompt_runner = PromptGraphs(step, graphs)
    for non_streaming in (True, False):
        request = plain.request(TEXT, speaker="aiden", greedy=True, max_frames=12, non_streaming_mode=non_streaming)
        expected = plain.generate(request).codes
        for _ in range(3):  # eager warm-up, capture, replay
            assert torch.equal(graphed.generate(request).codes, expected)
    assert len(graphs.graphs) >= 2


def test_two_prompts_in_one_call_match_each_alone(tiny_custom_voice, monkeypatch):
    """The engine's prefills of one iteration share a call: different lengths and starts, each in its slot."""
    tts = TTS.from_pretrained(tiny_custom_voice, device="cpu", dtype="fp32", prefix_cache_mb=0)
    step = FrameStep(tts.talker, tts.config, rows=3, max_len=256, max_text=256)
    hidden = tts.config.talker.hidden_size
    g = torch.Generator().manual_seed(0)
    parts = [(torch.randn(11, hidden, generator=g), 0), (torch.randn(5, hidden, generator=g), 7)]
    for slot, (_, start) in zip((1, 2), parts):  # the second starts after 7 positions already cached
        if start:
            step.prompt_rows_eager(slot, torch.randn(start, hidden, generator=g), 0)
    alone = [step.prompt_rows_eager(slot, rows, start)[0, -1] for slot, (rows, start) in zip((1, 2), parts)]
    cache_alone = [k[1:3].clone() for k in step.cache.keys]
    graphs = _graphs_on_cpu(monkeypatch)
    runner = PromptGraphs(step, graphs)
    for _ in range(3):  # eager warm-up, capture, replay
        for cache in step.cache.keys + step.cache.values:  # what the call must write, cleared first
            cache[1].zero_()
            cache[2, :, 7:].zero_()
        together = runner(1, parts)
        assert torch.allclose(together, torch.stack(alone), atol=1e-5)
    assert list(graphs.graphs) == [("prompt", 2, 16, 64)]
    for cached, keys in zip(cache_alone, step.cache.keys):  # the real positions hold the same keys
        assert torch.allclose(keys[1, :, :11], cached[0, :, :11], atol=1e-5)
        assert torch.allclose(keys[2, :, :12], cached[1, :, :12], atol=1e-5)
