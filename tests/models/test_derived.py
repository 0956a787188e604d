"""Weights the codec layers derive from their parameters (channels-last conv weights, SnakeBeta's
coefficients): remade when a parameter changes, in the tensors captured CUDA graphs already read."""
import torch

from qtts.kernels.snake import snake_coefficients
from qtts.models.codec_layers import CausalConv1d, SnakeBeta, channels_last_2d, channels_last_weight
from qtts.models.derived import derived


def test_an_in_place_change_is_copied_into_the_same_derived_tensor():
    layer = CausalConv1d(4, 6, 3)
    made = channels_last_weight(layer)
    assert channels_last_weight(layer) is made  # made once
    with torch.no_grad():
        layer.conv.weight.mul_(2)  # e.g. weights reloaded in place after a capture
    again = channels_last_weight(layer)
    assert again is made and torch.equal(again, channels_last_2d(layer.conv.weight.detach()))


def test_a_replaced_parameter_is_derived_again():
    layer = SnakeBeta(5)
    before, _ = derived(layer, layer._coefficients, layer.alpha, layer.beta)
    old_values = before.clone()
    layer.alpha = torch.nn.Parameter(torch.full((5,), 0.5))
    frequency, _ = derived(layer, layer._coefficients, layer.alpha, layer.beta)
    assert frequency is before  # same shape: updated where captured graphs read it
    assert torch.equal(frequency, snake_coefficients(layer.alpha, layer.beta)[0])
    assert not torch.equal(frequency, old_values)


def test_a_layer_made_under_inference_mode_works():
    with torch.inference_mode():  # inference tensors keep no version counter
        layer = SnakeBeta(3).to(torch.float64)
        frequency, magnitude = derived(layer, layer._coefficients, layer.alpha, layer.beta)
        assert derived(layer, layer._coefficients, layer.alpha, layer.beta)[0] is frequency
    assert torch.equal(magnitude, snake_coefficients(layer.alpha, layer.beta)[1])
