"""The quantization options side by side with bf16, in one run: ms per frame of one stream, audio seconds per second
of an offline batch, and the quality gates against bf16 (docs/quantization.md).

usage: python benchmarks/bench_options.py [--size 1.7b] [--options bf16,fp8_talker,fp8_predictor,kv_int8,kv_int4]
       [--frames 150] [--batch 256] [--batch-frames 300] [--max-len 1024] [--gate-prompts 4] [--gate-frames 64]
       [--out FILE] [--smoke]
Each configuration is loaded once (the bf16 model stays loaded as the gates' reference) and measured as
benchmarks/bench_speed.py measures (qtts.bench: bench_throughput for one stream, bench_batch for the batch); the
gates are those of tests/gpu/test_quantization.py, on frames the bf16 model generated. FP8 options are skipped
on GPUs without FP8 tensor cores. Writes JSON after each configuration (default
benchmarks/results/options_<size>_<device>.json; under --smoke only with --out) and prints a table.
"""
import argparse
import gc
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qtts import bench  # noqa: E402
from qtts.api import TTS  # noqa: E402
from qtts.kernels.fp8 import scaled_mm_supported  # noqa: E402
from qtts.testing import quality_gates as gates  # noqa: E402
from qtts.testing.fixtures import fixture_dir  # noqa: E402

# each configuration's keywords for TTS.from_pretrained (the flags --fp8-talker, --fp8-predictor, --kv-cache)
OPTIONS = {"bf16": {}, "fp8_talker": {"fp8_talker": True}, "fp8_predictor": {"fp8_predictor": True},
           "kv_int8": {"kv_cache": "int8"}, "kv_int4": {"kv_cache": "int4"}}
GATE_TEXTS = ["The quick brown fox jumps over the lazy dog while the morning sun rises.",
              "Quantized weights should not change what the model says, nor how it sounds.",
              "One, two, three, four, five, six, seven, eight, nine, ten.",
              "She sells sea shells by the sea shore, and the shells she sells are surely sea shells."]


def skip_reason(option: str, device: torch.device) -> str | None:
    """Why an option cannot be measured here (None: it can)."""
    fp8 = OPTIONS[option].get("fp8_talker") or OPTIONS[option].get("fp8_predictor")
    if fp8 and device.type == "cuda" and not scaled_mm_supported(device):
        major, minor = torch.cuda.get_device_capability(device)
        return f"FP8 needs FP8 tensor cores (compute capability 8.9+: Ada, Hopper); this GPU is {major}.{minor}"
    return None


def release(tts: TTS) -> None:
    """Free a model's engine (its KV cache and graphs) before the next one is built."""
    tts._engine = None
    gc.collect()
    if tts.device.type == "cuda":
        torch.cuda.empty_cache()


def measure_speed(tts: TTS, args) -> dict:
    """ms per frame of one stream, and audio seconds per second of the offline batch."""
    one = bench.bench_throughput(tts, args.frames, repeats=args.repeats)
    batch = bench.bench_batch(tts, requests=args.batch, frames=args.batch_frames, repeats=args.repeats)
    return {"ms_per_frame": round(one["ms_per_frame"], 3), "rtf": round(one["rtf"], 2),
            "batch_audio_s_per_s": round(batch["audio_s_per_s"], 1), "batch_wall_s": round(batch["wall_s"], 3)}


def gate_requests(tts: TTS, count: int) -> list:
    return [tts.request(GATE_TEXTS[i % len(GATE_TEXTS)], speaker=tts.speakers[i % len(tts.speakers)],
                        language="english", seed=i) for i in range(count)]


def measure_gates(reference: TTS, candidate: TTS, option: str, frames) -> dict:
    kv_cache = OPTIONS[option].get("kv_cache")
    report = gates.measure_gates(reference, candidate, frames, candidate_kv_cache=kv_cache)
    failures = report.failures(gates.KV_LAYER_COSINE if kv_cache else gates.WEIGHT_LAYER_COSINE)
    figures = report.as_dict()
    summary = {key: round(figures[key], 6) for key in ("layer_cosine", "talker_output_cosine",
                                                        "predictor_output_cosine", "codebook0_kl", "predictor_kl",
                                                        "codebook0_top5", "predictor_top5")}
    return {**summary, "failures": failures, "passes": not failures,
            "talker_layer_cosines": figures["talker_layer_cosines"],
            "predictor_layer_cosines": figures["predictor_layer_cosines"]}


def print_table(rows: list[dict]) -> None:
    columns = ("option", "ms_per_frame", "batch_audio_s_per_s", "layer_cosine", "codebook0_kl", "predictor_kl",
               "codebook0_top5", "predictor_top5", "failures")
    print(" | ".join(columns))
    for row in rows:
        if "skipped" in row or "error" in row:
            print(f"{row['option']} | {row.get('skipped') or row['error']}")
            continue
        print(" | ".join(str(row.get(name, "-")) if not isinstance(row.get(name), list)
                         else ", ".join(row[name]) or "none" for name in columns))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="1.7b")
    parser.add_argument("--options", default=",".join(OPTIONS))
    parser.add_argument("--frames", type=int, default=150, help="frames of the one-stream request")
    parser.add_argument("--batch", type=int, default=256, help="requests of the offline batch (the engine's full batch)")
    parser.add_argument("--batch-frames", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=1, help="timed runs after the warm-up run (the best counts)")
    parser.add_argument("--gate-prompts", type=int, default=4)
    parser.add_argument("--gate-frames", type=int, default=gates.GATE_FRAMES)
    parser.add_argument("--max-len", type=int, default=1024)
    parser.add_argument("--out", default=None)
    parser.add_argument("--smoke", action="store_true", help="tiny fixture on CPU, a few frames: checks the script")
    args = parser.parse_args()
    if args.smoke:
        args.size, args.max_len, args.frames, args.batch, args.batch_frames = "tiny", 256, 6, 3, 6
        args.gate_prompts, args.gate_frames = 2, 8
    options = args.options.split(",")
    unknown = [name for name in options if name not in OPTIONS]
    if unknown or options[0] != "bf16":
        parser.error(f"--options: bf16 first (the gates' reference), then any of {list(OPTIONS)[1:]}; got {options}")
    on_cuda = torch.cuda.is_available() and not args.smoke
    device, dtype = ("cuda", "bf16") if on_cuda else ("cpu", "fp32")
    folder = fixture_dir("custom_voice", args.size)
    name = torch.cuda.get_device_name() if on_cuda else "cpu"
    out = args.out or ROOT / "benchmarks" / "results" / f"options_{args.size}_{name.replace(' ', '_')}.json"
    results = {"device": name, "torch": torch.__version__, "size": args.size, "dtype": dtype,
               "one_stream_frames": args.frames, "batch": args.batch, "batch_frames": args.batch_frames,
               "gate_prompts": args.gate_prompts, "gate_frames": args.gate_frames,
               "gates": "against bf16 on the frames it generated (teacher forcing); runaways need real weights "
                        "(qtts eval)", "rows": []}
    reference, frames, tts = None, None, None
    with torch.no_grad():
        for option in options:
            started = time.perf_counter()
            reason = skip_reason(option, torch.device(device))
            row = {"option": option, "skipped": reason} if reason is not None else {"option": option}
            try:
                if reason is None:
                    tts = TTS.from_pretrained(folder, device=device, dtype=dtype, max_len=args.max_len,
                                              **OPTIONS[option])
                    row.update(measure_speed(tts, args))
                    if reference is None:  # bf16: the frames every option is fed
                        reference, row["gates"] = tts, "reference"
                        frames = gates.reference_frames(reference, gate_requests(reference, args.gate_prompts),
                                                        frames=args.gate_frames)
                    release(tts)
                    if tts is not reference:
                        row.update(measure_gates(reference, tts, option, frames))
            except Exception as exc:  # one configuration's failure leaves the others' figures
                if reference is None:
                    raise
                row["error"] = f"{type(exc).__name__}: {exc}"
            tts = None
            gc.collect()
            if on_cuda:
                torch.cuda.empty_cache()
                row["peak_memory_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
                torch.cuda.reset_peak_memory_stats()
            row["seconds"] = round(time.perf_counter() - started, 1)
            results["rows"].append(row)
            print({key: value for key, value in row.items() if not key.endswith("layer_cosines")}, flush=True)
            if args.out or not args.smoke:  # after each configuration: a timeout still leaves the rows done
                bench.save_results(results, out)
    print_table(results["rows"])


if __name__ == "__main__":
    main()
