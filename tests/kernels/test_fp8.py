"""FP8 weights and the matmuls over them (CPU runs use the Triton interpreter; gpu tests run the FP8 GEMM)."""
import os

import pytest
import torch
from torch.nn import functional as F

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # before Triton is first imported
pytest.importorskip("triton")

from qtts.kernels import fp8  # noqa: E402
from qtts.kernels.gemv import gemv_fused, gemv_reference, linear  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _cosine(a, b) -> float:
    return F.cosine_similarity(a.float().reshape(-1, a.shape[-1]), b.float().reshape(-1, b.shape[-1])).min().item()


def test_fp8_weights_round_each_entry_to_three_mantissa_bits():
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(64, 96, generator=g) * torch.logspace(-3, 1, 64).unsqueeze(1)  # rows of any scale
    weight[3, 5] = 40.0  # an outlier only widens its own row's scale
    quantized = fp8.Fp8Weight.from_weight(weight)
    assert quantized.data.dtype == torch.float8_e4m3fn and quantized.scale.shape == (64,)
    error = (quantized.dequantize() - weight).abs()
    row_scale = quantized.scale.unsqueeze(1)
    # half a step of 3 mantissa bits, or of the subnormal step 2**-9 below e4m3's smallest normal
    assert (error <= torch.maximum(weight.abs() * 2 ** -4, row_scale * 2 ** -10) * 1.0001).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_row_quantization_kernel_equals_reference(dtype):
    x = (torch.randn(3, 300, generator=torch.Generator().manual_seed(1)) * 5).to(DEVICE, dtype)
    x[1] = 0  # a zero row gets a zero scale, not a division by zero
    out, scale = fp8.quantize_rows_fused(x, block=128)
    ref_out, ref_scale = fp8.quantize_rows_reference(x)
    assert torch.equal(scale, ref_scale) and scale[1].item() == 0
    differ = out.float() != ref_out.float()
    if DEVICE == "cpu":
        # the interpreter's e4m3 cast drops a rounding carry: a value that rounds up to a power of two becomes
        # half of it (the GPU converts in hardware)
        ref_values = ref_out.float()[differ].abs()
        assert torch.equal(ref_values, 2 ** ref_values.log2().round())
        assert torch.equal(out.float()[differ] * 2, ref_out.float()[differ])
    else:
        assert not differ.any()


def test_fp8_linear_keeps_each_output_within_the_format_error():
    g = torch.Generator().manual_seed(2)
    x, weight, bias = torch.randn(5, 2, 128, generator=g), torch.randn(96, 128, generator=g) / 11, torch.randn(96)
    out = fp8.fp8_linear_reference(x, fp8.Fp8Weight.from_weight(weight), bias)
    exact = F.linear(x, weight, bias)
    assert out.shape == exact.shape
    assert _cosine(out - bias, exact - bias) > 0.999  # activations and weights each rounded: ~3-4% noise per output


def test_scaled_mm_path_equals_reference():
    """The FP8 GEMM path's layout (transposed weight, row and column scales) against the reference; on CPU it
    runs where torch has a CPU _scaled_mm."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(7, 256, generator=g).to(DEVICE, torch.bfloat16)
    weight = fp8.Fp8Weight.from_weight((torch.randn(160, 256, generator=g) / 16).to(DEVICE))
    quantize = fp8.quantize_rows_fused if DEVICE == "cuda" else fp8.quantize_rows_reference
    try:
        out = fp8.fp8_linear_scaled_mm(x, weight, quantize_rows=quantize)
    except (RuntimeError, NotImplementedError) as error:
        pytest.skip(f"no _scaled_mm here: {error}")
    ref = fp8.fp8_linear_reference(x, weight)
    assert out.dtype == torch.bfloat16
    assert torch.allclose(out.float(), ref.float(), atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("rows", [1, 2])
@pytest.mark.parametrize("case", ["plain", "bias", "norm_residual_silu"])
def test_gemv_reads_fp8_weights(rows, case):
    g = torch.Generator().manual_seed(5)
    k_dim, n_out = 72, 40
    silu = case.endswith("silu")
    x = torch.randn(rows, k_dim, generator=g).to(DEVICE, torch.bfloat16)
    weight = fp8.Fp8Weight.from_weight((0.2 * torch.randn(2 * n_out if silu else n_out, k_dim, generator=g)).to(DEVICE))
    kwargs = {"silu_mul": silu}
    if case == "bias":
        kwargs["bias"] = torch.randn(n_out, generator=g).to(DEVICE, torch.bfloat16)
    if case.startswith("norm"):
        kwargs.update(norm_weight=(1 + 0.1 * torch.randn(k_dim, generator=g)).to(DEVICE, torch.bfloat16), eps=1e-6,
                      residual=torch.randn(rows, k_dim, generator=g).to(DEVICE, torch.bfloat16))
    out, residual = gemv_fused(x, weight, **kwargs)
    ref_out, ref_residual = gemv_reference(x, weight, **kwargs)
    scale = max(1.0, ref_out.float().abs().max().item())
    assert torch.allclose(out.float(), ref_out.float(), atol=2e-2 * scale, rtol=2e-2)
    assert torch.allclose(residual.float(), ref_residual.float(), atol=2e-2, rtol=2e-2)


def test_linear_dispatches_fp8_weights():
    """Few rows with gemv on: the GEMV (weights only in FP8); otherwise the FP8 matmul (activations too)."""
    g = torch.Generator().manual_seed(6)
    weight = fp8.Fp8Weight.from_weight(torch.randn(48, 64, generator=g).to(DEVICE))
    few, many = torch.randn(2, 64, generator=g).to(DEVICE), torch.randn(5, 64, generator=g).to(DEVICE)
    assert torch.allclose(linear(few, weight), fp8.weight_only_linear_reference(few, weight), atol=1e-4)
    assert torch.equal(linear(many, weight), fp8.fp8_linear(many, weight))
    assert torch.equal(linear(few, weight, gemv=False), fp8.fp8_linear(few, weight))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("rows", [1, 2, 16, 300])
@pytest.mark.parametrize("shape", [(6144, 2048), (2048, 6144), (4096, 1024)])  # talker gate|up, down; predictor qkv
def test_fp8_gemm_on_gpu_matches_reference_at_model_shapes(rows, shape):
    if not fp8.scaled_mm_supported(torch.device("cuda")):
        pytest.skip("no FP8 tensor cores")
    g = torch.Generator().manual_seed(7)
    n_out, k_dim = shape
    x = torch.randn(rows, k_dim, generator=g).to("cuda", torch.bfloat16)
    weight = fp8.Fp8Weight.from_weight((torch.randn(n_out, k_dim, generator=g) / k_dim ** 0.5).cuda())
    out = fp8.fp8_linear(x, weight)
    ref = fp8.fp8_linear_reference(x.float(), weight)
    assert out.dtype == torch.bfloat16
    assert _cosine(out, ref) > 0.9999
    assert _cosine(out, F.linear(x.float(), weight.dequantize())) > 0.999
