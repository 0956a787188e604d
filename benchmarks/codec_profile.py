"""Where the streaming codec decoder's time goes at serving scale, and what its convolutions cost in
other layouts (GPU, bf16, random weights at the real shape).

Per layer: CUDA-event time of each top-level layer of one eager chunk decode. Per convolution shape
of that call: cuDNN as the decoder runs it (N, C, L), cuDNN with channels-last 2-D convolutions, and the
convolution as GEMMs over a (N, L, C) tensor (k shifted matmuls; a transposed convolution as one matmul
plus an overlap-add). With --in-situ, each convolution with a history is also timed inside the decoder in both layouts
(as the captures choose them, but eager). With --graphed, only the captured call as the server runs it:
each such convolution's in-place time in both layouts (the capture's choice), the replay time, and its
kernels by total time.
usage: python benchmarks/codec_profile.py [--batch 128] [--frames 4] [--in-situ | --graphed]
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_codec import random_decoder  # noqa: E402

from qtts.config import CodecDecoderConfig  # noqa: E402
from qtts.models.codec_layers import CausalConv1d, CausalConvTranspose1d, channels_last_2d  # noqa: E402
from qtts.models.codec_streaming import StreamingCodecDecoder  # noqa: E402
from qtts.models.conv_layout import choose_conv_layouts, layer_ms, tunable_convolutions  # noqa: E402


def cuda_ms(fn, calls: int = 20) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(calls):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / calls


def layer_times(decoder, batch: int, frames: int) -> dict:
    """Milliseconds per top-level layer of one eager decode call (events around each, best of 10), and of the
    whole call (mean of 20)."""
    streams = StreamingCodecDecoder(decoder, max_streams=batch, use_graphs=False)
    slots = [streams.allocate() for _ in range(batch)]
    codes = torch.randint(0, decoder.cfg.codebook_size, (batch, decoder.cfg.num_quantizers, frames), device="cuda")
    layers = [("pre_conv", decoder.pre_conv), ("pre_transformer", decoder.pre_transformer)]
    layers += [(f"upsample.{i}.{j}", m) for i, pair in enumerate(decoder.upsample) for j, m in enumerate(pair)]
    layers += [(f"decoder.{i}", m) for i, m in enumerate(decoder.decoder)]
    times = layer_ms([m for _, m in layers], lambda: streams.decode(slots, codes), repeats=10)
    return {"call_ms": cuda_ms(lambda: streams.decode(slots, codes)),
            "layers_ms": {name: round(times[m], 3) for name, m in layers}}


def conv_shapes(decoder, batch: int, frames: int) -> list[dict]:
    """Every stateful convolution's input shape in a call of `frames` frames (hooks on one eager call)."""
    shapes = []
    handles = []
    for name, module in decoder.named_modules():
        if isinstance(module, (CausalConv1d, CausalConvTranspose1d)):
            def hook(m, args, name=name):
                x = args[0]
                conv = m.conv
                shapes.append({"name": name, "transposed": isinstance(m, CausalConvTranspose1d),
                               "channels": (conv.in_channels, conv.out_channels), "length": x.shape[-1],
                               "kernel": conv.kernel_size[0], "dilation": conv.dilation[0], "stride": conv.stride[0],
                               "groups": conv.groups, "history": m.history, "weight": conv.weight, "bias": conv.bias})
            handles.append(module.register_forward_pre_hook(hook))
    streams = StreamingCodecDecoder(decoder, max_streams=batch, use_graphs=False)
    slots = [streams.allocate() for _ in range(batch)]
    codes = torch.randint(0, decoder.cfg.codebook_size, (batch, decoder.cfg.num_quantizers, frames), device="cuda")
    streams.decode(slots, codes)
    for handle in handles:
        handle.remove()
    return shapes


def gemm_conv(x_nlc: torch.Tensor, weight: torch.Tensor, bias, dilation: int, out_length: int) -> torch.Tensor:
    """Causal conv (no padding: x carries its history) as k shifted matmuls over (N, L, C)."""
    kernel = weight.shape[-1]
    taps = weight.permute(2, 1, 0)  # (k, Cin, Cout)
    out = torch.matmul(x_nlc[:, :out_length], taps[0])
    for k in range(1, kernel):
        out.baddbmm_(x_nlc[:, k * dilation:k * dilation + out_length], taps[k].expand(x_nlc.shape[0], -1, -1))
    return out if bias is None else out.add_(bias)


def gemm_conv_transposed(x_nlc: torch.Tensor, weight: torch.Tensor, bias, stride: int) -> torch.Tensor:
    """ConvTranspose1d with kernel 2·stride as one matmul and an overlap-add, over (N, L, C)."""
    batch, length, _ = x_nlc.shape
    cout = weight.shape[1]
    z = torch.matmul(x_nlc, weight.flatten(1)).view(batch, length, cout, 2, stride)
    out = z[:, 1:, :, 0] + z[:, :-1, :, 1]  # output block t: its own first half and the previous input's second
    out = out.permute(0, 1, 3, 2).reshape(batch, (length - 1) * stride, cout)
    return out if bias is None else out.add_(bias)


def conv_ab(shape: dict, batch: int) -> dict:
    cin, cout = shape["channels"]
    length = shape["length"] + shape["history"]
    weight, bias = shape["weight"], shape["bias"]
    x = torch.randn(batch, cin, length, device="cuda", dtype=weight.dtype)
    row = {k: v for k, v in shape.items() if k not in ("weight", "bias")}
    if shape["transposed"]:
        torch.backends.cudnn.benchmark = False
        row["cudnn_ms"] = cuda_ms(lambda: F.conv_transpose1d(x, weight, bias, stride=shape["stride"]))
        torch.backends.cudnn.benchmark = True
        row["cudnn_autotuned_ms"] = cuda_ms(lambda: F.conv_transpose1d(x, weight, bias, stride=shape["stride"]))
        torch.backends.cudnn.benchmark = False
        if shape["kernel"] == 2 * shape["stride"]:
            x_nlc = x.transpose(1, 2).contiguous()
            row["gemm_ms"] = cuda_ms(lambda: gemm_conv_transposed(x_nlc, weight, bias, shape["stride"]))
        return row
    conv = lambda: F.conv1d(x, weight, bias, dilation=shape["dilation"], groups=shape["groups"])  # noqa: E731
    torch.backends.cudnn.benchmark = False
    row["cudnn_ms"] = cuda_ms(conv)
    torch.backends.cudnn.benchmark = True
    row["cudnn_autotuned_ms"] = cuda_ms(conv)
    x4, w4 = channels_last_2d(x), channels_last_2d(weight)
    row["cudnn_channels_last_ms"] = cuda_ms(
        lambda: F.conv2d(x4, w4, bias, dilation=(1, shape["dilation"]), groups=shape["groups"]))
    torch.backends.cudnn.benchmark = False
    if shape["groups"] == 1:
        x_nlc = x.transpose(1, 2).contiguous()
        out_length = length - shape["history"]
        row["gemm_ms"] = cuda_ms(lambda: gemm_conv(x_nlc, weight, bias, shape["dilation"], out_length))
    return row


def layouts_in_situ(decoder, batch: int, frames: int) -> list[dict]:
    """Each convolution with a history inside an eager decode call, timed in both layouts (conv_layout's
    in-place timing, cuDNN not autotuned); the decoder is left as it was."""
    streams = StreamingCodecDecoder(decoder, max_streams=batch, use_graphs=False)
    slots = torch.tensor([streams.allocate() for _ in range(batch)], device="cuda")
    codes = torch.randint(0, decoder.cfg.codebook_size, (batch, decoder.cfg.num_quantizers, frames), device="cuda")
    before = {name: set(m.channels_last_shapes) for name, m in tunable_convolutions(decoder)}
    decoder.channels_last_calls.add((batch, frames))  # activations channels-last, as in a capture
    rows = choose_conv_layouts(decoder, lambda: streams._decode_rows(slots, codes))
    decoder.channels_last_calls.discard((batch, frames))
    for name, module in tunable_convolutions(decoder):
        module.channels_last_shapes = before[name]
    for row in rows:
        print(json.dumps(row), flush=True)
    return rows


def graphed_call(decoder, batch: int, frames: int, top: int = 25) -> dict:
    """The captured (batch, frames) call: its layout choices, ms per replay, and its top kernels."""
    from torch.profiler import ProfilerActivity, profile

    streams = StreamingCodecDecoder(decoder, max_streams=batch, use_graphs=True, graph_chunk_frames=(frames,),
                                    batch_buckets=[batch])
    slots = [streams.allocate() for _ in range(batch)]
    codes = torch.randint(0, decoder.cfg.codebook_size, (batch, decoder.cfg.num_quantizers, frames), device="cuda")
    replay_ms = cuda_ms(lambda: streams.decode(slots, codes))
    with profile(activities=[ProfilerActivity.CUDA]) as trace:
        for _ in range(10):
            streams.decode(slots, codes)
        torch.cuda.synchronize()
    kernels: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for event in trace.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            kernels[event.name][0] += event.time_range.elapsed_us() / 1000 / 10
            kernels[event.name][1] += 1
    ranked = sorted(kernels.items(), key=lambda item: -item[1][0])[:top]
    return {"replay_ms": round(replay_ms, 3), "conv_layouts": streams.conv_layouts[(batch, frames)],
            "kernels_ms_per_call": [{"name": name[:120], "ms": round(ms, 3), "launches_per_call": count // 10}
                                    for name, (ms, count) in ranked]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--in-situ", action="store_true",
                        help="also time each convolution with a history inside an eager decode call in both layouts")
    parser.add_argument("--graphed", action="store_true", help="only the captured call, profiled")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    decoder = random_decoder(CodecDecoderConfig(), "cuda", torch.bfloat16)
    result = {"device": torch.cuda.get_device_name(), "batch": args.batch, "frames": args.frames}
    with torch.no_grad():
        if args.graphed:
            result["graphed"] = graphed_call(decoder, args.batch, args.frames)
            print(json.dumps(result["graphed"], indent=1), flush=True)
            if args.out:
                Path(args.out).write_text(json.dumps(result, indent=1))
            return
        result["eager"] = layer_times(decoder, args.batch, args.frames)
        print(json.dumps(result["eager"]), flush=True)
        seen, rows = set(), []
        for shape in conv_shapes(decoder, args.batch, args.frames):
            key = (shape["transposed"], shape["channels"], shape["length"], shape["kernel"], shape["dilation"],
                   shape["groups"])
            if key in seen:
                continue
            seen.add(key)
            row = conv_ab(shape, args.batch)
            rows.append(row)
            print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
        result["convolutions"] = rows
        if args.in_situ:
            result["layouts_in_situ"] = {f"{b}x{f}": layouts_in_situ(decoder, b, f)
                                               for b, f in ((16, 2), (args.batch, args.frames))}
    out = Path(args.out) if args.out else None
    if out is not None:
        out.write_text(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
