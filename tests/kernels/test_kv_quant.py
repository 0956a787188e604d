"""Quantized KV-cache rows (int8, int4): the formats, and the kernels that write and read them against
their references (CPU runs use the Triton interpreter)."""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # before Triton is first imported
pytest.importorskip("triton")

from qtts.kernels import kv_quant  # noqa: E402
from qtts.kernels.attention import decode_attention_fused, decode_attention_reference  # noqa: E402
from qtts.kernels.rope import qk_norm_rope_fused, qk_norm_rope_reference  # noqa: E402
from qtts.layers.attention import CacheView, KVCache  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
FORMATS = ["int8", "int4"]


def _cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1)


def _vectors(*shape, seed=0) -> torch.Tensor:
    """Key-like vectors: a few channels much larger than the rest (what the int4 rotation is for)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g)
    x[..., :2] *= 8
    return x


def test_int8_rows_round_to_within_half_a_step():
    x = _vectors(50, 64)
    rows = kv_quant.quantize_int8(x)
    assert rows.dtype == torch.int8 and rows.shape == (50, 64 + kv_quant.SCALE_BYTES)
    step = x.abs().amax(-1, keepdim=True) / 127
    assert ((kv_quant.dequantize_int8(rows) - x).abs() <= step / 2 + 1e-6).all()
    assert torch.equal(kv_quant.dequantize_int8(kv_quant.quantize_int8(torch.zeros(3, 64))), torch.zeros(3, 64))


def test_int4_rows_keep_direction_despite_outlier_channels():
    x = _vectors(400, 128)
    rotation = kv_quant.rotation_matrix(128)
    assert torch.allclose(rotation @ rotation.T, torch.eye(128), atol=1e-5)
    rows = kv_quant.quantize_int4(x, rotation)
    assert rows.dtype == torch.uint8 and rows.shape == (400, 64 + kv_quant.SCALE_BYTES)
    back = kv_quant.dequantize_int4(rows, rotation)
    assert _cosines(back, x).mean() > 0.99  # Lloyd-Max 4-bit: relative MSE 0.0095
    assert torch.allclose(back.norm(dim=-1), x.norm(dim=-1), rtol=0.03)
    # without the rotation, 4 bits per coordinate lose the small channels to the outliers' scale
    unrotated = kv_quant.dequantize_int4(kv_quant.quantize_int4(x, torch.eye(128)), torch.eye(128))
    assert _cosines(unrotated, x).mean() < _cosines(back, x).mean()


@pytest.mark.parametrize("kv_format", FORMATS)
def test_copying_cache_positions_carries_their_scales(kv_format):
    """Slot moves and prompt-prefix entries copy position slices; the scales ride inside the rows."""
    cache = KVCache(1, 2, 2, 8, 16, "cpu", torch.float32, quantization=kv_format)
    k, v = _vectors(1, 2, 5, 16, seed=1), _vectors(1, 2, 5, 16, seed=2)
    positions = torch.arange(5).unsqueeze(0)
    view = CacheView.causal(cache, positions, 5)
    keys, values = view.update(0, k, v)
    assert _cosines(keys, k).min() > 0.98 and _cosines(values, v).min() > 0.98
    cache.copy_slot(0, 1, 5)
    moved = CacheView.causal(cache, positions, 5, rows_slots=torch.tensor([1]))
    assert torch.equal(cache.load(cache.keys[0][1:2, :, :5]), keys)
    assert torch.equal(moved.cache.load(cache.values[0][1:2, :, :5]), values)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kv_format", FORMATS)
def test_qk_norm_rope_writes_quantized_rows(dtype, kv_format):
    g = torch.Generator().manual_seed(1)
    batch, heads, kv_heads, dim, max_len = 3, 4, 2, 16, 10
    qkv = torch.randn(batch, (heads + 2 * kv_heads) * dim, generator=g).to(DEVICE, dtype)
    qw, kw = (1 + 0.1 * torch.randn(2, dim, generator=g)).to(DEVICE, dtype)
    positions = torch.tensor([0, 5, 9], device=DEVICE)
    slots = torch.tensor([2, 0, 1], device=DEVICE)
    angles = positions.float().unsqueeze(1) * torch.linspace(0.01, 1, dim // 2, device=DEVICE)
    cos, sin = torch.cat([angles, angles], -1).cos().to(dtype), torch.cat([angles, angles], -1).sin().to(dtype)
    caches = [KVCache(1, batch, kv_heads, max_len, dim, DEVICE, dtype, quantization=kv_format) for _ in range(2)]
    tables = dict(rotation=caches[0].rotation, codebook=caches[0].codebook)
    q = qk_norm_rope_fused(qkv, qw, kw, cos, sin, positions, caches[0].keys[0], caches[0].values[0], 1e-6,
                           heads, kv_heads, slots, **tables)
    ref_q = qk_norm_rope_reference(qkv, qw, kw, cos, sin, positions, caches[1].keys[0], caches[1].values[0], 1e-6,
                                   heads, kv_heads, slots, rotation=caches[1].rotation)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert torch.allclose(q.float(), ref_q.float(), atol=tol, rtol=tol)
    for fused, ref in ((caches[0].keys[0], caches[1].keys[0]), (caches[0].values[0], caches[1].values[0])):
        written = fused[slots, :, positions]
        assert written.abs().sum() > 0
        # a rounding step apart at most: a coordinate on a rounding boundary may land on either side
        close = _cosines(caches[0].load(written), caches[1].load(ref[slots, :, positions]))
        assert close.min() > (0.999 if kv_format == "int8" else 0.99)
        if dtype == torch.float32 and kv_format == "int8":
            assert torch.equal(written, ref[slots, :, positions])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kv_format, dot", [("int8", None), ("int8", True), ("int4", None)])  # int4: its own kernel
@pytest.mark.parametrize("slots", [None, [2, 0, 2]])
def test_decode_attention_over_quantized_rows(dtype, kv_format, dot, slots):
    g = torch.Generator().manual_seed(2)
    batch, heads, kv_heads, dim, max_len = 3, 4, 2, 16, 80
    cache = KVCache(1, batch, kv_heads, max_len, dim, DEVICE, dtype, quantization=kv_format)
    cache.keys[0].copy_(cache.store(_vectors(batch, kv_heads, max_len, dim, seed=3).to(DEVICE, dtype)))
    cache.values[0].copy_(cache.store(_vectors(batch, kv_heads, max_len, dim, seed=4).to(DEVICE, dtype)))
    q = torch.randn(batch, heads, dim, generator=g).to(DEVICE, dtype)
    positions = torch.tensor([0, 40, 79], device=DEVICE)
    slots = None if slots is None else torch.tensor(slots, device=DEVICE)
    rotated_q = q if kv_format == "int8" else (q.float() @ cache.rotation.T).to(dtype)
    out = decode_attention_fused(rotated_q, cache.keys[0], cache.values[0], positions, slots, block_n=16,
                                 rotation=cache.rotation, codebook=cache.codebook, dot=dot)
    ref = decode_attention_reference(q, cache.keys[0], cache.values[0], positions, slots, rotation=cache.rotation)
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    assert torch.allclose(out.float(), ref.float(), atol=tol, rtol=tol)


@pytest.mark.parametrize("kv_format", FORMATS)
def test_fused_decode_stack_over_a_quantized_cache_matches_eager(kv_format):
    """Prompt into a slot, then a decode step: the kernels and the module path read the same quantized
    cache the same way."""
    from qtts.config import DecoderLayerConfig
    from qtts.layers.decoder import DecoderStack

    cfg = DecoderLayerConfig(hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2,
                             head_dim=16, rms_norm_eps=1e-6, rope_theta=1e6)
    torch.manual_seed(0)
    stack = DecoderStack(cfg).to(DEVICE)
    for p in stack.parameters():
        p.data.normal_(0, 0.3)
    g = torch.Generator().manual_seed(1)
    prompt, step_input = torch.randn(1, 5, 32, generator=g).to(DEVICE), torch.randn(2, 1, 32, generator=g).to(DEVICE)
    outputs = []
    for fused in (False, True):
        if fused:
            stack.fuse()
        cache = KVCache(2, 2, 2, 12, 16, DEVICE, torch.float32, quantization=kv_format)
        for row in range(2):
            positions = torch.arange(5, device=DEVICE).unsqueeze(0)
            stack(prompt, positions, CacheView.causal(cache, positions, 5, rows_slots=torch.tensor([row])))
        positions = torch.tensor([[5], [5]], device=DEVICE)
        outputs.append(stack(step_input, positions, CacheView.causal(cache, positions, 8)))
    assert torch.allclose(outputs[0], outputs[1], atol=2e-3 if kv_format == "int4" else 1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kv_format", FORMATS)
def test_quantized_cache_kernels_at_the_talker_shape_on_gpu(kv_format):
    """16 query heads over 8 KV heads of 128, a 2048-position cache, rows at many lengths, in bf16: the
    cache write and the attention through the kernels equal the references."""
    g = torch.Generator().manual_seed(5)
    batch, heads, kv_heads, dim, max_len = 8, 16, 8, 128, 2048
    cache = KVCache(1, batch, kv_heads, max_len, dim, "cuda", torch.bfloat16, quantization=kv_format)
    history = [_vectors(batch, kv_heads, max_len, dim, seed=s).to("cuda", torch.bfloat16) for s in (6, 7)]
    cache.keys[0].copy_(cache.store(history[0]))
    cache.values[0].copy_(cache.store(history[1]))
    positions = torch.tensor([0, 1, 63, 64, 500, 1023, 1500, 2047], device="cuda")
    qkv = torch.randn(batch, (heads + 2 * kv_heads) * dim, generator=g).to("cuda", torch.bfloat16)
    norm_weights = (1 + 0.1 * torch.randn(2, dim, generator=g)).to("cuda", torch.bfloat16)
    angles = positions.float().unsqueeze(1) * torch.logspace(0, -6, dim // 2, device="cuda")
    cos, sin = torch.cat([angles, angles], -1).cos().bfloat16(), torch.cat([angles, angles], -1).sin().bfloat16()
    tables = dict(rotation=cache.rotation, codebook=cache.codebook)
    reference_keys, reference_values = cache.keys[0].clone(), cache.values[0].clone()
    q = qk_norm_rope_fused(qkv, *norm_weights, cos, sin, positions, cache.keys[0], cache.values[0], 1e-6, heads,
                           kv_heads, **tables)
    ref_q = qk_norm_rope_reference(qkv, *norm_weights, cos, sin, positions, reference_keys, reference_values, 1e-6,
                                   heads, kv_heads, rotation=cache.rotation)
    assert _cosines(q, ref_q).min() > 0.9999
    rows = torch.arange(batch, device="cuda")
    for written, expected in ((cache.keys[0], reference_keys), (cache.values[0], reference_values)):
        agree = _cosines(cache.load(written[rows, :, positions]), cache.load(expected[rows, :, positions]))
        assert agree.min() > (0.999 if kv_format == "int8" else 0.99)
    real_q = q if kv_format == "int8" else (q.float() @ cache.rotation).bfloat16()
    ref = decode_attention_reference(real_q, cache.keys[0], cache.values[0], positions, rotation=cache.rotation)
    for dot in ((None, True) if kv_format == "int8" else (None,)):  # int8: the split and the tensor-core kernel
        out = decode_attention_fused(q, cache.keys[0], cache.values[0], positions, **tables, dot=dot)
        assert _cosines(out, ref).min() > 0.999
