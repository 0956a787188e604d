"""The quantization options at the real 1.7B shape (random weights) on the GPU: gates against bf16, and
generation through the fused kernels and CUDA graphs."""
import json
import os
from pathlib import Path

import pytest
import torch

from qtts.api import TTS
from qtts.engine.planning import plan_request
from qtts.engine.step import PrefillItem
from qtts.models.quantize import quantize_weights
from qtts.testing import quality_gates as gates
from qtts.testing.fixtures import fixture_dir

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

TEXTS = ["The quick brown fox jumps over the lazy dog while the morning sun rises.",
         "Quantized weights should not change what the model says, nor how it sounds.",
         "One, two, three, four, five, six, seven, eight, nine, ten.",
         "She sells sea shells by the sea shore, and the shells she sells are surely sea shells."]
OPTIONS = ("fp8_talker", "fp8_predictor", "kv_int8", "kv_int4")
# Random 1.7B weights give nearly flat next-token distributions, on which no option passes every gate (the table
# in docs/quantization.md); what this shape can guard is that an option gets no worse than measured there:
# (most KL of codebook 0 and the predictor, least top-5 agreement), with a margin over the H200's figures.
BOUNDS_AT_THE_REAL_SHAPE = {"kv_int8": (0.006, 0.85), "fp8_talker": (0.09, 0.5), "fp8_predictor": (0.035, 0.68),
                            "kv_int4": (0.13, 0.42)}


@pytest.fixture(scope="module")
def folder():
    return fixture_dir("custom_voice", "1.7b")


@pytest.fixture(scope="module")
def reference(folder):
    return TTS.from_pretrained(folder, device="cuda", dtype="bf16")


@pytest.fixture(scope="module")
def reference_frames(reference):
    requests = [reference.request(text, speaker="aiden", language="english", seed=i) for i, text in enumerate(TEXTS)]
    return gates.reference_frames(reference, requests, frames=gates.GATE_FRAMES)


@pytest.mark.parametrize("option", OPTIONS)
def test_gates_at_the_real_shape(option, folder, reference, reference_frames):
    kv_cache = option[3:] if option.startswith("kv_") else None
    candidate = reference
    if kv_cache is None:
        candidate = TTS.from_pretrained(folder, device="cuda", dtype="bf16")
        quantize_weights(candidate.talker, talker_fp8=option == "fp8_talker", predictor_fp8=option == "fp8_predictor")
    report = gates.measure_gates(reference, candidate, reference_frames, candidate_kv_cache=kv_cache)
    failures = report.failures(gates.KV_LAYER_COSINE if kv_cache else gates.WEIGHT_LAYER_COSINE)
    figures = {"option": option, "size": "1.7b", **report.as_dict(), "failures": failures}
    print(json.dumps(figures))
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], f"quantization_gates_{option}_1.7b.json").write_text(json.dumps(figures, indent=1))
    assert report.layer_cosine > 0.99 and max(report.codebook0_kl, report.predictor_kl) < 0.1
    most_kl, least_top5 = BOUNDS_AT_THE_REAL_SHAPE[option]
    assert max(report.codebook0_kl, report.predictor_kl) <= most_kl, figures
    assert min(report.codebook0_top5, report.predictor_top5) >= least_top5, figures


def graph_distance(folder, option: str | None) -> float:
    """The first frames of a greedy request through the graphed fused path and through the module path of the same
    option; then one prefill of it on each: the relative distance of the two paths' last hidden states."""
    kv_cache = option[3:] if option and option.startswith("kv_") else None
    hidden = []
    for fast in (True, False):
        tts = TTS.from_pretrained(folder, device="cuda", dtype="bf16", use_graphs=fast, fused_kernels=fast,
                                  fp8_talker=option == "fp8_talker", fp8_predictor=option == "fp8_predictor",
                                  kv_cache=kv_cache)
        request = tts.request(TEXTS[0], speaker="aiden", language="english", greedy=True, max_frames=16)
        for _ in range(3):  # eager warm-up, capture, replay
            speech = tts.generate(request)
        assert speech.codes.shape == (16, 16) and torch.isfinite(torch.from_numpy(speech.samples)).all()
        runner = tts.engine().runner
        plan = plan_request(tts.model, request, tts.max_len)
        runner.prefill_rows(0, [PrefillItem(plan.prompt, plan.sampling, plan.seed, plan.min_frames)])
        hidden.append(runner.state.past_hidden[0].float().clone())
        del tts
        torch.cuda.empty_cache()
    distance = ((hidden[0] - hidden[1]).norm() / hidden[1].norm()).item()
    print(json.dumps({"option": option or "bf16", "graph_vs_module_distance": round(distance, 5)}))
    return distance


@pytest.fixture(scope="module")
def bf16_graph_distance(folder):
    return graph_distance(folder, None)


# At random 1.7B weights the two paths already round apart in plain bf16 (fused kernels, another reduction order,
# 28 layers of nearly flat activations): their hidden states differ by ~5% (0.049 on the H200, unchanged since
# f35fc70). An option's two paths are held to that distance with a margin. The lossy options quantize inputs the
# two paths rounded differently (FP8 activations to 3 mantissa bits in every talker projection; K/V to 16 levels),
# so over 28 layers their paths drift as far apart as the option is from bf16: each is held to that distance,
# sqrt(2 - 2 cos) of its talker output cosine in the gates (FP8 talker 0.956 -> 0.30, measured 0.27; int4 cache
# 0.916 -> 0.41, measured 0.36). Unrelated hidden states would differ by about 1.4.
GRAPH_MARGIN = 1.5
GRAPH_TOLERANCE = {"fp8_talker": 0.35, "kv_int4": 0.45}


@pytest.mark.parametrize("option", OPTIONS)
def test_an_option_speaks_through_graphs_like_its_module_path(option, folder, bf16_graph_distance):
    limit = GRAPH_TOLERANCE.get(option, GRAPH_MARGIN * bf16_graph_distance)
    distance = graph_distance(folder, option)
    assert distance < limit, f"{option}: {distance:.3g} from its module path (bf16: {bf16_graph_distance:.3g})"
