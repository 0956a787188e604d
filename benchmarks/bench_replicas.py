"""One GPU, one engine or two sharing it through Ray Serve: open-loop capacity at one latency bound.

usage: python benchmarks/bench_replicas.py [--size 1.7b | --model FOLDER] [--configs single,ray-1,ray-2,ray-2-mps]
       [--max-batch 128] [--rates 40,60,...] [--duration 10] [--stop-p95-ms 500] [--out FILE]

Each configuration is a bench_serve.py open-loop sweep (Poisson arrivals, rates rising until p95 first audible
passes --stop-p95-ms, a request fails or over 1% are answered 429) against a server on the same card:
  single     `qtts serve`, no Ray: the baseline
  ray-1      `qtts serve --replicas 1`: what Ray's proxy costs
  ray-2      `qtts serve --replicas 2 --gpus-per-replica 0.5`: two engines time-share the card
  ray-2-mps  ray-2 under CUDA MPS (nvidia-cuda-mps-control -d), so both engines' kernels can run at once;
             recorded as skipped where the machine does not allow it
Every replica gets --max-batch. The JSON holds, per configuration, `capacity_rps` (the highest rate that stayed
within the bound) and bench_serve's statistics of every rate; a run adds its configurations to an existing
file, so the configurations can be measured in separate runs.
"""
import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from qtts.bench import save_results  # noqa: E402

SERVER_ARGS = {"single": "", "ray-1": "--replicas 1", "ray-2": "--replicas 2 --gpus-per-replica 0.5",
               "ray-2-mps": "--replicas 2 --gpus-per-replica 0.5"}
MPS_DIRECTORY = Path(tempfile.gettempdir()) / "qtts-mps"


def capacity_rps(sweep: dict) -> float | None:
    """The highest open-loop rate that was not overloaded (None: not even the first)."""
    within = [level["rate"] for level in sweep["open_loop"] if not level["overloaded"]]
    return max(within) if within else None


def mps_environment() -> dict:
    return {"CUDA_MPS_PIPE_DIRECTORY": str(MPS_DIRECTORY / "pipe"), "CUDA_MPS_LOG_DIRECTORY": str(MPS_DIRECTORY / "log")}


def start_mps() -> str | None:
    """Start the MPS control daemon for this run's processes; why not, or None once it runs."""
    control = shutil.which("nvidia-cuda-mps-control")
    if control is None:
        return "nvidia-cuda-mps-control is not installed"
    for folder in mps_environment().values():
        Path(folder).mkdir(parents=True, exist_ok=True)
    started = subprocess.run([control, "-d"], env={**os.environ, **mps_environment()}, capture_output=True, text=True)
    if started.returncode != 0:
        return f"nvidia-cuda-mps-control -d exited {started.returncode}: {(started.stderr or started.stdout)[-300:]}"
    return None


def stop_mps() -> None:
    subprocess.run(["nvidia-cuda-mps-control"], input="quit\n", env={**os.environ, **mps_environment()}, text=True,
                   capture_output=True)


def stop_ray() -> None:
    """End whatever a Ray configuration left running (a server killed before it shut its cluster down)."""
    if importlib.util.find_spec("ray") is not None:  # installed with --target, its `ray` script may be off PATH
        subprocess.run([sys.executable, "-m", "ray.scripts.scripts", "stop", "--force"], capture_output=True)


def run_config(name: str, args, scratch: Path) -> dict:
    """bench_serve.py's open-loop sweep against configuration `name`."""
    out = scratch / f"{name}.json"
    command = [sys.executable, str(REPO / "benchmarks" / "bench_serve.py"), "--max-batch", str(args.max_batch),
               "--rates", args.rates, "--concurrency", "", "--duration", str(args.duration),
               "--stop-p95-ms", str(args.stop_p95_ms), "--server-args", SERVER_ARGS[name], "--out", str(out)]
    command += ["--model", str(args.model)] if args.model else ["--size", args.size]
    env = dict(os.environ)
    if name.endswith("-mps"):
        reason = start_mps()
        if reason:
            return {"skipped": reason}
        env.update(mps_environment())
    try:
        finished = subprocess.run(command, env=env, cwd=REPO)
    finally:
        if name.endswith("-mps"):
            stop_mps()
        if name.startswith("ray"):
            stop_ray()
    if finished.returncode != 0 or not out.exists():
        return {"failed": f"bench_serve.py exited {finished.returncode}"}
    sweep = json.loads(out.read_text())
    return {"server_args": SERVER_ARGS[name], "capacity_rps": capacity_rps(sweep), "startup_s": sweep.get("startup_s"),
            "open_loop": sweep["open_loop"], "open_loop_stopped": sweep["open_loop_stopped"],
            "device": sweep["device"], "commit": sweep["commit"], "torch": sweep["torch"]}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, help="checkpoint folder (default: the CustomVoice fixture of --size)")
    parser.add_argument("--size", default="1.7b", choices=("tiny", "tiny-0.6b", "0.6b", "1.7b"))
    parser.add_argument("--configs", default="single,ray-1,ray-2,ray-2-mps",
                        help=f"comma-separated, of {', '.join(SERVER_ARGS)}")
    parser.add_argument("--max-batch", type=int, default=128, help="per replica")
    # one H200 kept 1.7B under 63 ms p95 first audible up to 60 requests/s (serve_1.7b_*_NVIDIA_H200.json)
    parser.add_argument("--rates", default="40,60,70,80,90,100,120", help="open-loop requests per second")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per rate")
    parser.add_argument("--stop-p95-ms", type=float, default=500.0, help="the latency bound: p95 first audible")
    parser.add_argument("--out", type=Path, default=None,
                        help="default: benchmarks/results/replicas_1gpu_<size>_<device>.json")
    args = parser.parse_args()
    unknown = set(args.configs.split(",")) - set(SERVER_ARGS)
    if unknown:
        parser.error(f"unknown configurations {sorted(unknown)}; use {', '.join(SERVER_ARGS)}")
    return args


def main() -> None:
    args = parse_args()
    import torch

    device_name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    label = args.model.name if args.model else args.size
    out = args.out or REPO / "benchmarks" / "results" / f"replicas_1gpu_{label}_{device_name.replace(' ', '_')}.json"
    result = json.loads(out.read_text()) if out.exists() else {
        "benchmark": "replicas_1gpu", "device": device_name, "model": str(args.model or args.size), "configs": {}}
    result.update({"max_batch_per_replica": args.max_batch, "rates": args.rates, "duration_s": args.duration,
                   "stop_p95_first_audible_ms": args.stop_p95_ms})
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.configs.split(","):
            print(f"=== {name}: qtts serve {SERVER_ARGS[name]}", flush=True)
            result["configs"][name] = run_config(name, args, Path(scratch))
            summary = {key: result["configs"][name].get(key) for key in ("capacity_rps", "skipped", "failed")}
            print(json.dumps({"config": name, **summary}), flush=True)
            save_results(result, out)
    print(f"wrote {out}", flush=True)


if __name__ == "__main__":
    main()
