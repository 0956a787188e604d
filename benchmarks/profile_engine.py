"""Where the serving engine's time goes at N concurrent streams: talker, code predictor, codec, sampling, copies and
the host's gaps between them, per loop iteration (one frame of every stream).

usage: python benchmarks/profile_engine.py [--size 1.7b] [--streams 32,64,128] [--out FILE] [--smoke]
For each N: N requests of a forced length go to one Engine (no HTTP) with the server's chunk schedule, readers
drain their streams on threads of their own, and the caller's thread steps the loop. Once all N generate (and
their chunk schedules have reached full-size chunks), `--iterations` iterations are timed as they run (wall ms per
iteration, audio seconds per second), then `--profile-iterations` more run under torch.profiler: every device
event (kernel, memcpy, memset) is put in one category and its GPU time summed per iteration; the time the device
was busy at all (the union over streams) taken from the unprofiled iteration's wall time is the host gap. The
Chrome trace of a few iterations at the largest N goes to $OUT (else a temporary folder), gzipped; with --admit, one
of a few arriving iterations too, with the Python calls, and the host's waits on the device summed by where they
happen (`blocking_calls`). Writes JSON
(default benchmarks/results/engine_profile_<device>.json; under --smoke only with --out).
"""
import argparse
import bisect
import gzip
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile, record_function

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qtts.api import BATCH_PREFILLS_PER_FRAME, TTS  # noqa: E402
from qtts.bench import save_results  # noqa: E402
from qtts.engine.engine import Engine  # noqa: E402
from qtts.engine.scheduler import Scheduler  # noqa: E402
from qtts.testing.fixtures import fixture_dir  # noqa: E402

CATEGORIES = ("talker", "code_predictor", "codec", "prefill", "sampling", "copies", "other")
# the ranges the profile puts around the engine's device work (object, method, range name, category)
RANGES = (("runner", "advance", "qtts.talker", "talker"),
          ("runner", "predict_frame", "qtts.code_predictor", "code_predictor"),
          ("codec", "decode", "qtts.codec", "codec"),
          ("runner", "prefill_rows", "qtts.prefill", "prefill"))
RANGE_CATEGORY = {name: category for _, _, name, category in RANGES}
# host calls that can wait for device work (a copy from pageable memory waits for its stream; freeing, for the device)
BLOCKING_CALLS = ("cudaStreamSynchronize", "cudaEventSynchronize", "cudaDeviceSynchronize", "cudaMemcpy",
                  "cudaMemcpyAsync", "cudaFree", "cudaFreeHost")
BLOCKING_FRAMES = 4  # of the qtts calls around a blocking call, as many innermost ones name it
DEVICE_ACTIVITIES = ("kernel", "gpu_memcpy", "gpu_memset")  # the trace's categories of device work
# the loop's host phases, as ranges of their own in the trace
PHASES = ("_drop_cancelled", "_feed_text", "_launch_step", "_prepare_prompts", "_collect_audio", "_finish_step",
          "_wait_for_step", "_send_first_audio", "_admit")
# the samplers' kernels and ops, by name (penalty and masking are elementwise kernels: they stay with their half)
SAMPLING_KERNELS = ("sample_kernel", "noise", "sort", "topk", "argmax", "softmax", "scan", "cumsum", "multinomial")
ATTRIBUTION_NOTE = ("Kernels are attributed by name first (memcpy/memset: copies; sampler kernels: sampling), then to "
                    "the innermost qtts.* range around them on their stream (the trace's device annotations; a CUDA "
                    "graph replay draws its range there), else around the host call that launched them. Category "
                    "times are sums of kernel durations; the codec runs on a stream of its own, overlapping the "
                    "talker, so they can add up to more than gpu_busy_ms (the union).")


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def label(engine: Engine) -> None:
    """Put a profiler range around each call of the engine's device work and of its loop phases (instance
    attributes over the methods: the engine itself runs without them)."""
    def labelled(name, fn):
        def run(*args, **kw):
            with record_function(name):
                return fn(*args, **kw)
        return run

    for owner, method, name, _ in RANGES:
        target = getattr(engine, owner)
        setattr(target, method, labelled(name, getattr(target, method)))
    for phase in PHASES:
        setattr(engine, phase, labelled(f"engine.{phase.strip('_')}", getattr(engine, phase)))


def category(kernel: str, ops: list[str], ranges: list[str]) -> str:
    """The category of a device event: by its kernel name (or, launched eagerly, the names of the aten ops around its
    launch), then by the innermost qtts range among `ranges`."""
    lowered = kernel.lower()
    if lowered.startswith(("memcpy", "memset")):
        return "copies"
    names = [lowered] + [name.lower() for name in ops if name.startswith("aten::")]
    if any(pattern in name for name in names for pattern in SAMPLING_KERNELS):
        return "sampling"
    return next((RANGE_CATEGORY[name] for name in ranges if name in RANGE_CATEGORY), "other")


def busy_us(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of (start, end) intervals."""
    total, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total


class Spans:
    """Ranges (start, end, name) of one thread or stream, nested as the profiler records them: `around(t)` gives the
    names of those containing t, innermost first."""

    def __init__(self, spans: list[tuple[float, float, str]]):
        self.spans = sorted(spans, key=lambda span: (span[0], -span[1]))  # an enclosing range before what it holds
        self.starts = [start for start, _, _ in self.spans]
        self.parents, open_ = [], []  # index of the innermost range holding each one (-1: none)
        for index, (start, end, _) in enumerate(self.spans):
            while open_ and self.spans[open_[-1]][1] < end:
                open_.pop()
            self.parents.append(open_[-1] if open_ else -1)
            open_.append(index)

    def around(self, t: float) -> list[str]:
        # every range holding t holds the last one starting at or before t, or is it
        index = bisect.bisect_right(self.starts, t) - 1
        while index >= 0 and self.spans[index][1] < t:
            index = self.parents[index]
        names = []
        while index >= 0:
            names.append(self.spans[index][2])
            index = self.parents[index]
        return names


def grouped(events: list[dict]) -> dict:
    """(pid, tid) -> Spans of the events."""
    spans = defaultdict(list)
    for e in events:
        spans[(e["pid"], e["tid"])].append((e["ts"], e["ts"] + e.get("dur", 0), e["name"]))
    return defaultdict(lambda: Spans([]), {key: Spans(value) for key, value in spans.items()})


def device_work(events: list[dict], on_cuda: bool) -> list[tuple[dict, list[str], list[str]]]:
    """(event, the aten ops around its launch, the qtts ranges around it, innermost first) for every kernel, memcpy
    and memset of a Chrome trace's events.

    A kernel's ranges are the device annotations around it on its stream (a CUDA graph replay draws its range on the
    stream, and torch 2.11 does not link graph kernels to the call that launched them), else the host ranges around
    its launch call (found by correlation id). Without CUDA (the smoke run), every leaf aten op on the host stands
    in for a kernel, so the attribution runs the same way."""
    spans = [e for e in events if e.get("ph") == "X"]
    host_ranges = grouped([e for e in spans if e.get("cat") == "user_annotation" and e["name"] in RANGE_CATEGORY])
    ops = [e for e in spans if e.get("cat") == "cpu_op"]
    host_ops = grouped(ops)
    if not on_cuda:
        leaves = []
        for key, thread in host_ops.items():
            for (start, end, name), following in zip(thread.spans, thread.starts[1:] + [float("inf")]):
                if name.startswith("aten::") and following >= end:
                    leaves.append({"name": name, "ts": start, "dur": end - start, "pid": key[0], "tid": key[1]})
        return [(e, host_ops[(e["pid"], e["tid"])].around(e["ts"]), host_ranges[(e["pid"], e["tid"])].around(e["ts"]))
                for e in leaves]
    device_ranges = grouped([e for e in spans if e.get("cat") == "gpu_user_annotation"
                             and e["name"] in RANGE_CATEGORY])
    launches = {e["args"]["correlation"]: e for e in spans
                if e.get("cat") in ("cuda_runtime", "cuda_driver") and "correlation" in e.get("args", {})}
    work = []
    for e in spans:
        if e.get("cat") not in DEVICE_ACTIVITIES:
            continue
        launch = launches.get(e.get("args", {}).get("correlation"))
        host = (launch["pid"], launch["tid"]) if launch is not None else None
        around_launch = host_ops[host].around(launch["ts"]) if launch is not None else []
        ranges = device_ranges[(e["pid"], e["tid"])].around(e["ts"])
        if not ranges and launch is not None:
            ranges = host_ranges[host].around(launch["ts"])
        work.append((e, around_launch, ranges))
    return work


def trace_events(prof, keep: Path | None = None) -> list[dict]:
    """The profile's Chrome trace events; keep: the trace is also saved there, gzipped (keep + .gz)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "trace.json"
        prof.export_chrome_trace(str(path))
        if keep is not None:
            with path.open("rb") as source, gzip.open(f"{keep}.gz", "wb") as target:
                shutil.copyfileobj(source, target)
            print(f"trace: {keep}.gz", flush=True)
        return json.loads(path.read_text())["traceEvents"]


def attribute(events: list[dict], on_cuda: bool) -> dict:
    """GPU time (us) per category, the device's busy time (union of all device events), and the top kernels."""
    totals, kernels, intervals = defaultdict(float), defaultdict(float), []
    for event, ops, ranges in device_work(events, on_cuda):
        start, end = event["ts"], event["ts"] + event.get("dur", 0)
        totals[category(event["name"], ops, ranges)] += end - start
        kernels[event["name"]] += end - start
        intervals.append((start, end))
    top = sorted(kernels.items(), key=lambda item: -item[1])[:15]
    return {"category_us": dict(totals), "busy_us": busy_us(intervals), "top_kernels_us": top,
            "device_events": len(intervals)}


def attribute_or_error(prof, on_cuda: bool) -> dict:
    """attribute() of the profile, or, where it fails or leaves most device time unplaced, an "error" saying so (the
    timing around the profile still counts)."""
    try:
        device = attribute(trace_events(prof), on_cuda)
    except Exception as error:
        return {"category_us": {}, "busy_us": 0.0, "top_kernels_us": [], "device_events": 0,
                "error": f"{type(error).__name__}: {error}"}
    if device["category_us"].get("other", 0.0) > 0.5 * device["busy_us"] > 0:
        device["error"] = "over half the device time fell to 'other': no qtts range around it on device or host"
    return device


def profiled(on_cuda: bool, with_stack: bool = False):
    """A torch.profiler context over the host and, on CUDA, the device (with_stack: the Python calls too)."""
    return profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda else []),
                   with_stack=with_stack)


def blocking_calls(events: list[dict], min_ms: float = 0.05) -> list[dict]:
    """Where the host waited on the device: each runtime call in BLOCKING_CALLS that lasted min_ms or more, by the
    qtts Python calls around it (innermost first; a trace made with_stack), summed; longest first."""
    calls = [e for e in events
             if e.get("ph") == "X" and e.get("name") in BLOCKING_CALLS and e.get("dur", 0) >= 1e3 * min_ms]
    python = defaultdict(list)  # thread -> its qtts frames (start, end, name)
    for e in events:
        if e.get("ph") == "X" and e.get("cat") == "python_function" and "qtts/" in e.get("name", ""):
            python[e["tid"]].append((e["ts"], e["ts"] + e.get("dur", 0), e["name"].split("qtts/")[-1]))
    threads = defaultdict(lambda: Spans([]), {tid: Spans(frames) for tid, frames in python.items()})
    totals = defaultdict(lambda: [0, 0.0])
    for call in calls:
        frames = threads[call["tid"]].around(call["ts"])
        key = (call["name"], " < ".join(frames[:BLOCKING_FRAMES]))
        totals[key][0] += 1
        totals[key][1] += call["dur"] / 1e3
    return [{"call": name, "where": where, "count": count, "ms": round(ms, 3)}
            for (name, where), (count, ms) in sorted(totals.items(), key=lambda item: -item[1][1])]


def start_reader(stream) -> threading.Thread:
    """A thread draining `stream`, as a client would."""
    reader = threading.Thread(target=lambda: sum(len(chunk) for chunk in stream), daemon=True)
    reader.start()
    return reader


def host_phases(prof) -> dict:
    """Host ms of each loop phase range over the profiled iterations (inclusive of what it calls)."""
    totals = defaultdict(float)
    for event in prof.events():
        if event.device_type == DeviceType.CPU and event.name.startswith("engine."):
            totals[event.name[len("engine."):]] += event.time_range.end - event.time_range.start
    return totals


def requests_for(tts: TTS, count: int, frames: int, first: int = 0) -> list:
    """Requests number first..first+count-1 (each its own seed and text)."""
    return [tts.request(f"Stream number {i} says a sentence of ordinary length.", speaker=tts.speakers[0],
                        language="english", seed=i, max_frames=frames, min_frames=frames)
            for i in range(first, first + count)]


def run_iterations(engine: Engine, count: int, iterations: int) -> float:
    """Step the loop `iterations` times (all `count` streams generating throughout); wall seconds."""
    sync()
    start = time.perf_counter()
    for _ in range(iterations):
        engine.step()
        if len(engine._rows) != count:
            raise RuntimeError(f"a stream ended while {count} were measured: raise --frames")
    sync()
    return time.perf_counter() - start


def timed_step(engine: Engine) -> float:
    """One loop iteration, synchronized before and after: its seconds."""
    sync()
    start = time.perf_counter()
    engine.step()
    sync()
    return time.perf_counter() - start


def run_admitting(tts: TTS, engine: Engine, streams: list, readers: list, count: int, iterations: int,
                  args) -> float:
    """Step the loop `iterations` times, each replacing args.admit streams with new ones (the oldest cancelled,
    as many submitted, admitted in that iteration): the loop at N streams with arrivals. Seconds spent in the
    loop's steps (a server submits on other threads, so submitting is not timed)."""
    first = len(readers)  # one reader per stream ever submitted: new seeds and texts
    fresh = iter(requests_for(tts, args.admit * iterations, args.frames, first))
    stepping = 0.0
    for _ in range(iterations):
        for _ in range(args.admit):
            streams.pop(0).cancel()
            stream = engine.submit(next(fresh))
            streams.append(stream)
            readers.append(start_reader(stream))
        stepping += timed_step(engine)
        if len(engine._rows) != count:
            raise RuntimeError(f"{len(engine._rows)} rows while {count} were measured with arrivals")
    return stepping


def measure_admissions(tts: TTS, engine: Engine, streams: list, readers: list, count: int, steady_ms: float,
                       args, trace_dir: Path | None = None) -> dict:
    """What args.admit arrivals per iteration cost the loop: timed, then profiled, against the steady iteration
    (each step synchronized: the steady figure to compare with is `steady_synced_ms`). With trace_dir, a few more
    such iterations are traced with their Python calls, and where the host waited on the device is summed."""
    late_before = engine.stats()["late_graph_captures"]
    stepping_s = run_admitting(tts, engine, streams, readers, count, args.iterations, args)
    on_cuda = tts.device.type == "cuda"
    with profiled(on_cuda) as prof:
        run_admitting(tts, engine, streams, readers, count, args.profile_iterations, args)
    device = attribute_or_error(prof, on_cuda)
    per_iteration = lambda us: round(us / 1e3 / args.profile_iterations, 3)  # noqa: E731
    iteration_ms = stepping_s / args.iterations * 1e3
    blocking = None
    if trace_dir is not None:
        with profiled(on_cuda, with_stack=True) as traced:
            run_admitting(tts, engine, streams, readers, count, args.trace_iterations, args)
        events = trace_events(traced, keep=trace_dir / f"engine_trace_admit_{count}.json")
        blocking = blocking_calls(events)[:12]
    return {"admitted_per_iteration": args.admit, "iteration_ms": round(iteration_ms, 3),
            "steady_synced_ms": round(steady_ms, 3),
            "ms_per_admission": round((iteration_ms - steady_ms) / args.admit, 3),
            "late_graph_captures": engine.stats()["late_graph_captures"] - late_before,
            "gpu_ms": {name: per_iteration(device["category_us"].get(name, 0.0)) for name in CATEGORIES},
            "gpu_busy_ms": per_iteration(device["busy_us"]),
            "host_phase_ms": {name: per_iteration(us) for name, us in host_phases(prof).items()},
            **({"attribution_error": device["error"]} if "error" in device else {}),
            **({"blocking_calls": blocking} if blocking is not None else {})}


def synced_iteration_ms(engine: Engine, count: int, iterations: int) -> float:
    """The steady iteration timed as run_admitting times its steps (each step synchronized)."""
    total = sum(timed_step(engine) for _ in range(iterations))
    if len(engine._rows) != count:
        raise RuntimeError(f"a stream ended while {count} were measured: raise --frames")
    return total / iterations * 1e3


def profile_streams(tts: TTS, engine: Engine, count: int, args, trace_dir: Path | None) -> dict:
    """One N: fill the engine, settle, time, profile (and trace), then cancel the streams."""
    streams = [engine.submit(request) for request in requests_for(tts, count, args.frames)]
    readers = [start_reader(stream) for stream in streams]
    try:
        ramp = 0
        while len(engine._rows) < count:
            if not engine.step():
                raise RuntimeError("the engine went idle before every stream started")
            ramp += 1
        for _ in range(args.settle):  # the chunk schedules reach their full-size chunks
            engine.step()
        late_before = engine.stats()["late_graph_captures"]
        wall_s = run_iterations(engine, count, args.iterations)
        frame_s = tts.model.codec_config.decoder.samples_per_frame / tts.sample_rate
        on_cuda = tts.device.type == "cuda"
        with profiled(on_cuda) as prof:
            profiled_s = run_iterations(engine, count, args.profile_iterations)
        device, phases = attribute_or_error(prof, on_cuda), host_phases(prof)
        if trace_dir is not None:
            with profiled(on_cuda) as traced:
                run_iterations(engine, count, args.trace_iterations)
            trace_events(traced, keep=trace_dir / f"engine_trace_{count}.json")
        late = engine.stats()["late_graph_captures"] - late_before
        admissions = None
        if args.admit:
            try:
                steady_ms = synced_iteration_ms(engine, count, args.iterations)
                admissions = measure_admissions(tts, engine, streams, readers, count, steady_ms, args, trace_dir)
            except Exception as error:  # the steady figures still count
                admissions = {"error": f"{type(error).__name__}: {error}"}
    finally:
        for stream in streams:
            stream.cancel()
        while engine.step():
            pass
        for reader in readers:
            reader.join()
    per_iteration = lambda us: round(us / 1e3 / args.profile_iterations, 3)  # noqa: E731
    iteration_ms = wall_s / args.iterations * 1e3
    profiled_ms = profiled_s / args.profile_iterations * 1e3
    busy_ms = per_iteration(device["busy_us"])
    return {"streams": count, "ramp_iterations": ramp, "iterations": args.iterations,
            "iteration_ms": round(iteration_ms, 3), "audio_s_per_s": round(count * frame_s / (iteration_ms / 1e3), 1),
            "late_graph_captures": late, "profiled_iterations": args.profile_iterations,
            "profiled_iteration_ms": round(profiled_ms, 3),
            "gpu_ms": {name: per_iteration(device["category_us"].get(name, 0.0)) for name in CATEGORIES},
            # the device's busy time as profiled, against the iteration as it runs unprofiled
            "gpu_busy_ms": busy_ms, "host_gap_ms": round(iteration_ms - busy_ms, 3),
            "profiled_host_gap_ms": round(profiled_ms - busy_ms, 3),
            "host_phase_ms": {name: per_iteration(us) for name, us in phases.items()},
            "device_events": device["device_events"], **({"attribution_error": device["error"]} if "error" in device else {}),
            "top_kernels_ms": [(name, per_iteration(us)) for name, us in device["top_kernels_us"]],
            **({"admitting": admissions} if admissions is not None else {})}


def print_table(rows: list[dict]) -> None:
    columns = ("streams", "iteration_ms", "audio_s_per_s") + CATEGORIES + ("gpu_busy", "host_gap")
    print(" ".join(f"{name:>14}" for name in columns))
    for row in rows:
        values = [row["streams"], row["iteration_ms"], row["audio_s_per_s"], *(row["gpu_ms"][c] for c in CATEGORIES),
                  row["gpu_busy_ms"], row["host_gap_ms"]]
        print(" ".join(f"{value:>14}" for value in values))
    print("(ms per iteration; categories and GPU busy time from the profiled iterations, host gap = iteration - busy)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="1.7b")
    parser.add_argument("--streams", default="32,64,128")
    parser.add_argument("--frames", type=int, default=300, help="forced length of every request (a cap only: the "
                        "streams are cancelled once measured)")
    parser.add_argument("--max-len", type=int, default=1024)
    parser.add_argument("--settle", type=int, default=30, help="iterations between the last admission and timing")
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--profile-iterations", type=int, default=20)
    parser.add_argument("--trace-iterations", type=int, default=4, help="in the trace of the largest N (0: none)")
    parser.add_argument("--admit", type=int, default=0, help="then iterations that each replace this many streams "
                        "with new ones: what an arrival costs (0: steady iterations only)")
    parser.add_argument("--out", default=None)
    parser.add_argument("--smoke", action="store_true", help="tiny fixture on CPU, a few iterations: checks the script")
    args = parser.parse_args()
    if args.smoke:
        args.size, args.max_len = "tiny", 256
        args.streams, args.frames, args.settle = "2,3", 60, 2
        args.iterations, args.profile_iterations, args.trace_iterations, args.admit = 3, 2, 2, 1
    counts = sorted(int(n) for n in args.streams.split(","))
    on_cuda = torch.cuda.is_available() and not args.smoke
    tts = TTS.from_pretrained(fixture_dir("custom_voice", args.size), device="cuda" if on_cuda else "cpu",
                              dtype="bf16" if on_cuda else "fp32", max_len=args.max_len)
    # the server's engine, but graphs for the measured batch sizes only (fewer to capture) and the offline API's
    # admission cap, so the rows fill in a few iterations; the measured iterations admit nothing
    max_batch = counts[-1]
    engine = Engine(tts.model, max_batch=max_batch, max_len=args.max_len, batch_buckets=tuple(counts),
                    scheduler=Scheduler(max_batch, max_prefills_per_frame=BATCH_PREFILLS_PER_FRAME, low_buffer_s=0))
    started = time.perf_counter()
    engine.warmup()
    warmup_s = time.perf_counter() - started
    label(engine)
    out = Path(os.environ["OUT"]) if os.environ.get("OUT") else Path(tempfile.mkdtemp(prefix="qtts-profile-"))
    out.mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name() if on_cuda else "cpu"
    results = {"device": device, "torch": torch.__version__, "size": args.size, "max_batch": max_batch,
               "max_len": args.max_len, "frames": args.frames, "chunk_frames": list(engine.chunk_frames),
               "warmup_s": round(warmup_s, 1), "attribution": ATTRIBUTION_NOTE, "runs": []}
    path = args.out or ROOT / "benchmarks" / "results" / f"engine_profile_{device.replace(' ', '_')}.json"
    with torch.no_grad():
        for count in counts:
            traced = count == counts[-1] and args.trace_iterations > 0
            row = profile_streams(tts, engine, count, args, out if traced else None)
            results["runs"].append(row)
            print({key: value for key, value in row.items() if key != "top_kernels_ms"}, flush=True)
            if args.out or not args.smoke:  # after each N: a timeout still leaves the ones done
                save_results(results, path)
    print_table(results["runs"])


if __name__ == "__main__":
    main()
