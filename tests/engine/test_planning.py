"""Planning helpers: the warm-up requests a GPU engine serves before it says ready."""
import pytest

from qtts.api import TTS
from qtts.engine.engine import Engine
from qtts.engine.planning import warm_requests


@pytest.mark.parametrize("kind", ["tiny_custom_voice", "tiny_voice_design", "tiny_base"])
def test_warm_up_requests_cover_the_model_kind_and_each_serves(kind, request):
    tts = TTS.from_pretrained(request.getfixturevalue(kind), device="cpu")
    requests = warm_requests(tts.model)
    sampled = {(r.sampling.do_sample, r.sampling.top_p < 1) for r in requests}
    assert sampled == {(False, False), (True, False), (True, True)}
    assert any(r.text_open for r in requests)
    if tts.model_type == "base":
        assert {r.voice.icl for r in requests} == {True, False}

    engine = Engine(tts.model, max_batch=4)
    streams = []
    for warm in requests:
        streams.append(engine.submit(warm))
        if warm.text_open:
            engine.step()
            streams[-1].append_text(" there.")
            streams[-1].end_text()
    while engine.step():
        pass
    assert all(s.finish_reason == "length" and 3 <= s.frames <= 4 for s in streams)
