"""The bias + residual Triton kernel against its PyTorch reference (CPU runs use the Triton interpreter)."""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # before Triton is first imported
pytest.importorskip("triton")

from qtts.kernels.residual import bias_residual_fused, bias_residual_reference  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bias_and_residual_are_added_in_one_pass(dtype):
    g = torch.Generator().manual_seed(0)
    y = torch.randn(2, 5, 90, generator=g).to(DEVICE, dtype)
    # the residual as the transposed convolutions hand it over: a slice along time
    residual = torch.randn(2, 5, 100, generator=g).to(DEVICE, dtype)[..., 4:94]
    bias = torch.randn(5, generator=g).to(DEVICE, dtype)
    out = bias_residual_fused(y, bias, residual, block=32)
    expected = bias_residual_reference(y.float(), bias.float(), residual.float())
    assert out.is_contiguous() and out.dtype == dtype
    tolerance = 1e-6 if dtype == torch.float32 else 2 ** -7
    assert torch.allclose(out.float(), expected, atol=tolerance, rtol=tolerance)


def test_mismatched_shapes_are_refused():
    y, residual, bias = torch.zeros(1, 2, 8), torch.zeros(1, 2, 9), torch.zeros(2)
    with pytest.raises(ValueError, match="same shape"):
        bias_residual_fused(y.to(DEVICE), bias.to(DEVICE), residual.to(DEVICE))
