"""The SnakeBeta Triton kernel against its PyTorch reference (CPU runs use the Triton interpreter)."""
import os

import pytest
import torch

if not torch.cuda.is_available():
    # Must be set before Triton is first imported; the model code never runs kernels on CPU.
    os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton")

from qtts.kernels.snake import snake_beta_fused, snake_beta_reference  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _close(out: torch.Tensor, expected: torch.Tensor) -> bool:
    if out.dtype == torch.float32:
        return torch.allclose(out, expected, atol=2e-5, rtol=1e-6)
    return torch.allclose(out.float(), expected.float(), atol=0, rtol=2 ** -7)  # one bf16 step at most


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_snake_beta_matches_reference(dtype):
    g = torch.Generator().manual_seed(0)
    # A slice along time, as the transposed convs hand it over; amplitudes up to ~100 stress the sine's range reduction.
    x = (30 * torch.randn(2, 5, 300, generator=g)).to(DEVICE, dtype)[..., 7:290]
    alpha, beta = (0.5 * torch.randn(2, 5, generator=g)).to(DEVICE)
    assert _close(snake_beta_fused(x, alpha, beta, block=128), snake_beta_reference(x, alpha, beta))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_bias_is_added_before_the_activation(dtype):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 6, 70, generator=g).to(DEVICE, dtype)
    alpha, beta, bias = (0.5 * torch.randn(3, 6, generator=g)).to(DEVICE)
    expected = snake_beta_reference(x, alpha, beta, bias)
    assert _close(snake_beta_fused(x, alpha, beta, bias=bias, block=32), expected)
    shifted = snake_beta_reference(x.float() + bias[None, :, None], alpha, beta)  # the bias shifts x
    assert torch.allclose(expected.float(), shifted, atol=2e-5 if dtype == torch.float32 else 0.1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_snake_beta_writes_into_a_conv_input_buffer(dtype):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 50, generator=g).to(DEVICE, dtype)
    alpha, beta = (0.5 * torch.randn(2, 4, generator=g)).to(DEVICE)
    buffer = torch.full((2, 4, 56), 7.0, device=DEVICE, dtype=dtype)
    snake_beta_fused(x, alpha, beta, out=buffer[..., 6:], block=16)
    assert (buffer[..., :6] == 7).all()
    assert _close(buffer[..., 6:], snake_beta_reference(x, alpha, beta))


@torch.no_grad()
def test_codec_decoder_with_the_kernel_matches_the_reference(monkeypatch):
    from qtts.models import codec_layers
    from tests.models.test_codec_decoder import ours_random, random_codes, tiny_config

    decoder = ours_random(tiny_config()).to(DEVICE)
    codes = random_codes(decoder.cfg, 1, 3).to(DEVICE)
    # TF32 convolutions (cuDNN's default) round at 1e-4; the kernel itself is fp32-exact
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(codec_layers, "kernels_enabled", lambda device: False)
    expected = decoder(codes)
    monkeypatch.setattr(codec_layers, "kernels_enabled", lambda device: True)
    assert (decoder(codes) - expected).abs().max() <= 1e-5
