"""The ranges every entry point shares: SpeechRequest.validated refuses what the engine's tensors cannot hold."""
import math

import pytest

from qtts.engine.request import MAX_FRAMES, SamplingParams, SpeechRequest
from qtts.errors import InvalidRequestError

HUGE = [1e308, -1e308, math.inf, -math.inf, math.nan]
OUT_OF_INT64 = [2**63, 2**64, -(2**63) - 1]
BAD_SAMPLING = (
    [("temperature", v) for v in [*HUGE, -0.5]] + [("subtalker_temperature", v) for v in HUGE]
    + [("repetition_penalty", v) for v in [*HUGE, 0.0, 1e300]] + [("top_p", v) for v in [*HUGE, 0.0, 1.5]]
    + [("subtalker_top_p", v) for v in HUGE]
    + [(name, v) for name in ("top_k", "subtalker_top_k", "seed") for v in OUT_OF_INT64] + [("top_k", -1)]
)


@pytest.mark.parametrize("name, value", BAD_SAMPLING)
def test_out_of_range_sampling_is_refused(name, value):
    with pytest.raises(InvalidRequestError, match=name):
        SpeechRequest("Hi.", sampling=SamplingParams(**{name: value})).validated()


@pytest.mark.parametrize("name, value", [("min_frames", v) for v in [*OUT_OF_INT64, -1, MAX_FRAMES + 1]]
                         + [("max_frames", v) for v in [*OUT_OF_INT64, 0, MAX_FRAMES + 1]])
def test_out_of_range_frame_counts_are_refused(name, value):
    with pytest.raises(InvalidRequestError, match=name):
        SpeechRequest("Hi.", **{name: value}).validated()


@pytest.mark.parametrize("field", ["text", "instruct"])
@pytest.mark.parametrize("bad", ["\ud800", "a\udfffb", "\udc00\ud800"])
def test_lone_surrogates_are_refused(field, bad):
    request = SpeechRequest("Hi.", instruct="calm")
    with pytest.raises(InvalidRequestError, match="surrogate"):
        SpeechRequest(**{**request.__dict__, field: bad}).validated()


def test_the_edges_of_each_range_are_accepted():
    params = SamplingParams(temperature=100.0, top_k=2**31 - 1, top_p=1.0, repetition_penalty=100.0,
                            seed=-(2**63), subtalker_temperature=0.0).validated()
    assert params.subtalker_do_sample is False and params.seed == -(2**63)
    request = SpeechRequest("Hi \U0001F600.", min_frames=MAX_FRAMES, max_frames=MAX_FRAMES).validated()
    assert request.sampling == SamplingParams().validated()
