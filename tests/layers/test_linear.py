"""FP8 linear layers and the stacked weights of fused projections."""
import os

import pytest
import torch
from torch import nn

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # before Triton is first imported

from qtts.kernels.fp8 import Fp8Weight, fp8_linear_reference  # noqa: E402
from qtts.layers.linear import Fp8Linear, stack_projections  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _linears(*out_features: int, bias: bool = False) -> list[nn.Linear]:
    torch.manual_seed(0)
    return [nn.Linear(32, n, bias=bias).to(DEVICE) for n in out_features]


def test_fp8_linear_computes_the_fp8_matmul_of_its_layer():
    layer, = _linears(24, bias=True)
    converted = Fp8Linear.from_linear(layer)
    x = torch.randn(3, 32, device=DEVICE)
    expected = fp8_linear_reference(x, Fp8Weight.from_weight(layer.weight.detach()), layer.bias)
    assert torch.equal(converted(x), expected)
    assert (converted.in_features, converted.out_features) == (32, 24)
    assert converted.weight_fp8.dtype == torch.float8_e4m3fn and converted.weight_fp8.element_size() == 1
    assert "weight_fp8" in converted.state_dict() and not converted.weight_fp8.requires_grad


@pytest.mark.parametrize("fp8", [False, True])
def test_stacked_projections_share_their_storage(fp8):
    layers = _linears(16, 8, 8)
    if fp8:
        layers = [Fp8Linear.from_linear(layer) for layer in layers]
    originals = [layer.weight for layer in layers]
    stacked = stack_projections(layers)
    assert stacked.shape == (32, 32)
    for layer, original, start in zip(layers, originals, (0, 16, 24)):
        weight = layer.weight
        if fp8:
            assert weight.data.data_ptr() == stacked.data[start].data_ptr()
            assert torch.equal(weight.data.float(), original.data.float())
            assert torch.equal(weight.scale, original.scale)
        else:
            assert weight.data_ptr() == stacked[start].data_ptr() and torch.equal(weight, original)


@pytest.mark.parametrize("gemv", [False, True])
def test_fused_decode_stack_with_fp8_weights_matches_its_module_path(gemv):
    """The kernels read FP8 weights as the modules do: the FP8 matmul (exactly), or the FP8 GEMV of one or two
    rows (weights only in FP8, so closer to the unquantized stack than the matmul)."""
    pytest.importorskip("triton")
    from qtts.config import DecoderLayerConfig
    from qtts.layers.attention import CacheView, KVCache
    from qtts.layers.decoder import DecoderStack
    from qtts.models.quantize import quantize_stack

    cfg = DecoderLayerConfig(hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2,
                             head_dim=16, rms_norm_eps=1e-6, rope_theta=1e6)
    torch.manual_seed(0)
    stack = DecoderStack(cfg).to(DEVICE)
    for p in stack.parameters():
        p.data.normal_(0, 0.3)
    g = torch.Generator().manual_seed(1)
    step_input = torch.randn(2, 1, 32, generator=g).to(DEVICE)
    positions = torch.tensor([[0], [0]], device=DEVICE)

    def run() -> torch.Tensor:
        cache = KVCache(2, 2, 2, 4, 16, DEVICE, torch.float32)
        return stack(step_input, positions, CacheView.causal(cache, positions, 1))

    plain = run()
    quantize_stack(stack)
    eager = run()
    stack.fuse(gemv)
    fused = run()
    if gemv:
        closeness = torch.nn.functional.cosine_similarity
        assert (closeness(fused, plain, dim=-1) > closeness(eager, plain, dim=-1)).all()
    else:
        assert torch.allclose(fused, eager, atol=1e-5)
