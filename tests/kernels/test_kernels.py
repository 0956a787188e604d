"""Each Triton kernel against its PyTorch reference (CPU runs use the Triton interpreter)."""
import os

import pytest
import torch

if not torch.cuda.is_available():
    # Must be set before Triton is first imported; the model code never runs kernels on CPU.
    os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton")

from qtts.kernels.activation import silu_mul_fused, silu_mul_reference  # noqa: E402
from qtts.kernels import attention  # noqa: E402
from qtts.kernels.attention import decode_attention_fused, decode_attention_reference  # noqa: E402
from qtts.kernels.norm import rms_norm_fused, rms_norm_reference  # noqa: E402
from qtts.kernels.rope import qk_norm_rope_fused, qk_norm_rope_reference  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.bfloat16]


def _tol(dtype):
    return 1e-5 if dtype == torch.float32 else 2e-2


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_residual", [False, True])
def test_rms_norm(dtype, with_residual):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 96, generator=g).to(DEVICE, dtype)
    residual = torch.randn(3, 96, generator=g).to(DEVICE, dtype) if with_residual else None
    weight = (1 + 0.1 * torch.randn(96, generator=g)).to(DEVICE, dtype)
    out, res = rms_norm_fused(x, weight, 1e-6, residual)
    ref_out, ref_res = rms_norm_reference(x, weight, 1e-6, residual)
    assert torch.allclose(out.float(), ref_out.float(), atol=_tol(dtype), rtol=_tol(dtype))
    assert torch.allclose(res.float(), ref_res.float(), atol=_tol(dtype), rtol=_tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("slots", [None, [2, 0, 2]])
def test_qk_norm_rope_writes_cache(dtype, slots):
    g = torch.Generator().manual_seed(1)
    batch, heads, kv_heads, dim, max_len = 3, 4, 2, 16, 10
    qkv = torch.randn(batch, (heads + 2 * kv_heads) * dim, generator=g).to(DEVICE, dtype)
    qw, kw = (1 + 0.1 * torch.randn(2, dim, generator=g)).to(DEVICE, dtype)
    positions = torch.tensor([0, 5, 9], device=DEVICE)
    slots = None if slots is None else torch.tensor(slots, device=DEVICE)
    angles = positions.float().unsqueeze(1) * torch.linspace(0.01, 1, dim // 2, device=DEVICE)
    emb = torch.cat([angles, angles], dim=-1)
    cos, sin = emb.cos().to(dtype), emb.sin().to(dtype)
    caches = [torch.zeros(batch, kv_heads, max_len, dim, device=DEVICE, dtype=dtype) for _ in range(4)]
    q = qk_norm_rope_fused(qkv, qw, kw, cos, sin, positions, caches[0], caches[1], 1e-6, heads, kv_heads, slots)
    ref_q = qk_norm_rope_reference(qkv, qw, kw, cos, sin, positions, caches[2], caches[3], 1e-6, heads, kv_heads,
                                   slots)
    tol = _tol(dtype)
    assert torch.allclose(q.float(), ref_q.float(), atol=tol, rtol=tol)
    assert torch.allclose(caches[0].float(), caches[2].float(), atol=tol, rtol=tol)
    assert torch.equal(caches[1], caches[3])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads,kv_heads", [(4, 2), (4, 4)])
@pytest.mark.parametrize("dot", [False, True])
def test_decode_attention(dtype, heads, kv_heads, dot):
    g = torch.Generator().manual_seed(2)
    batch, dim, max_len = 3, 16, 80
    q = torch.randn(batch, heads, dim, generator=g).to(DEVICE, dtype)
    k = torch.randn(batch, kv_heads, max_len, dim, generator=g).to(DEVICE, dtype)
    v = torch.randn(batch, kv_heads, max_len, dim, generator=g).to(DEVICE, dtype)
    positions = torch.tensor([0, 40, 79], device=DEVICE)
    out = decode_attention_fused(q, k, v, positions, block_n=16, dot=dot)
    ref = decode_attention_reference(q, k, v, positions)
    tol = _tol(dtype)
    assert torch.allclose(out.float(), ref.float(), atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("splits", [2, 8])
@pytest.mark.parametrize("dot", [False, True])
def test_decode_attention_split_among_programs_equals_one_pass(dtype, splits, dot):
    """A row's blocks shared among programs and merged (flash-decoding), rows shorter than one block per split
    included: the same attention as the reference."""
    g = torch.Generator().manual_seed(3)
    batch, heads, kv_heads, dim, max_len = 4, 4, 2, 16, 100
    q = torch.randn(batch, heads, dim, generator=g).to(DEVICE, dtype)
    k = torch.randn(batch, kv_heads, max_len, dim, generator=g).to(DEVICE, dtype)
    v = torch.randn(batch, kv_heads, max_len, dim, generator=g).to(DEVICE, dtype)
    positions = torch.tensor([0, 17, 63, 99], device=DEVICE)
    out = decode_attention_fused(q, k, v, positions, block_n=16, splits=splits, dot=dot)
    ref = decode_attention_reference(q, k, v, positions)
    tol = _tol(dtype)
    assert torch.allclose(out.float(), ref.float(), atol=tol, rtol=tol)


def test_full_batches_of_16_bit_and_int8_caches_attend_on_tensor_cores(monkeypatch):
    monkeypatch.delenv("QTTS_ATTENTION_DOT", raising=False)
    assert attention.use_dot_products(bits=16, splits=1, block_n=64)  # the talker at full batch
    assert attention.use_dot_products(bits=8, splits=1, block_n=64)  # the same over an int8 cache
    assert not attention.use_dot_products(bits=16, splits=16, block_n=64)  # one stream: the split kernel
    assert not attention.use_dot_products(bits=16, splits=1, block_n=16)  # the code predictor's 16 positions
    assert not attention.use_dot_products(bits=4, splits=1, block_n=64)  # int4 rows: their codebook kernel
    monkeypatch.setenv("QTTS_ATTENTION_DOT", "0")
    assert not attention.use_dot_products(bits=16, splits=1, block_n=64)
    monkeypatch.setenv("QTTS_ATTENTION_DOT", "1")
    assert attention.use_dot_products(bits=16, splits=16, block_n=16)
    assert not attention.use_dot_products(bits=4, splits=1, block_n=64)
    with pytest.raises(ValueError, match="16-bit and int8"):
        q = torch.zeros(1, 4, 16, device=DEVICE)
        cache = torch.zeros(1, 2, 8, 40, dtype=torch.uint8, device=DEVICE)  # an int4 cache's rows (kv_quant)
        decode_attention_fused(q, cache, cache, torch.zeros(1, dtype=torch.long, device=DEVICE), dot=True)


def test_attention_splits_fill_the_gpu_only_when_rows_leave_it_idle(monkeypatch):
    monkeypatch.setattr(attention, "_multiprocessors", lambda index: 132)
    cuda = torch.device("cuda")
    assert attention.attention_splits(1, 8, 4096, 64, cuda) == attention.MAX_SPLITS  # one stream
    assert attention.attention_splits(16, 8, 4096, 64, cuda) == 4
    assert attention.attention_splits(64, 8, 4096, 64, cuda) == 1
    assert attention.attention_splits(1, 8, 130, 64, cuda) == 4  # no more splits than blocks (3, to a power of 2)
    assert attention.attention_splits(1, 8, 17, 32, cuda) == 1  # the code predictor's one block
    assert attention.attention_splits(1, 8, 4096, 64, torch.device("cpu")) == 1


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("splits", [1, 4])
@pytest.mark.parametrize("dot", [False, True])
def test_decode_attention_rows_of_one_slot_are_causal(dtype, splits, dot):
    """A prompt's tokens as rows of one slot: token i sees the keys 0..its position, as causal SDPA does (with a
    row's blocks split among programs too: a short prompt leaves most of the GPU idle)."""
    g = torch.Generator().manual_seed(4)
    heads, kv_heads, dim, max_len, tokens, start = 4, 2, 16, 40, 21, 3
    k = torch.randn(3, kv_heads, max_len, dim, generator=g).to(DEVICE, dtype)
    v = torch.randn(3, kv_heads, max_len, dim, generator=g).to(DEVICE, dtype)
    q = torch.randn(tokens, heads, dim, generator=g).to(DEVICE, dtype)
    positions = torch.arange(start, start + tokens, device=DEVICE)
    out = decode_attention_fused(q, k, v, positions, slots=torch.full((tokens,), 1, device=DEVICE), block_n=16,
                                 splits=splits, dot=dot)
    end = start + tokens
    mask = torch.arange(end, device=DEVICE).view(1, -1) <= positions.view(-1, 1)
    ref = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(0, 1).unsqueeze(0), k[1:2, :, :end], v[1:2, :, :end], attn_mask=mask,
        enable_gqa=True)[0].transpose(0, 1)
    tol = _tol(dtype)
    assert torch.allclose(out.float(), ref.float(), atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_mul(dtype):
    gate_up = torch.randn(2, 3, 2 * 40, generator=torch.Generator().manual_seed(3)).to(DEVICE, dtype)
    out = silu_mul_fused(gate_up, block=16)
    ref = silu_mul_reference(gate_up)
    assert torch.allclose(out.float(), ref.float(), atol=_tol(dtype), rtol=_tol(dtype))


@pytest.mark.parametrize("gemv", [False, True])
def test_fused_decode_stack_matches_eager(gemv):
    """A decoder stack's single-token step through the kernels (two rows: the GEMV path when on) equals the
    module path."""
    from qtts.config import DecoderLayerConfig
    from qtts.layers.attention import CacheView, KVCache
    from qtts.layers.decoder import DecoderStack

    cfg = DecoderLayerConfig(hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2,
                             head_dim=16, rms_norm_eps=1e-6, rope_theta=1e6)
    torch.manual_seed(0)
    stack = DecoderStack(cfg).to(DEVICE)
    for p in stack.parameters():
        p.data.normal_(0, 0.3)
    batch, max_len = 2, 12
    outputs = []
    for fused in (False, True):
        cache = KVCache(2, batch, 2, max_len, 16, DEVICE, torch.float32)
        if fused:
            stack.fuse(gemv)
        prompt = torch.randn(1, 5, 32, generator=torch.Generator().manual_seed(1)).to(DEVICE)
        for row in range(batch):
            positions = torch.arange(5, device=DEVICE).unsqueeze(0)
            stack(prompt, positions, CacheView.causal(cache, positions, 5, rows_slots=torch.tensor([row])))
        step_input = torch.randn(batch, 1, 32, generator=torch.Generator().manual_seed(2)).to(DEVICE)
        positions = torch.tensor([[5], [5]], device=DEVICE)
        outputs.append(stack(step_input, positions, CacheView.causal(cache, positions, 8)))
    assert torch.allclose(outputs[0], outputs[1], atol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_multi_token_stack_matches_eager(dtype):
    """Several tokens per row (prompt prefill into a slot; the predictor's two-token first step) through
    the kernels equal the module path."""
    from qtts.config import DecoderLayerConfig
    from qtts.layers.attention import CacheView, KVCache
    from qtts.layers.decoder import DecoderStack

    cfg = DecoderLayerConfig(hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2,
                             head_dim=16, rms_norm_eps=1e-6, rope_theta=1e6)
    torch.manual_seed(0)
    stack = DecoderStack(cfg)
    for p in stack.parameters():
        p.data.normal_(0, 0.3)
    stack = stack.to(DEVICE, dtype)
    g = torch.Generator().manual_seed(1)
    prompt = torch.randn(1, 7, 32, generator=g).to(DEVICE, dtype)
    pairs = torch.randn(3, 2, 32, generator=g).to(DEVICE, dtype)
    results = []
    for fused in (False, True):
        if fused:
            stack.fuse()
        cache = KVCache(2, 3, 2, 12, 16, DEVICE, dtype)
        positions = torch.arange(7, device=DEVICE).unsqueeze(0)
        into_slot = stack(prompt, positions, CacheView.causal(cache, positions, 7, rows_slots=torch.tensor([1])))
        positions = torch.arange(2, device=DEVICE).expand(3, 2)
        first_step = stack(pairs, positions, CacheView.causal(cache, positions, 2))
        results.append((into_slot, first_step, cache.keys[1].clone()))
    for eager, fused in zip(*results):
        assert torch.allclose(eager.float(), fused.float(), atol=_tol(dtype), rtol=_tol(dtype))


def test_a_whole_model_through_the_kernels_speaks_like_the_eager_one(tiny_custom_voice):
    """Prompt, frames and sampling all through the kernels (as on CUDA): the same greedy codes."""
    from qtts.api import TTS

    codes = []
    for fused in (False, True):
        tts = TTS.from_pretrained(tiny_custom_voice, device=DEVICE, dtype="fp32", fused_kernels=fused)
        request = tts.request("Hello there, how are you?", speaker=tts.speakers[0], greedy=True, max_frames=6)
        codes.append(tts.generate(request).codes)
    assert torch.equal(codes[0], codes[1])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [1, 2])
@pytest.mark.parametrize("case", ["plain", "bias", "norm", "norm_residual", "norm_residual_silu"])
def test_gemv(dtype, rows, case):
    from qtts.kernels.gemv import gemv_fused, gemv_reference

    g = torch.Generator().manual_seed(5)
    k_dim, n_out = 72, 40  # not multiples of the blocks: the masks are exercised
    silu = case.endswith("silu")
    x = torch.randn(rows, k_dim, generator=g).to(DEVICE, dtype)
    weight = (0.2 * torch.randn(2 * n_out if silu else n_out, k_dim, generator=g)).to(DEVICE, dtype)
    kwargs = {"silu_mul": silu}
    if case == "bias":
        kwargs["bias"] = torch.randn(n_out, generator=g).to(DEVICE, dtype)
    if case.startswith("norm"):
        kwargs.update(norm_weight=(1 + 0.1 * torch.randn(k_dim, generator=g)).to(DEVICE, dtype), eps=1e-6)
    if "residual" in case:
        kwargs["residual"] = torch.randn(rows, k_dim, generator=g).to(DEVICE, dtype)
    out, residual = gemv_fused(x, weight, **kwargs)
    ref_out, ref_residual = gemv_reference(x, weight, **kwargs)
    tol = _tol(dtype)
    scale = max(1.0, ref_out.float().abs().max().item())  # bf16: a different summation order moves an ulp
    assert out.shape == ref_out.shape
    assert torch.allclose(out.float(), ref_out.float(), atol=tol * scale, rtol=tol)
    assert torch.allclose(residual.float(), ref_residual.float(), atol=tol, rtol=tol)


def test_gemv_takes_the_tuned_configuration_of_a_shape_and_the_rule_elsewhere(tmp_path, monkeypatch):
    from qtts.kernels import gemv
    tuned = {"shapes": {gemv.shape_key(3072, 1024, True, False): {"block_n": 2, "block_k": 1024, "num_warps": 8}}}
    (tmp_path / "gemv.json").write_text(__import__("json").dumps(tuned))
    monkeypatch.setenv("QTTS_GEMV_TUNED", str(tmp_path / "gemv.json"))
    gemv._tuned.cache_clear()
    try:
        cuda = torch.device("cuda", 0)
        assert gemv.gemv_config(3072, 1024, True, False, cuda) == (2, 1024, 8)
        assert gemv.gemv_config(3072, 1024, False, False, cuda) == (gemv.block_n(3072), gemv.BLOCK_K, 4)
        assert gemv.gemv_config(3072, 1024, True, True, cuda) == (gemv.block_n(3072), gemv.BLOCK_K, 4)
    finally:
        gemv._tuned.cache_clear()


def test_a_broken_tuning_table_is_named_in_the_error(tmp_path, monkeypatch):
    from qtts.kernels import gemv
    (tmp_path / "gemv.json").write_text('{"shapes": {"3072x1024": {"block_n": 2}}}')
    monkeypatch.setenv("QTTS_GEMV_TUNED", str(tmp_path / "gemv.json"))
    gemv._tuned.cache_clear()
    try:
        with pytest.raises(ValueError, match="not a GEMV tuning table"):
            gemv.gemv_config(3072, 1024, False, False, torch.device("cuda", 0))
    finally:
        gemv._tuned.cache_clear()
