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


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_snake_beta_matches_reference_on_a_strided_slice(dtype):
    g = torch.Generator().manual_seed(0)
    # A slice along time, as the transposed convs hand it over; amplitudes up to ~100 stress the sine's range reduction.
    x = (30 * torch.randn(2, 5, 300, generator=g)).to(DEVICE, dtype)[..., 7:290]
    alpha, beta = (0.5 * torch.randn(2, 5, generator=g)).to(DEVICE)
    out = snake_beta_fused(x, alpha, beta, block=128)
    expected = snake_beta_reference(x, alpha, beta)
    if dtype == torch.float32:
        assert torch.allclose(out, expected, atol=2e-5, rtol=1e-6)
    else:  # one bf16 rounding of the same fp32 value, give or take one step
        assert torch.allclose(out.float(), expected.float(), atol=0, rtol=2 ** -7)
