"""`qtts voices`, `qtts fixture` and `qtts bench`."""
from __future__ import annotations

import argparse
import json
import sys

from . import checks


def voices(args: argparse.Namespace) -> None:
    """Print the model's type, speakers and languages (reads config.json only)."""
    from ..checkpoint import resolve_checkpoint
    from ..config import load_model_config

    cfg = load_model_config(resolve_checkpoint(args.model))
    print(f"model type: {cfg.model_type} ({cfg.model_size})")
    if cfg.speakers:
        print("speakers: " + ", ".join(cfg.speakers))
    print("languages: " + ", ".join(cfg.languages))


def fixture(args: argparse.Namespace) -> None:
    """Write a random-weight checkpoint folder, with a progress bar of the bytes written."""
    from ..testing.fixtures import write_checkpoint

    folder = checks.writable_folder(args.out, create=True)
    write_checkpoint(folder, model_type=args.type, size=args.size, seed=args.seed, progress=True)
    print(f"wrote a random-weight {args.size} {args.type} checkpoint to {folder}")


def bench(args: argparse.Namespace) -> None:
    """Time one stream and print the results as JSON, with a progress bar of the stages on stderr."""
    from tqdm import tqdm

    from .. import bench as measurements
    from ..api import TTS

    tts = TTS.from_pretrained(args.model, device=args.device, dtype=args.dtype,
                             fp8_talker=args.fp8_talker, fp8_predictor=args.fp8_predictor, kv_cache=args.kv_cache)
    with tqdm(desc="bench", unit="stage", file=sys.stderr) as bar:
        def on_stage(done: int, total: int, name: str) -> None:
            bar.total, bar.n = total, done
            bar.set_description(f"bench: {name}")

        result = measurements.run(tts, frames=args.frames, requests=args.requests, on_stage=on_stage)
        bar.n = bar.total
        bar.set_description("bench: done")
    print(json.dumps(result, indent=1))
