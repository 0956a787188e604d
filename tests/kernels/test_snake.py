"""The SnakeBeta Triton kernel against its PyTorch reference (CPU runs use the Triton interpreter)."""
import os

import pytest
import torch

if not torch.cuda.is_available():
    # Must be set before Triton is first imported; the model code never runs kernels on CPU.
    os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton")

from qtts.kernels.snake import snake_beta_fused, snake_beta_reference, snake_coefficients  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _close(out: torch.Tensor, expected: torch.Tensor) -> bool:
    if out.dtype == torch.float32:
        return torch.allclose(out, expected, atol=2e-5, rtol=1e-6)
    return torch.allclose(out.float(), expected.float(), atol=0, rtol=2 ** -7)  # one bf16 step at most


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(1, 2).contiguous().transpose(1, 2)


def _params(channels: int, seed: int, count: int = 2) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return list((0.5 * torch.randn(count, channels, generator=g)).to(DEVICE))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_snake_beta_matches_reference(dtype, channels_last):
    g = torch.Generator().manual_seed(0)
    # A slice along time, as the transposed convs hand it over; amplitudes up to ~100 stress the sine's range reduction.
    x = (30 * torch.randn(2, 12, 300, generator=g)).to(DEVICE, dtype)
    x = (_channels_last(x) if channels_last else x)[..., 7:290]
    alpha, beta = _params(12, seed=1)
    out = snake_beta_fused(x, *snake_coefficients(alpha, beta), block=128)
    assert _close(out, snake_beta_reference(x, alpha, beta))
    assert (out.stride(1) == 1) == channels_last  # a new output keeps the input's layout


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_a_bias_is_added_before_the_activation(dtype, channels_last):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 6, 70, generator=g).to(DEVICE, dtype)
    x = _channels_last(x) if channels_last else x
    alpha, beta, bias = _params(6, seed=3, count=3)
    expected = snake_beta_reference(x, alpha, beta, bias)
    assert _close(snake_beta_fused(x, *snake_coefficients(alpha, beta), bias=bias, block=32), expected)
    shifted = snake_beta_reference(x.float() + bias[None, :, None], alpha, beta)  # the bias shifts x
    assert torch.allclose(expected.float(), shifted, atol=2e-5 if dtype == torch.float32 else 0.1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_snake_beta_writes_into_a_conv_input_buffer(dtype):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 50, generator=g).to(DEVICE, dtype)
    alpha, beta = _params(4, seed=4)
    buffer = torch.full((2, 4, 56), 7.0, device=DEVICE, dtype=dtype)
    snake_beta_fused(x, *snake_coefficients(alpha, beta), out=buffer[..., 6:], block=16)
    assert (buffer[..., :6] == 7).all()
    assert _close(buffer[..., 6:], snake_beta_reference(x, alpha, beta))


@pytest.mark.parametrize("channels", [24, 7])  # 7: no power-of-two channel tile but 1
def test_snake_beta_writes_into_a_channels_last_conv_input_buffer(channels):
    """The decoder's layout: [history, x] rows of (h + L, C), x a channels-last (B, C, L) view into them."""
    g = torch.Generator().manual_seed(5)
    x = _channels_last(torch.randn(2, channels, 40, generator=g).to(DEVICE))
    alpha, beta, bias = _params(channels, seed=6, count=3)
    rows = torch.full((2, 6 + 40, channels), 7.0, device=DEVICE)
    snake_beta_fused(x, *snake_coefficients(alpha, beta), out=rows.transpose(1, 2)[..., 6:], bias=bias, block=64)
    assert (rows[:, :6] == 7).all()
    assert _close(rows.transpose(1, 2)[..., 6:], snake_beta_reference(x, alpha, beta, bias))


@torch.no_grad()
@pytest.mark.parametrize("channels_last", [False, True])
def test_codec_decoder_with_the_kernel_matches_the_reference(monkeypatch, channels_last):
    from qtts.models import codec_layers
    from qtts.models.conv_layout import tunable_convolutions
    from tests.models.test_codec_decoder import ours_random, random_codes, tiny_config

    decoder = ours_random(tiny_config()).to(DEVICE)
    codes = random_codes(decoder.cfg, 1, 3).to(DEVICE)
    if channels_last:  # as a capture of this call shape that chose channels-last throughout leaves it
        decoder.channels_last_calls.add((1, 3))
        for _, layer in tunable_convolutions(decoder):
            layer.channels_last_shapes |= {(1, length) for length in range(1, 6000)}
    # TF32 convolutions (cuDNN's default) round at 1e-4; the kernel itself is fp32-exact
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(codec_layers, "kernels_enabled", lambda device: False)
    expected = decoder(codes)
    monkeypatch.setattr(codec_layers, "kernels_enabled", lambda device: True)
    assert (decoder(codes) - expected).abs().max() <= 1e-5


def test_offsets_past_two_to_the_31_elements():
    """As the bias + residual kernel's test: channel rows 2**30 apart, so offsets pass 2**31."""
    stride = 2 ** 30 + 64
    base = torch.empty(2 * stride + 32, dtype=torch.bfloat16, device=DEVICE)
    x = base.as_strided((1, 3, 16), (3 * stride, stride, 1))
    x.copy_(torch.randn(1, 3, 16, generator=torch.Generator().manual_seed(4)))
    alpha, beta = _params(3, seed=8)
    assert _close(snake_beta_fused(x, *snake_coefficients(alpha, beta)), snake_beta_reference(x, alpha, beta))
