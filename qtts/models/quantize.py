"""FP8 weights for the decoder layers of the talker and of the code predictor, converted in place.

Each layer's seven projections (q, k, v, o, gate, up, down) become Fp8Linear; embeddings, the text
projection, the codec head and the predictor's heads stay as loaded. Quality gates and measured
figures: docs/quantization.md.
"""
from __future__ import annotations

from ..layers.decoder import DecoderStack
from ..layers.linear import Fp8Linear
from .talker import Talker

PROJECTIONS = (("self_attn", "q_proj"), ("self_attn", "k_proj"), ("self_attn", "v_proj"), ("self_attn", "o_proj"),
               ("mlp", "gate_proj"), ("mlp", "up_proj"), ("mlp", "down_proj"))


def quantize_weights(talker: Talker, talker_fp8: bool = False, predictor_fp8: bool = False) -> None:
    """Give the talker's decoder layers (talker_fp8) and/or the code predictor's (predictor_fp8) FP8 weights.

    Call it once the model is on its device and in its dtype (Module.to(dtype) would cast the FP8
    buffers back); a model already fused is fused again over the FP8 weights.
    """
    if talker_fp8:
        quantize_stack(talker.model)
    if predictor_fp8:
        quantize_stack(talker.code_predictor.model)


def quantize_stack(stack: DecoderStack) -> None:
    """Every layer's projections as Fp8Linear (already FP8 ones are kept)."""
    for layer in stack.layers:
        for block_name, name in PROJECTIONS:
            block = getattr(layer, block_name)
            projection = getattr(block, name)
            if not isinstance(projection, Fp8Linear):
                setattr(block, name, Fp8Linear.from_linear(projection))
    if stack.fused:
        stack.fuse(gemv=stack.gemv)
