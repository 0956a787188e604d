"""Single-stream speed of qtts on random-weight checkpoints at the real shapes.

usage: python benchmarks/bench_speed.py --sizes 0.6b,1.7b [--frames 250] [--requests 20] [--batch 64] [--out FILE]
Everything runs through the Python API, on the engine the server runs: one stream (ms per frame, first
audible audio) and, with --batch N, an offline batch of N requests of --batch-frames frames through
TTS.generate_many (audio seconds per second). Writes JSON (default benchmarks/results/speed_<device>.json). The upstream and
faster-qwen3-tts anchors come from ../shared/bench/bench_anchor.py on the same checkpoints.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qtts import bench  # noqa: E402
from qtts.api import TTS  # noqa: E402
from qtts.testing.fixtures import fixture_dir  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="0.6b,1.7b")
    parser.add_argument("--type", default="custom_voice")
    parser.add_argument("--frames", type=int, default=250)
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--eager", action="store_true", help="also time without CUDA graphs")
    parser.add_argument("--batch", type=int, default=0, help="also an offline batch of this many requests")
    parser.add_argument("--batch-frames", type=int, default=150)
    parser.add_argument("--batch-type", default="base", help="model type of the batch run (base: x-vector voice)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    results = {"device": name, "torch": torch.__version__, "runs": []}
    for size in args.sizes.split(","):
        folder = fixture_dir(args.type, size)
        variants = [True, False] if args.eager else [None]
        for graphs in variants:
            tts = TTS.from_pretrained(folder, device=device, use_graphs=graphs)
            run = {"size": size, **bench.run(tts, frames=args.frames, requests=args.requests)}
            results["runs"].append(run)
            print(json.dumps(run), flush=True)
            del tts
            if device == "cuda":
                torch.cuda.empty_cache()
        if args.batch:
            tts = TTS.from_pretrained(fixture_dir(args.batch_type, size), device=device)
            voice = None
            if tts.model_type == "base":  # an x-vector voice from a second of a tone, as a user's reference
                tone = 0.3 * np.sin(2 * np.pi * 220 * np.arange(24000, dtype=np.float32) / 24000)
                voice = tts.create_voice(tone, sample_rate=24000)
            run = {"size": size, "model_type": tts.model_type,
                   **bench.bench_batch(tts, requests=args.batch, frames=args.batch_frames, voice=voice)}
            results["batch"] = results.get("batch", []) + [run]
            print(json.dumps(run), flush=True)
            del tts
            if device == "cuda":
                torch.cuda.empty_cache()
    bench.save_results(results, args.out or f"benchmarks/results/speed_{name.replace(' ', '_')}.json")


if __name__ == "__main__":
    main()
