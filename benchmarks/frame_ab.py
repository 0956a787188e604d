"""Batch-1 frame halves (graphed) with the code predictor's projections as fused GEMVs and as cuBLAS GEMMs.

A quick A/B for a short device budget: one model, one row, no prompt graphs; prints one JSON line per
variant as soon as it is measured. usage: python benchmarks/frame_ab.py [--size 1.7b]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from profile_engine import time_frame_steps  # noqa: E402

from qtts.api import TTS  # noqa: E402
from qtts.engine.engine import Engine  # noqa: E402
from qtts.testing.fixtures import fixture_dir  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", default="1.7b")
    parser.add_argument("--attend", type=int, default=256)
    args = parser.parse_args()
    started = time.perf_counter()
    tts = TTS.from_pretrained(fixture_dir("custom_voice", args.size), device="cuda", dtype="bf16", max_len=1024)
    predictor = tts.talker.code_predictor.model
    for gemv in (True, False):
        predictor.gemv = gemv  # read when the frame's graphs are captured
        engine = Engine(tts, max_batch=1, max_len=1024)
        timing = time_frame_steps(engine, [1], args.attend, calls=100)[1]
        print(json.dumps({"device": torch.cuda.get_device_name(), "size": args.size, "predictor_gemv": gemv,
                          **timing, "elapsed_s": round(time.perf_counter() - started, 1)}), flush=True)
        del engine


if __name__ == "__main__":
    main()
