"""Where the serving engine's time goes at N concurrent streams (GPU): the frame step alone, and the loop by phase.

usage: python benchmarks/profile_engine.py [--size 1.7b] [--streams 1,16,64,128] [--frames 160] [--out FILE]
Part 1 replays the captured halves of the frame step at each batch size (synchronised, ms per call). Part 2 submits N
requests of a forced length straight to an Engine (no HTTP), drains them from reader threads, and times each
loop phase over the iterations when all N streams generate: once as they run (wall time per iteration), once
with a device sync after each phase (attribution). Part 3 profiles a few loop iterations at the largest N
(CPU-side op counts). Writes JSON (default benchmarks/results/engine_profile_<device>.json).
"""
import argparse
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qtts.api import TTS  # noqa: E402
from qtts.bench import save_results  # noqa: E402
from qtts.engine.engine import Engine  # noqa: E402
from qtts.testing.fixtures import fixture_dir  # noqa: E402

PHASES = ("_drop_cancelled", "_launch_step", "_prepare_prompts", "_collect_audio", "_finish_step", "_admit")


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_frame_steps(engine: Engine, batches: list[int], attend: int, calls: int = 30) -> dict:
    """ms per call of the two graphed halves of a frame (code predictor, talker), alone and together."""
    runner, results = engine.runner, {}

    def timed(fn) -> float:
        for _ in range(2):  # warm-up and capture, if the engine's warm-up did not
            fn()
        sync()
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        sync()
        return round((time.perf_counter() - start) / calls * 1e3, 3)

    def advance(batch):
        runner.state.positions[:batch] = 0
        runner.advance(batch, attend)

    for batch in batches:
        results[batch] = {"predict_ms": timed(lambda: runner.predict_frame(batch)),
                          "advance_ms": timed(lambda: advance(batch)),
                          "frame_ms": timed(lambda: (runner.predict_frame(batch), advance(batch)))}
    return results


def gemv_comparison(tts: TTS, attend: int) -> dict:
    """Frame halves at batch 1 with the code predictor's one-row projections as fused GEMVs (default) and as
    cuBLAS GEMMs (QTTS_DISABLE_GEMV=1), each in a one-row engine of its own (the switch is read at capture)."""
    import os

    results, before = {}, os.environ.get("QTTS_DISABLE_GEMV")
    if before == "1":  # switched off for this session (gpu_session.sh does it when the kernel fails its tests)
        return {"skipped": "QTTS_DISABLE_GEMV=1"}
    for name, disabled in (("gemv", None), ("cublas", "1")):
        if disabled:
            os.environ["QTTS_DISABLE_GEMV"] = disabled
        try:
            engine = Engine(tts, max_batch=1, max_len=1024)
            engine.warmup(max_attend=attend)
            results[name] = time_frame_steps(engine, [1], attend, calls=100)[1]
        finally:
            if before is None:
                os.environ.pop("QTTS_DISABLE_GEMV", None)
            else:
                os.environ["QTTS_DISABLE_GEMV"] = before
        del engine
    return results


def profile_frame_kernels(engine: Engine, batch: int, attend: int, frames: int = 20) -> dict:
    """The kernels of `frames` graphed frame steps at `batch`: per-frame count and the top ones by GPU time."""
    from torch.profiler import ProfilerActivity, profile

    runner = engine.runner

    def frame():
        runner.predict_frame(batch)
        runner.state.positions[:batch] = 0
        runner.advance(batch, attend)

    frame()
    sync()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(frames):
            frame()
        sync()
    launches = sum(e.count for e in prof.key_averages()
                   if getattr(e, "self_device_time_total", 0) > 0 and not e.key.startswith(("Memcpy", "Memset")))
    table = prof.key_averages().table(sort_by="self_device_time_total", row_limit=30)
    return {"batch": batch, "kernels_per_frame": round(launches / frames, 1), "table": table}


class PhaseTimer:
    """Wraps the engine's loop phases; records the seconds of each while `streams` rows generate."""

    def __init__(self, engine: Engine, streams: int, sync: bool):
        self.engine, self.streams, self.sync = engine, streams, sync
        self.times: dict[str, list[float]] = defaultdict(list)
        self.iterations: list[float] = []
        for name in PHASES:
            setattr(engine, name, self._wrap(name, getattr(engine, name)))
        iteration = engine._iteration

        def timed_iteration():
            start = time.perf_counter()
            iteration()
            if len(engine._rows) == self.streams:
                self.iterations.append(time.perf_counter() - start)
        engine._iteration = timed_iteration

    def _wrap(self, name, fn):
        def timed(*args, **kw):
            start = time.perf_counter()
            result = fn(*args, **kw)
            if self.sync and torch.cuda.is_available():
                # the loop's stream only: the codec's stream is waited for by the phase that reads it
                torch.cuda.current_stream().synchronize()
            if len(self.engine._rows) == self.streams:
                self.times[name].append(time.perf_counter() - start)
            return result
        return timed

    def summary(self) -> dict:
        ms = lambda xs: round(float(np.mean(xs)) * 1e3, 3) if xs else None  # noqa: E731
        return {"iterations": len(self.iterations), "iteration_ms": ms(self.iterations),
                "iteration_p90_ms": round(float(np.percentile(self.iterations, 90)) * 1e3, 3) if self.iterations
                else None, **{f"{name.strip('_')}_ms": ms(self.times[name]) for name in PHASES}}


def run_streams(tts: TTS, engine: Engine, count: int, frames: int) -> None:
    requests = [tts.request(f"Stream number {i} says a sentence of ordinary length.", speaker=tts.speakers[0],
                            language="english", seed=i, max_frames=frames, min_frames=frames) for i in range(count)]
    streams = [engine.submit(r) for r in requests]
    readers = [threading.Thread(target=lambda s=s: sum(len(c) for c in s)) for s in streams]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join()


def profile_loop(tts: TTS, engine: Engine, count: int, frames: int, out: Path | None) -> dict:
    """torch.profiler over the loop while `count` streams run; CPU op totals (and a trace under out)."""
    import gzip
    import shutil

    from torch.profiler import ProfilerActivity, profile, record_function

    def labelled(name, fn):  # the loop's phases show up as ranges in the trace
        def run(*args, **kw):
            with record_function(name):
                return fn(*args, **kw)
        return run

    names = PHASES + ("_wait_for_step", "_send_first_audio", "_start")
    for name in names:
        setattr(engine, name, labelled(name, getattr(engine, name)))
    try:
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            run_streams(tts, engine, count, frames)
    finally:
        for name in names:
            vars(engine).pop(name, None)
    table = prof.key_averages().table(sort_by="cpu_time_total", row_limit=40)
    if out is not None:
        (out / f"engine_profile_{count}.txt").write_text(table)
        trace = out / f"engine_trace_{count}.json"
        prof.export_chrome_trace(str(trace))
        with trace.open("rb") as source, gzip.open(f"{trace}.gz", "wb") as target:
            shutil.copyfileobj(source, target)
        trace.unlink()
    return {"top_cpu_ops": table}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="1.7b")
    parser.add_argument("--streams", default="1,16,64,128")
    parser.add_argument("--frames", type=int, default=160)
    parser.add_argument("--max-batch", type=int, default=128)
    parser.add_argument("--attend", type=int, default=256)
    parser.add_argument("--profile-streams", type=int, default=64)
    parser.add_argument("--out", default=None)
    parser.add_argument("--smoke", action="store_true", help="tiny fixture on CPU: checks the script runs")
    args = parser.parse_args()
    counts = [int(n) for n in args.streams.split(",")]

    if args.smoke:
        tts = TTS.from_pretrained(fixture_dir("custom_voice", "tiny"), device="cpu", dtype="fp32", max_len=512)
    else:
        tts = TTS.from_pretrained(fixture_dir("custom_voice", args.size), device="cuda", dtype="bf16")
    engine = Engine(tts, max_batch=args.max_batch, max_len=tts.max_len)
    started = time.perf_counter()
    engine.warmup(max_attend=512)
    warmup_s = time.perf_counter() - started
    buckets = [b for b in engine.batch_buckets if b in set(counts) | {1, 8, 16, 32, 64, 128}]
    device = torch.cuda.get_device_name() if tts.device.type == "cuda" else "cpu"
    results = {"device": device, "torch": torch.__version__, "size": args.size,
               "max_batch": args.max_batch, "warmup_s": round(warmup_s, 1),
               "frame_step_ms": time_frame_steps(engine, buckets, args.attend), "loop": {}}
    print(results, flush=True)
    if tts.device.type == "cuda":
        results["batch_1_gemv_vs_cublas"] = gemv_comparison(tts, args.attend)
        print("batch 1, fused GEMV vs cuBLAS:", results["batch_1_gemv_vs_cublas"], flush=True)
        kernels = profile_frame_kernels(engine, 1, args.attend)
        results["frame_kernels_batch_1"] = kernels
        print("kernels per frame at batch 1:", kernels["kernels_per_frame"], flush=True)
        print(kernels["table"], flush=True)
    engine.start()
    try:
        for sync in (False, True):
            for count in counts:
                timer = PhaseTimer(engine, count, sync)
                begin = time.perf_counter()
                run_streams(tts, engine, count, args.frames)
                for name in PHASES + ("_iteration",):  # unwrap
                    vars(engine).pop(name, None)
                row = {**timer.summary(), "wall_s": round(time.perf_counter() - begin, 2)}
                results["loop"][f"{count}{'_sync' if sync else ''}"] = row
                print(count, "sync" if sync else "", row, flush=True)
        import os
        out = Path(os.environ["OUT"]) if os.environ.get("OUT") else None
        results["profile"] = profile_loop(tts, engine, args.profile_streams, 60, out)
        print(results["profile"]["top_cpu_ops"], flush=True)
    finally:
        engine.stop()
    if args.out or not args.smoke:
        save_results(results, args.out or ROOT / "benchmarks" / "results" / f"engine_profile_{device.replace(' ', '_')}.json")


if __name__ == "__main__":
    main()
