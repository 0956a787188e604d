"""The bias + residual Triton kernel against its PyTorch reference (CPU runs use the Triton interpreter)."""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # before Triton is first imported
pytest.importorskip("triton")

from qtts.kernels.residual import bias_residual_fused, bias_residual_reference  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(1, 2).contiguous().transpose(1, 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_bias_and_residual_are_added_in_one_pass(dtype, channels_last):
    g = torch.Generator().manual_seed(0)
    layout = _channels_last if channels_last else (lambda x: x)
    y = layout(torch.randn(2, 12, 90, generator=g).to(DEVICE, dtype))
    # the residual as the transposed convolutions hand it over: a slice along time
    residual = layout(torch.randn(2, 12, 100, generator=g).to(DEVICE, dtype))[..., 4:94]
    bias = torch.randn(12, generator=g).to(DEVICE, dtype)
    out = bias_residual_fused(y, bias, residual, block=32)
    expected = bias_residual_reference(y.float(), bias.float(), residual.float())
    assert out.dtype == dtype and (out.stride(1) == 1) == channels_last  # dense, in y's layout
    assert (out.transpose(1, 2) if channels_last else out).is_contiguous()
    tolerance = 1e-6 if dtype == torch.float32 else 2 ** -7
    assert torch.allclose(out.float(), expected, atol=tolerance, rtol=tolerance)


def test_mismatched_shapes_are_refused():
    y, residual, bias = torch.zeros(1, 2, 8), torch.zeros(1, 2, 9), torch.zeros(2)
    with pytest.raises(ValueError, match="same shape"):
        bias_residual_fused(y.to(DEVICE), bias.to(DEVICE), residual.to(DEVICE))


def test_offsets_past_two_to_the_31_elements():
    """A whole clip in one pass has C·L past 2**31 per stream (96 channels × 15 min of samples): the
    kernel's offsets must not wrap. Channel rows 2**30 apart in one (untouched, virtual) allocation."""
    stride = 2 ** 30 + 64
    base = torch.empty(2 * stride + 64, dtype=torch.bfloat16, device=DEVICE)
    y = base.as_strided((1, 3, 16), (3 * stride, stride, 1))
    residual = base.as_strided((1, 3, 16), (3 * stride, stride, 1), storage_offset=32)
    g = torch.Generator().manual_seed(3)
    y.copy_(torch.randn(1, 3, 16, generator=g))
    residual.copy_(torch.randn(1, 3, 16, generator=g))
    bias = torch.randn(3, generator=g).to(DEVICE)
    expected = bias_residual_reference(y.float(), bias, residual.float())
    assert torch.allclose(bias_residual_fused(y, bias, residual).float(), expected, atol=2 ** -7, rtol=2 ** -7)
