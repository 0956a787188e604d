"""quantize_weights: which projections become FP8, and a model that still speaks."""
import torch
from torch import nn

from qtts.api import TTS
from qtts.layers.linear import Fp8Linear
from qtts.models.quantize import PROJECTIONS, quantize_weights


def _fp8_projections(stack) -> list[bool]:
    return [isinstance(getattr(getattr(layer, block), name), Fp8Linear)
            for layer in stack.layers for block, name in PROJECTIONS]


def test_each_flag_converts_only_its_stacks_projections(tiny_custom_voice):
    for talker_fp8, predictor_fp8 in ((True, False), (False, True)):
        tts = TTS.from_pretrained(tiny_custom_voice, device="cpu", dtype="fp32")
        quantize_weights(tts.talker, talker_fp8=talker_fp8, predictor_fp8=predictor_fp8)
        talker, predictor = tts.talker.model, tts.talker.code_predictor.model
        assert _fp8_projections(talker) == [talker_fp8] * 7 * len(talker.layers)
        assert _fp8_projections(predictor) == [predictor_fp8] * 7 * len(predictor.layers)
        # heads, embeddings and the text projection stay as loaded
        assert isinstance(tts.talker.codec_head, nn.Linear)
        assert all(isinstance(head, nn.Linear) for head in tts.talker.code_predictor.lm_head)


def test_an_fp8_model_speaks_and_its_weights_shrink(tiny_custom_voice):
    tts = TTS.from_pretrained(tiny_custom_voice, device="cpu", dtype="fp32")
    layers = tts.talker.model.layers
    before = sum(t.numel() * t.element_size() for t in layers.state_dict().values())
    quantize_weights(tts.talker, talker_fp8=True, predictor_fp8=True)
    after = sum(t.numel() * t.element_size() for t in layers.state_dict().values())
    assert after < 0.3 * before  # fp32 -> one byte per weight, plus a scale per row
    speech = tts.generate(tts.request("Hello there.", speaker=tts.speakers[0], seed=0, max_frames=5))
    assert speech.codes.shape[1] == 16 and 1 <= speech.codes.shape[0] <= 5
    assert torch.isfinite(torch.from_numpy(speech.samples)).all()


def test_a_fused_model_is_fused_again_over_fp8_weights(tiny_custom_voice):
    tts = TTS.from_pretrained(tiny_custom_voice, device="cpu", dtype="fp32")
    stack = tts.talker.model
    stack.fuse()
    quantize_weights(tts.talker, talker_fp8=True)
    attention = stack.layers[0].self_attn
    assert attention.qkv_weight.data.data_ptr() == attention.q_proj.weight_fp8.data_ptr()
    assert stack.layers[0].mlp.gate_up_weight.data.dtype == torch.float8_e4m3fn
