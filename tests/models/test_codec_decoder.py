"""The codec decoder: one-pass against upstream Qwen3TTSTokenizerV2Decoder, chunked against one-pass, slots.

Tiny widths, real upsample rates (1920 samples per frame); random weights scaled so that every stage
matters and the waveform stays mostly inside the final clamp.
"""
import json
import math
import random

import pytest
import torch

from qtts.config import SAMPLES_PER_FRAME, CodecDecoderConfig
from qtts.errors import OverloadedError
from qtts.models.codec_decoder import CodecDecoder, load_codec_decoder
from qtts.models.codec_streaming import StreamingCodecDecoder
from qtts.weights import load_module, read_tensors

TINY = dict(codebook_size=64, codebook_dim=32, latent_dim=32, hidden_size=32, intermediate_size=64,
            num_heads=4, num_kv_heads=4, head_dim=8, decoder_dim=48)
FP32_TOLERANCE = 1e-5


def tiny_config(window: int = 8, layers: int = 2, kv_heads: int = 4) -> CodecDecoderConfig:
    return CodecDecoderConfig(**{**TINY, "num_kv_heads": kv_heads}, num_layers=layers, sliding_window=window)


def upstream_config(cfg: CodecDecoderConfig):
    from qwen_tts.core.tokenizer_12hz.configuration_qwen3_tts_tokenizer_v2 import Qwen3TTSTokenizerV2DecoderConfig

    return Qwen3TTSTokenizerV2DecoderConfig(
        codebook_size=cfg.codebook_size, codebook_dim=cfg.codebook_dim, latent_dim=cfg.latent_dim,
        hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads, head_dim=cfg.head_dim,
        sliding_window=cfg.sliding_window, decoder_dim=cfg.decoder_dim)


def randomize(decoder: torch.nn.Module, seed: int = 1) -> None:
    """Unit-scale activations through the vocoder; residual and output branches damped."""
    g = torch.Generator().manual_seed(seed)
    output_conv = f"decoder.{len(decoder.decoder) - 1}.conv.weight"
    with torch.no_grad():
        for name, p in decoder.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if name.endswith("cluster_usage"):
                p.copy_(torch.rand(p.shape, generator=g) * 2 + 0.1)
            elif name.endswith(("alpha", "beta")):
                p.copy_(0.3 * noise)
            elif name.endswith(("scale", "gamma")):
                p.copy_(0.3 + 0.1 * noise)
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * noise)
            elif p.dim() >= 2 and "embedding_sum" not in name:
                owner = decoder.get_submodule(name.rsplit(".", 1)[0])
                fan_in = p.shape[1] * (p.shape[2] if p.dim() == 3 else 1)
                if isinstance(owner, torch.nn.ConvTranspose1d):  # each output sees kernel/stride taps
                    fan_in = p.shape[0] * max(p.shape[2] // owner.stride[0], 1)
                gain = 0.3 if "conv2" in name else 0.05 if name == output_conv else 1
                p.copy_(gain * noise / math.sqrt(fan_in))
            else:
                p.copy_(noise * (0.1 if name.endswith("bias") else 1))


def random_codes(cfg: CodecDecoderConfig, batch: int, frames: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, cfg.codebook_size, (batch, cfg.num_quantizers, frames), generator=g)


def ours_random(cfg: CodecDecoderConfig, seed: int = 1) -> CodecDecoder:
    decoder = CodecDecoder(cfg).eval()
    randomize(decoder, seed)
    decoder.refresh_codebooks()
    return decoder


@pytest.fixture(scope="module")
def pair():
    """(upstream, ours) with the same random weights, window 8 so that short tests slide it."""
    from tests.oracle import require_oracle

    require_oracle()
    from qwen_tts.core.tokenizer_12hz.modeling_qwen3_tts_tokenizer_v2 import Qwen3TTSTokenizerV2Decoder

    cfg = tiny_config()
    torch.manual_seed(0)
    upstream = Qwen3TTSTokenizerV2Decoder(upstream_config(cfg)).eval()
    randomize(upstream)
    ours = CodecDecoder(cfg).eval()
    load_module(ours, upstream.state_dict(), "upstream decoder")
    ours.refresh_codebooks()
    return upstream, ours


@pytest.fixture(scope="module")
def window72():
    """A decoder with the real 72-frame window (tiny widths, one layer)."""
    return ours_random(tiny_config(window=72, layers=1))


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def _snr_db(reference: torch.Tensor, test: torch.Tensor) -> float:
    noise = (test.float() - reference.float()).pow(2).sum()
    return 10 * math.log10(reference.float().pow(2).sum().item() / max(noise.item(), 1e-30))


@pytest.mark.oracle
@torch.no_grad()
def test_forward_matches_upstream(pair):
    upstream, ours = pair
    codes = random_codes(ours.cfg, batch=2, frames=20)
    expected = upstream(codes)
    wave = ours(codes)
    assert wave.shape == (2, 1, 20 * SAMPLES_PER_FRAME)
    assert 0.02 < expected.std() < 0.5 and (expected.abs() >= 1).float().mean() < 0.01  # a usable signal
    assert _max_diff(wave, expected) <= FP32_TOLERANCE


@pytest.mark.oracle
@torch.no_grad()
def test_forward_matches_upstream_past_the_72_frame_window():
    from tests.oracle import require_oracle

    require_oracle()
    from qwen_tts.core.tokenizer_12hz.modeling_qwen3_tts_tokenizer_v2 import Qwen3TTSTokenizerV2Decoder

    cfg = tiny_config(window=72, layers=1, kv_heads=2)
    upstream = Qwen3TTSTokenizerV2Decoder(upstream_config(cfg)).eval()
    randomize(upstream, seed=3)
    ours = CodecDecoder(cfg).eval()
    load_module(ours, upstream.state_dict(), "upstream decoder")
    codes = random_codes(cfg, batch=1, frames=80, seed=3)
    assert _max_diff(ours(codes), upstream(codes)) <= FP32_TOLERANCE


@pytest.mark.oracle
@pytest.mark.slow
@torch.no_grad()
def test_real_shapes_match_upstream_one_pass_and_chunked():
    from tests.oracle import require_oracle

    require_oracle()
    from qwen_tts.core.tokenizer_12hz.modeling_qwen3_tts_tokenizer_v2 import Qwen3TTSTokenizerV2Decoder

    cfg = CodecDecoderConfig()
    upstream = Qwen3TTSTokenizerV2Decoder(upstream_config(cfg)).eval()
    randomize(upstream, seed=4)
    ours = CodecDecoder(cfg).eval()
    load_module(ours, upstream.state_dict(), "upstream decoder")
    assert sum(p.numel() for p in ours.parameters()) == 114_323_137 - 2 * 256 * 512  # audit minus input_proj
    codes = random_codes(cfg, batch=1, frames=4, seed=4)
    whole = ours(codes)
    assert _max_diff(whole, upstream(codes)) <= FP32_TOLERANCE
    assert _max_diff(_decode_chunked(ours, codes, [1, 3]), whole[:, 0]) <= FP32_TOLERANCE


def _schedules(total: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    schedules = [[1] * total, [total], [2, 1, 5, 3, total - 11]]
    for _ in range(2):
        sizes = []
        while sum(sizes) < total:
            sizes.append(min(rng.choice([1, 2, 3, 4, 7, 9, 13]), total - sum(sizes)))
        schedules.append(sizes)
    return schedules


def _decode_chunked(decoder: CodecDecoder, codes: torch.Tensor, schedule: list[int]) -> torch.Tensor:
    state, pieces, start = decoder.new_state(codes.shape[0]), [], 0
    for size in schedule:
        wave, state = decoder.decode_chunk(codes[:, :, start:start + size], state)
        assert wave.shape == (codes.shape[0], size * SAMPLES_PER_FRAME)
        pieces.append(wave)
        start += size
    return torch.cat(pieces, dim=-1)


@torch.no_grad()
def test_any_chunk_schedule_equals_one_pass():
    decoder = ours_random(tiny_config(window=8))
    codes = random_codes(decoder.cfg, batch=2, frames=24, seed=5)
    whole = decoder(codes)[:, 0]
    for schedule in _schedules(24, seed=0):
        assert _max_diff(_decode_chunked(decoder, codes, schedule), whole) <= FP32_TOLERANCE, schedule


@torch.no_grad()
def test_chunks_equal_one_pass_past_the_72_frame_window(window72):
    codes = random_codes(window72.cfg, batch=1, frames=80, seed=6)
    whole = window72(codes)[:, 0]
    for schedule in ([1] * 80, [30, 50], [71, 1, 1, 7], _schedules(80, seed=1)[-1]):
        assert _max_diff(_decode_chunked(window72, codes, schedule), whole) <= FP32_TOLERANCE, schedule


@torch.no_grad()
def test_slots_join_and_leave_and_match_one_pass():
    decoder = ours_random(tiny_config(window=8))
    streams = StreamingCodecDecoder(decoder, max_streams=3)
    codes = {name: random_codes(decoder.cfg, 1, 14, seed=seed)[0] for seed, name in enumerate("abcd")}
    # (streams, frames) per call; "a" ends after call 6 and "d" takes its slot.
    calls = [("a", 2), ("ab", 3), ("bca", 1), ("cb", 4), ("abc", 6), ("ac", 2), ("dc", 1), ("d", 13)]
    slots, done, outputs = {}, {name: 0 for name in codes}, {name: [] for name in codes}
    for members, frames in calls:
        for name in members:
            if name not in slots:
                slots[name] = streams.allocate()
        chunk = torch.stack([codes[name][:, done[name]:done[name] + frames] for name in members])
        for name, wave in zip(members, streams.decode([slots[name] for name in members], chunk)):
            outputs[name].append(wave)
            done[name] += frames
        if "a" in slots and done["a"] == 14:
            streams.free(slots.pop("a"))
    assert slots["d"] == 0
    for name in codes:
        assert done[name] == 14
        assert _max_diff(torch.cat(outputs[name]), decoder(codes[name][None])[0, 0]) <= FP32_TOLERANCE, name


@torch.no_grad()
def test_a_stream_does_not_depend_on_its_batch_companions():
    decoder = ours_random(tiny_config(window=8))
    mine = random_codes(decoder.cfg, 1, 12, seed=10)

    def decode_with(companions_seed: int | None, companions: int) -> torch.Tensor:
        streams = StreamingCodecDecoder(decoder, max_streams=4)
        slots = [streams.allocate() for _ in range(companions + 1)]
        slots = slots[1:] + slots[:1]  # our stream: slot 0, last row
        others = random_codes(decoder.cfg, companions, 12, seed=companions_seed or 0)
        pieces = []
        for start, size in ((0, 3), (3, 1), (4, 8)):
            batch = torch.cat([others, mine])[:, :, start:start + size]
            pieces.append(streams.decode(slots, batch)[-1])
        return torch.cat(pieces)

    alone = decode_with(None, 0)
    with_a = decode_with(11, 2)
    with_b = decode_with(12, 2)
    assert torch.equal(with_a, with_b)  # same shapes: companions cannot change a single sample
    assert _max_diff(with_a, alone) <= FP32_TOLERANCE


def test_slot_bookkeeping():
    streams = StreamingCodecDecoder(ours_random(tiny_config()), max_streams=2)
    a, b = streams.allocate(), streams.allocate()
    assert (a, b) == (0, 1) and streams.active == 2
    with pytest.raises(OverloadedError):
        streams.allocate()
    streams.free(a)
    with pytest.raises(ValueError):
        streams.free(a)
    with pytest.raises(ValueError):
        streams.decode([a], torch.zeros(1, 16, 1, dtype=torch.long))
    with pytest.raises(ValueError):
        streams.decode([b, b], torch.zeros(2, 16, 1, dtype=torch.long))


@torch.no_grad()
def test_reset_restarts_a_stream():
    decoder = ours_random(tiny_config())
    streams = StreamingCodecDecoder(decoder, max_streams=1)
    slot = streams.allocate()
    codes = random_codes(decoder.cfg, 1, 5, seed=2)
    first = streams.decode([slot], codes)
    streams.decode([slot], codes)
    streams.reset(slot)
    assert torch.equal(streams.decode([slot], codes), first)


@pytest.mark.oracle
@torch.no_grad()
def test_bf16_is_closer_to_fp32_than_upstream_bf16(pair):
    upstream, ours = pair
    codes = random_codes(ours.cfg, batch=2, frames=20, seed=7)
    reference = ours(codes)
    ours_bf16 = CodecDecoder(ours.cfg).eval()
    load_module(ours_bf16, ours.state_dict(), "fp32 decoder")
    ours_bf16.refresh_codebooks()
    ours_bf16.to(torch.bfloat16)
    upstream_bf16 = type(upstream)(upstream.config).eval()
    upstream_bf16.load_state_dict(upstream.state_dict())
    upstream_bf16.to(torch.bfloat16)
    snr_ours = _snr_db(reference, ours_bf16(codes))
    snr_upstream = _snr_db(reference, upstream_bf16(codes))
    print(f"bf16 vs fp32 SNR: ours {snr_ours:.1f} dB, upstream {snr_upstream:.1f} dB")
    assert snr_ours > 20 and snr_ours >= snr_upstream


@pytest.mark.oracle
@torch.no_grad()
def test_fixture_checkpoint_loads_and_matches_upstream(tiny_custom_voice):
    from tests.oracle import require_oracle

    require_oracle()
    from qwen_tts.core.tokenizer_12hz.configuration_qwen3_tts_tokenizer_v2 import Qwen3TTSTokenizerV2DecoderConfig
    from qwen_tts.core.tokenizer_12hz.modeling_qwen3_tts_tokenizer_v2 import Qwen3TTSTokenizerV2Decoder

    folder = tiny_custom_voice / "speech_tokenizer"
    ours = load_codec_decoder(folder, "cpu", torch.float32)
    raw = json.loads((folder / "config.json").read_text())["decoder_config"]
    upstream = Qwen3TTSTokenizerV2Decoder(Qwen3TTSTokenizerV2DecoderConfig(**raw)).eval()
    upstream.load_state_dict(read_tensors(folder, "decoder."))
    codes = random_codes(ours.cfg, batch=1, frames=6, seed=8)
    assert _max_diff(ours(codes), upstream(codes)) <= FP32_TOLERANCE


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@torch.no_grad()
def test_cuda_graphs_match_eager(monkeypatch):
    # capture autotunes cuDNN; with TF32 convolutions (torch's default) another algorithm rounds differently
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    decoder = ours_random(tiny_config()).cuda()
    eager = StreamingCodecDecoder(decoder, max_streams=4)
    graphed = StreamingCodecDecoder(decoder, max_streams=4, use_graphs=True, graph_chunk_frames=(1, 2))
    codes = random_codes(decoder.cfg, 3, 12, seed=9).cuda()
    eager_slots = [eager.allocate() for _ in range(3)]
    graphed_slots = [graphed.allocate() for _ in range(3)]
    rows = [0, 1, 2]
    for start, size in ((0, 1), (1, 2), (3, 3), (6, 2), (8, 1), (9, 2)):  # 3 frames: not captured, runs eagerly
        rows = rows[1:] + rows[:1]  # a different slot order each call
        chunk = codes[rows, :, start:start + size]
        a = eager.decode([eager_slots[r] for r in rows], chunk)
        b = graphed.decode([graphed_slots[r] for r in rows], chunk)
        assert _max_diff(a, b) <= FP32_TOLERANCE
    assert set(graphed._graphs) == {(4, 1), (4, 2)}  # batch 3 padded to the bucket of 4
    lone = graphed.decode([graphed_slots[0]], codes[:1, :, 11:12])
    assert _max_diff(lone, eager.decode([eager_slots[0]], codes[:1, :, 11:12])) <= FP32_TOLERANCE


@torch.no_grad()
def test_a_last_chunk_is_padded_to_a_graphed_length_and_trimmed():
    decoder = ours_random(tiny_config(window=8))
    streams = StreamingCodecDecoder(decoder, max_streams=1, graph_chunk_frames=(4,))
    calls = []

    class ReplaysEagerly:  # stands in for a captured chunk graph off CUDA
        def run(self, slots, codes):
            calls.append(codes.shape[-1])
            return streams._decode_rows(slots, codes)

    streams.use_graphs = True
    streams._capture = lambda bucket, frames: ReplaysEagerly()
    codes = random_codes(decoder.cfg, batch=1, frames=11, seed=9)
    slot = streams.allocate()
    pieces = [streams.decode([slot], codes[..., :4]), streams.decode([slot], codes[..., 4:8]),
              streams.decode([slot], codes[..., 8:], last=True)]
    assert calls == [4, 4, 4]
    assert pieces[-1].shape[-1] == 3 * SAMPLES_PER_FRAME
    assert _max_diff(torch.cat(pieces, dim=-1), decoder(codes)[:, 0]) <= FP32_TOLERANCE
