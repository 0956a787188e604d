"""The codec decoder's layouts: channels-last (for the call shapes a capture tuned) and time innermost
(the rest) each convert nothing, and give the same samples."""
import torch
from torch.nn import functional as F

from qtts.kernels.layouts import is_channels_last
from qtts.models import codec_layers
from qtts.models.codec_streaming import StreamingCodecDecoder
from qtts.models.conv_layout import choose_conv_layouts, tunable_convolutions
from tests.models.test_codec_decoder import FP32_TOLERANCE, _max_diff, ours_random, random_codes, tiny_config


def _decode(decoder, codes: torch.Tensor, schedule: list[int]) -> torch.Tensor:
    streams = StreamingCodecDecoder(decoder, max_streams=codes.shape[0])
    slots = [streams.allocate() for _ in range(codes.shape[0])]
    pieces, start = [], 0
    for size in schedule:
        pieces.append(streams.decode(slots, codes[:, :, start:start + size]))
        start += size
    return torch.cat(pieces, dim=-1)


def _recording(monkeypatch, names: list[str]) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """Record (function, input, output) of every call of the torch.nn.functional functions `names`."""
    calls = []
    for name in names:
        def wrapped(x, *args, _name=name, _fn=getattr(F, name), **kwargs):
            y = _fn(x, *args, **kwargs)
            calls.append((_name, x, y))
            return y
        monkeypatch.setattr(F, name, wrapped)
    return calls


def _all_channels_last(decoder, batch: int) -> list:
    """Every call of `batch` streams channels-last, as a capture that chose channels-last throughout leaves it."""
    decoder.channels_last_calls |= {(batch, frames) for frames in range(1, 9)}
    layers = tunable_convolutions(decoder)
    for _, layer in layers:  # every shape these calls make
        layer.channels_last_shapes |= {(batch, length) for length in range(1, 7681)}
    return layers


def _layer_input_layouts(decoder) -> list[bool]:
    """Record, for every call of a codec layer, whether its (B, C, L) input was channels-last (L > 1 only)."""
    layouts = []
    kinds = (codec_layers.CausalConv1d, codec_layers.CausalConvTranspose1d, codec_layers.SnakeBeta,
             codec_layers.ResidualUnit, codec_layers.VocoderBlock, codec_layers.ConvNeXtBlock)
    for module in decoder.modules():
        if isinstance(module, kinds):
            module.register_forward_pre_hook(
                lambda _, args: layouts.append(is_channels_last(args[0])) if args[0].shape[-1] > 1 else None)
    return layouts


@torch.no_grad()
def test_channels_last_convolutions_convert_nothing(monkeypatch):
    decoder = ours_random(tiny_config(window=8))
    codes = random_codes(decoder.cfg, batch=2, frames=3, seed=2)
    _all_channels_last(decoder, batch=2)
    layouts = _layer_input_layouts(decoder)
    calls = _recording(monkeypatch, ["conv1d", "conv_transpose1d", "conv2d", "conv_transpose2d"])
    _decode(decoder, codes, [1, 2])
    assert layouts and all(layouts)  # every layer got a channels-last input
    assert calls and all(name.endswith("2d") for name, _, _ in calls)  # no (N, C, L) convolution
    for name, x, y in calls:  # cuDNN (and oneDNN) take and give channels-last as it is: nothing to convert
        assert x.is_contiguous(memory_format=torch.channels_last), name
        assert y.is_contiguous(memory_format=torch.channels_last), name


@torch.no_grad()
def test_untuned_calls_run_time_innermost_and_convert_nothing(monkeypatch):
    """A whole clip or any shape no capture tuned: (N, C, L) convolutions throughout, as upstream runs them."""
    decoder = ours_random(tiny_config(window=8))
    codes = random_codes(decoder.cfg, batch=2, frames=3, seed=6)
    layouts = _layer_input_layouts(decoder)
    calls = _recording(monkeypatch, ["conv1d", "conv_transpose1d", "conv2d", "conv_transpose2d"])
    decoder(codes)
    assert layouts and not any(layouts)  # every layer got a time-innermost input
    assert calls and all(name.endswith("1d") for name, _, _ in calls)
    for name, x, y in calls:
        assert x.is_contiguous() and y.is_contiguous(), name


@torch.no_grad()
def test_channels_last_convolutions_give_the_same_samples(monkeypatch):
    decoder = ours_random(tiny_config(window=8))
    codes = random_codes(decoder.cfg, batch=2, frames=7, seed=3)
    reference = _decode(decoder, codes, [1, 2, 4])  # shapes no capture tuned run as (N, C, L)
    layers = _all_channels_last(decoder, batch=2)
    # every residual unit's dilated conv, the input and output convs, the upsamplers, the ConvNeXt convs
    assert len(layers) >= 16
    calls = _recording(monkeypatch, ["conv2d", "conv_transpose2d"])
    switched = _decode(decoder, codes, [1, 2, 4])
    assert _max_diff(switched, reference) <= FP32_TOLERANCE
    assert len(calls) == 3 * len(layers)  # every tunable convolution of every call ran channels-last


def _streams(batch: int, frames: int, seed: int):
    """A tiny decoder, codes for `batch` streams, and those streams' slots (a tensor) in a StreamingCodecDecoder."""
    decoder = ours_random(tiny_config(window=8))
    codes = random_codes(decoder.cfg, batch=batch, frames=frames, seed=seed)
    streams = StreamingCodecDecoder(decoder, max_streams=batch)
    return decoder, codes, streams, torch.tensor([streams.allocate() for _ in range(batch)])


@torch.no_grad()
def test_the_chosen_layouts_cover_only_the_tuned_shape_and_keep_the_samples():
    decoder, codes, streams, slots = _streams(batch=3, frames=2, seed=4)
    before = streams.decode(slots.tolist(), codes)
    rows = choose_conv_layouts(decoder, lambda: streams._decode_rows(slots, codes))
    layers = dict(tunable_convolutions(decoder))
    assert [row["name"] for row in rows] == list(layers)
    for row in rows:
        layer = layers[row["name"]]
        assert row["batch"] == 3 and row["ncl_ms"] > 0 and row["channels_last_ms"] > 0
        assert layer.channels_last_shapes == (set() if row["ncl"] else {(3, row["length"])})
    fresh = StreamingCodecDecoder(decoder, max_streams=3)
    after = fresh.decode([fresh.allocate() for _ in range(3)], codes)
    assert _max_diff(after, before) <= FP32_TOLERANCE


@torch.no_grad()
def test_convolutions_called_at_two_shapes_are_left_alone():
    decoder, codes, streams, slots = _streams(batch=2, frames=1, seed=5)

    def two_calls() -> None:  # each convolution sees batch 1, then batch 2: no single shape to tune
        streams._decode_rows(slots[:1], codes[:1])
        streams._decode_rows(slots, codes)
    assert choose_conv_layouts(decoder, two_calls) == []
    assert all(not layer.channels_last_shapes for _, layer in tunable_convolutions(decoder))


@torch.no_grad()
def test_a_channels_last_call_with_some_ncl_convolutions_gives_the_same_samples():
    """What a capture leaves where (N, C, L) timed faster for some convolutions: they convert there and back."""
    decoder = ours_random(tiny_config(window=8))
    codes = random_codes(decoder.cfg, batch=2, frames=7, seed=7)
    reference = _decode(decoder, codes, [1, 2, 4])
    layers = _all_channels_last(decoder, batch=2)
    for _, layer in layers[::2]:
        layer.channels_last_shapes.clear()
    assert _max_diff(_decode(decoder, codes, [1, 2, 4]), reference) <= FP32_TOLERANCE
