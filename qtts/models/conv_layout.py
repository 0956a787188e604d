"""Which layout each convolution of the codec decoder runs in, chosen by timing both in place.

The decoder keeps its activations channels-last, the layout cuDNN's Hopper convolutions work in, so a
channels-last convolution converts nothing. But cuDNN's speed in a layout depends on the shape, up to
10x either way: on an H200 the 384-channel, dilation-9 convolution of a 128-stream, 4-frame call took
6 ms as (N, C, L) and 0.9 ms channels-last, while at 16 streams and 2 frames channels-last was the slow
one, and un-tuned channels-last made a one-pass decode of 16 whole clips 19x slower. So a convolution
runs channels-last only for the call shapes a graph capture timed both ways, and there unless (N, C, L),
converted there and back, was faster.
"""
from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn

from .codec_layers import CausalConv1d, CausalConvTranspose1d

MIN_GAIN = 0.9  # (N, C, L) only where it takes under 90% of the channels-last time

Convolution = CausalConv1d | CausalConvTranspose1d


def tunable_convolutions(decoder: nn.Module) -> list[tuple[str, Convolution]]:
    """The convolutions with a choice: all but the 1x1 ones, which are matrix products."""
    return [(name, m) for name, m in decoder.named_modules()
            if isinstance(m, CausalConvTranspose1d) or isinstance(m, CausalConv1d) and m.history > 0]


def choose_conv_layouts(decoder: nn.Module, call: Callable[[], object], repeats: int = 3) -> list[dict]:
    """Run call() (one decoder call at the shape to tune) with every tunable convolution channels-last,
    then as (N, C, L), timing each convolution in place; run channels-last at that call's shape from then
    on unless (N, C, L) was faster. Returns one row per convolution the call ran (once): name, shape, both
    times in ms, whether (N, C, L) was chosen.

    The times are eager, hence include launch gaps the captured graph does not have."""
    seen: dict[Convolution, set[tuple[int, int]]] = {}

    def record(module, args) -> None:  # a pre-hook's return value would replace the arguments
        seen.setdefault(module, set()).add((args[0].shape[0], args[0].shape[-1]))
    candidates = tunable_convolutions(decoder)
    hooks = [m.register_forward_pre_hook(record) for _, m in candidates]
    try:
        call()
    finally:
        for hook in hooks:
            hook.remove()
    # one input shape per call, or the times below would mix shapes
    layers = [(name, m) for name, m in candidates if len(seen.get(m, ())) == 1]
    modules = [m for _, m in layers]
    shapes = {m: next(iter(seen[m])) for m in modules}
    before = {m: set(m.channels_last_shapes) for _, m in layers}
    try:
        for _, m in layers:
            m.channels_last_shapes.add(shapes[m])
        channels_last = layer_ms(modules, call, repeats)
        for _, m in layers:
            m.channels_last_shapes.discard(shapes[m])
        ncl = layer_ms(modules, call, repeats)
    except BaseException:
        for _, m in layers:
            m.channels_last_shapes = before[m]
        raise
    rows = []
    for name, m in layers:
        chosen = ncl[m] < MIN_GAIN * channels_last[m]
        if not chosen:
            m.channels_last_shapes.add(shapes[m])
        rows.append({"name": name, "batch": shapes[m][0], "length": shapes[m][1],
                     "channels_last_ms": round(channels_last[m], 4), "ncl_ms": round(ncl[m], 4), "ncl": chosen})
    return rows


def layer_ms(layers: list[nn.Module], call: Callable[[], object], repeats: int) -> dict[nn.Module, float]:
    """Milliseconds each layer takes inside call(), the best of `repeats` calls after one warm-up call."""
    cuda = next(layers[0].parameters()).is_cuda if layers else False
    marks: dict[nn.Module, list] = {m: [] for m in layers}

    def mark(module, *_):
        if cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            marks[module].append(event)
        else:
            marks[module].append(time.perf_counter())
    hooks = [h for m in layers for h in (m.register_forward_pre_hook(mark), m.register_forward_hook(mark))]
    try:
        call()  # cuDNN picks (and, when benchmarking, times) its algorithms for a new layout here
        for m in layers:
            marks[m].clear()
        for _ in range(repeats):
            call()
    finally:
        for hook in hooks:
            hook.remove()
    if cuda:
        torch.cuda.synchronize()
    best = {}
    for m, stamps in marks.items():
        pairs = zip(stamps[0::2], stamps[1::2])
        best[m] = min(start.elapsed_time(end) if cuda else (end - start) * 1000 for start, end in pairs)
    return best
