"""The frame loop: lookahead and an early first frame change when frames are read, never what they are."""
import pytest
import torch

from qtts.api import TTS
from qtts.engine.generate import decode_rows
from qtts.engine.runner import GraphRunner
from qtts.engine.step import FrameStep

TEXTS = ["Hello there.", "A somewhat longer sentence to speak aloud."]


@pytest.fixture(scope="module")
def tts(tiny_custom_voice):
    return TTS.from_pretrained(tiny_custom_voice, device="cpu")


def _frames(tts, requests, **options):
    plans = tts.plans(requests)
    step = GraphRunner(FrameStep(tts.talker, tts.config, rows=len(plans), max_len=256, max_text=256), False)
    frames = {row: [] for row in range(len(plans))}
    ends = {}
    for events in decode_rows(step, plans, **options):
        for event in events:
            if event.codes is None:
                ends[event.row] = event.finish_reason
            else:
                frames[event.row].append(event.codes.clone())
    return {row: torch.stack(codes) for row, codes in frames.items()}, ends


@pytest.mark.parametrize("options", [{"lookahead": True}, {"split_first": True}])
@pytest.mark.parametrize("sampled", [False, True], ids=["greedy", "seeded sampling"])
def test_the_loop_variants_produce_the_same_frames(tts, options, sampled):
    sampling = {"seed": 7} if sampled else {"greedy": True}
    requests = [tts.request(text, speaker=tts.speakers[0], max_frames=frames, **sampling)
                for text, frames in zip(TEXTS, (6, 9))]
    plain_frames, plain_ends = _frames(tts, requests)
    frames, ends = _frames(tts, requests, **options)
    assert ends == plain_ends
    for row in plain_frames:
        assert torch.equal(frames[row], plain_frames[row])
