"""Tune the skinny-layer kernel (qtts/kernels/gemv.py) for this GPU, at the shapes a model's code predictor runs.

usage: python benchmarks/tune_gemv.py [--size 1.7b] [--out FILE] [--smoke]
The shapes are recorded from one short generation; each is timed with every (BLOCK_N, BLOCK_K, num_warps) of the
sweep as the engine runs it, back to back inside a CUDA graph, cycling through enough copies of the weight that
they cannot stay in L2 (in a frame every layer's weights come from memory). The fastest per shape is written to
qtts/kernels/tuned/gemv_<GPU name>.json (or --out), which gemv_fused reads for that GPU; a shape without an entry
keeps the built-in rule. The figures (default and tuned microseconds per call) are printed and kept in the file.
"""
import argparse
import itertools
import os
import sys
import time
from pathlib import Path

import torch

if "--smoke" in sys.argv:
    os.environ["TRITON_INTERPRET"] = "1"  # the kernels on CPU, set before Triton's first import

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qtts import bench  # noqa: E402
from qtts.api import TTS  # noqa: E402
from qtts.kernels import gemv  # noqa: E402
from qtts.kernels.fp8 import Fp8Weight  # noqa: E402
from qtts.testing.fixtures import fixture_dir  # noqa: E402

BLOCK_NS = (2, 4, 8, 16)
BLOCK_KS = (256, 512, 1024, 2048)
WARPS = (2, 4, 8)


def record_shapes(tts: TTS) -> dict[str, dict]:
    """The gemv_fused calls of one short request: per shape key, the call's arguments' shapes and flags."""
    seen: dict[str, dict] = {}
    original = gemv.gemv_fused

    def recording(x, weight, bias=None, norm_weight=None, eps=0.0, residual=None, silu_mul=False, config=None):
        fp8 = isinstance(weight, Fp8Weight)
        rows = (weight.data if fp8 else weight).shape[0]
        key = gemv.shape_key(rows // 2 if silu_mul else rows, x.shape[1], silu_mul, fp8)
        if x.shape[0] == 1:
            seen.setdefault(key, dict(weight=weight, bias=bias, norm_weight=norm_weight, eps=eps,
                                      residual=residual is not None, silu_mul=silu_mul, k_dim=x.shape[1],
                                      dtype=x.dtype))
        return original(x, weight, bias, norm_weight, eps, residual, silu_mul, config)

    gemv.gemv_fused = recording
    try:
        tts.generate(tts.request("Shapes.", speaker=tts.speakers[0], language="english", greedy=True, max_frames=2))
    finally:
        gemv.gemv_fused = original
    return seen


def time_call(calls: list, device: torch.device, repeats: int) -> float:
    """Microseconds per call: `repeats` calls back to back, taken in turn from `calls`, in a CUDA graph on a GPU."""
    calls[0]()
    if device.type != "cuda":
        started = time.perf_counter()
        for i in range(repeats):
            calls[i % len(calls)]()
        return (time.perf_counter() - started) / repeats * 1e6
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        calls[0]()  # compiled and warm before capture
        with torch.cuda.graph(graph, stream=stream):
            for i in range(repeats):
                calls[i % len(calls)]()
    torch.cuda.synchronize()
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    best = float("inf")
    for _ in range(5):
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) * 1e3 / repeats)
    return best


def weight_copies(weight, device: torch.device) -> list:
    """The weight and enough copies that together they are twice the GPU's L2 (just the weight off CUDA)."""
    if device.type != "cuda":
        return [weight]
    data = weight.data if isinstance(weight, Fp8Weight) else weight
    l2_bytes = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 50 * 2**20)
    count = max(1, -(-2 * l2_bytes // (data.numel() * data.element_size())))
    if isinstance(weight, Fp8Weight):
        return [weight] + [Fp8Weight(weight.data.clone(), weight.scale.clone()) for _ in range(count - 1)]
    return [weight] + [weight.clone() for _ in range(count - 1)]


def tune_shape(shape: dict, device: torch.device, configs, repeats: int) -> dict:
    x = torch.randn(1, shape["k_dim"], device=device, dtype=shape["dtype"])
    residual = torch.randn_like(x) if shape["residual"] else None
    weights = weight_copies(shape["weight"], device)

    def run(config):
        return [lambda w=w: gemv.gemv_fused(x, w, shape["bias"], shape["norm_weight"], shape["eps"], residual,
                                            shape["silu_mul"], config) for w in weights]

    default = time_call(run(None), device, repeats)
    timings = {}
    for config in configs:
        if config[1] > max(256, 1 << (shape["k_dim"] - 1).bit_length()):
            continue  # a K block past the whole row only masks
        try:
            timings[config] = time_call(run(config), device, repeats)
        except Exception as exc:  # a configuration the compiler refuses (registers, shared memory) is skipped
            print(f"  {config}: {type(exc).__name__}: {str(exc)[:120]}", flush=True)
    best = min(timings, key=timings.get)
    return {"block_n": best[0], "block_k": best[1], "num_warps": best[2], "us": round(timings[best], 2),
            "default_us": round(default, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="1.7b")
    parser.add_argument("--repeats", type=int, default=50, help="calls per timed graph")
    parser.add_argument("--out", default=None)
    parser.add_argument("--smoke", action="store_true", help="tiny fixture on CPU, two configurations")
    args = parser.parse_args()
    if args.smoke:
        args.size = "tiny"
    on_cuda = torch.cuda.is_available() and not args.smoke
    device = torch.device("cuda" if on_cuda else "cpu")
    tts = TTS.from_pretrained(fixture_dir("custom_voice", args.size), device=device.type,
                              dtype="bf16" if on_cuda else "fp32", use_graphs=False, fused_kernels=True)
    name = torch.cuda.get_device_name() if on_cuda else "cpu"
    configs = list(itertools.product(BLOCK_NS, BLOCK_KS, WARPS)) if on_cuda else [(64, 128, 4), (32, 128, 4)]
    shapes = record_shapes(tts)
    results = {"device": name, "torch": torch.__version__, "size": args.size,
               "sweep": {"block_n": BLOCK_NS, "block_k": BLOCK_KS, "num_warps": WARPS}, "shapes": {}}
    out = Path(args.out) if args.out else gemv.tuned_file(name)
    for key, shape in shapes.items():
        results["shapes"][key] = tune_shape(shape, device, configs, args.repeats if on_cuda else 2)
        print(key, results["shapes"][key], flush=True)
        if args.out or on_cuda:  # after each shape: a timeout still leaves the shapes done
            bench.save_results(results, out)
    default = sum(s["default_us"] for s in results["shapes"].values())
    tuned = sum(s["us"] for s in results["shapes"].values())
    print(f"one call of each shape: {default:.1f} us with the rule, {tuned:.1f} us tuned")


if __name__ == "__main__":
    main()
