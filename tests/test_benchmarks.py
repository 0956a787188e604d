"""The GPU session's benchmark scripts run end to end (their --smoke modes: the tiny fixture on CPU), so a change
that breaks one shows here, not in a scarce GPU call."""
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def run_smoke(script: str, tmp_path: Path) -> dict:
    out = tmp_path / "result.json"
    (tmp_path / "out").mkdir(exist_ok=True)  # $OUT, as the GPU session makes it
    env = {**os.environ, "OUT": str(tmp_path / "out"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--smoke", "--out", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(out.read_text())


def test_profile_engine_attributes_each_iteration_and_writes_a_trace(tmp_path):
    result = run_smoke("profile_engine.py", tmp_path)
    assert [run["streams"] for run in result["runs"]] == [2, 3]
    for run in result["runs"]:
        assert run["iteration_ms"] > 0 and run["audio_s_per_s"] > 0
        # on CPU the host's aten ops stand in for kernels: each half of the frame and the codec get time
        assert all(run["gpu_ms"][name] > 0 for name in ("talker", "code_predictor", "codec", "sampling"))
        assert run["host_gap_ms"] == pytest.approx(run["iteration_ms"] - run["gpu_busy_ms"], abs=1e-2)
        assert run["host_phase_ms"]["launch_step"] > 0
        # iterations with an arrival each: the new rows' prefills are their own category
        admitting = run["admitting"]
        assert "error" not in admitting, admitting
        assert admitting["admitted_per_iteration"] == 1 and admitting["gpu_ms"]["prefill"] > 0
        assert admitting["host_phase_ms"]["admit"] > 0
    assert result["commit"] and result["command"].startswith("profile_engine.py")
    with gzip.open(tmp_path / "out" / "engine_trace_3.json.gz") as trace:
        names = {event.get("name") for event in json.load(trace)["traceEvents"]}
    assert {"qtts.talker", "qtts.code_predictor", "qtts.codec", "engine.collect_audio"} <= names
    # the arriving iterations' trace has the Python calls (on CPU there is no device to wait for)
    assert isinstance(result["runs"][-1]["admitting"]["blocking_calls"], list)
    with gzip.open(tmp_path / "out" / "engine_trace_admit_3.json.gz") as trace:
        events = json.load(trace)["traceEvents"]
    assert any("qtts/engine/engine.py" in event.get("name", "") for event in events)


def test_bench_options_measures_every_option_against_bf16(tmp_path):
    result = run_smoke("bench_options.py", tmp_path)
    rows = {row["option"]: row for row in result["rows"]}
    assert list(rows) == ["bf16", "fp8_talker", "fp8_predictor", "kv_int8", "kv_int4"]
    for option, row in rows.items():
        assert "error" not in row and "skipped" not in row, row
        assert row["ms_per_frame"] > 0 and row["batch_audio_s_per_s"] > 0
        if option != "bf16":
            assert 0.99 < row["layer_cosine"] <= 1 and row["codebook0_kl"] >= 0 and isinstance(row["failures"], list)
    assert rows["kv_int8"]["passes"] and not rows["fp8_predictor"]["passes"]  # as on the tiny fixture in the docs


def test_tune_gemv_times_every_shape_the_predictor_runs(tmp_path):
    result = run_smoke("tune_gemv.py", tmp_path)
    assert result["shapes"] and result["size"] == "tiny"
    for key, best in result["shapes"].items():
        assert best["us"] > 0 and best["default_us"] > 0 and best["block_n"] in (32, 64), key
    assert any(key.endswith("-silu") for key in result["shapes"])  # the MLP's gate|up with its SiLU·mul


def load_profile_engine():
    import importlib.util

    spec = importlib.util.spec_from_file_location("profile_engine", ROOT / "benchmarks" / "profile_engine.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_profile_places_a_recorded_h200_trace_in_its_parts():
    """A trace from torch 2.11 on an H200 (4 iterations at 256 streams), whose graph kernels are not linked to the
    calls that launched them: the device annotations place them."""
    with gzip.open(ROOT / "benchmarks" / "results" / "engine_trace_256_NVIDIA_H200.json.gz") as trace:
        events = json.load(trace)["traceEvents"]
    result = load_profile_engine().attribute(events, on_cuda=True)
    ms = {name: us / 1e3 / 4 for name, us in result["category_us"].items()}
    assert ms["other"] < 0.1 and 4 < ms["code_predictor"] < 6 and 5 < ms["talker"] < 7 and 9 < ms["codec"] < 11
    assert 15 < result["busy_us"] / 1e3 / 4 < 17


def test_profile_places_kernels_by_name_stream_annotation_then_launching_range():
    attribute = load_profile_engine().attribute

    def span(cat, name, ts, dur, tid, **args):
        return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur, "pid": 0, "tid": tid, "args": args}

    events = [
        span("gpu_user_annotation", "qtts.talker", 100, 50, tid=7),  # a graph replayed on stream 7
        span("kernel", "gemv_kernel", 110, 10, tid=7, correlation=1),
        span("kernel", "sample_kernel", 130, 5, tid=7, correlation=1),
        span("cuda_runtime", "cudaGraphLaunch", 90, 5, tid=1, correlation=1),
        # eager kernels: no annotation on their stream; their launches inside the prefill range (one in an aten sort)
        span("user_annotation", "qtts.prefill", 200, 100, tid=1),
        span("cpu_op", "aten::mm", 210, 20, tid=1),
        span("cuda_runtime", "cudaLaunchKernel", 215, 2, tid=1, correlation=2),
        span("kernel", "ampere_gemm", 300, 40, tid=7, correlation=2),
        span("cpu_op", "aten::sort", 240, 20, tid=1),
        span("cuda_runtime", "cudaLaunchKernel", 245, 2, tid=1, correlation=3),
        span("kernel", "radixSortKernel", 350, 5, tid=7, correlation=3),
        span("gpu_memcpy", "Memcpy DtoD (Device -> Device)", 360, 3, tid=14, correlation=4),
        span("kernel", "stray_kernel", 400, 2, tid=14),  # no launch on record, no range: other
    ]
    result = attribute(events, on_cuda=True)
    assert result["category_us"] == {"talker": 10, "sampling": 10, "prefill": 40, "copies": 3, "other": 2}
    assert result["busy_us"] == 10 + 5 + 40 + 5 + 3 + 2 and result["device_events"] == 6


def test_profile_sums_the_hosts_waits_by_the_python_calls_around_them():
    blocking_calls = load_profile_engine().blocking_calls

    def python(name, ts, dur, tid=1):
        return {"ph": "X", "cat": "python_function", "name": name, "ts": ts, "dur": dur, "tid": tid}

    def runtime(name, ts, dur, tid=1):
        return {"ph": "X", "cat": "cuda_runtime", "name": name, "ts": ts, "dur": dur, "tid": tid}

    events = [python("/site/qtts/engine/engine.py(10): _admit", 0, 5000),
              python("/site/qtts/engine/step.py(20): prefill_rows", 100, 4000),
              python("/usr/lib/torch/x.py(1): helper", 150, 3000),
              runtime("cudaMemcpyAsync", 200, 2000), runtime("cudaMemcpyAsync", 2300, 1000),
              runtime("cudaEventSynchronize", 4500, 400),
              runtime("cudaMemcpyAsync", 4600, 10),  # too short to count
              runtime("cudaStreamSynchronize", 200, 3000, tid=2),  # a thread with no qtts calls
              runtime("cudaLaunchKernel", 300, 5000)]  # not a wait
    rows = blocking_calls(events)
    assert rows == [
        {"call": "cudaMemcpyAsync", "where": "engine/step.py(20): prefill_rows < engine/engine.py(10): _admit",
         "count": 2, "ms": 3.0},
        {"call": "cudaStreamSynchronize", "where": "", "count": 1, "ms": 3.0},
        {"call": "cudaEventSynchronize", "where": "engine/engine.py(10): _admit", "count": 1, "ms": 0.4}]


def test_bench_attention_compares_both_kernels(tmp_path):
    result = run_smoke("bench_attention.py", tmp_path)
    assert [run["rows"] for run in result["runs"]] == [1, 3]
    for run in result["runs"]:
        assert run["default"] in ("loop", "dot")
        assert run["dot"]["max_abs_diff_vs_loop"] < 1e-4
    check = result["prompt_rows_check"]
    assert check["loop"] < 1e-4 and check["dot"] < 1e-4  # fp32 on CPU: both kernels equal the reference


def test_bench_serve_splits_a_level_among_client_processes(tmp_path):
    out = tmp_path / "serve.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_serve.py"), "--smoke", "--client-processes",
                           "2", "--rates", "2", "--concurrency", "2", "--duration", "1", "--out", str(out)],
                          cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["client_processes"] == 2
    closed = result["closed_loop"][0]
    # one client in each process, each streaming back to back: every request whole
    assert closed["concurrency"] == 2 and closed["requests"] >= 2 and closed["ok"] == closed["requests"]
    assert closed["wrong_length"] == 0 and closed["pauses"]["client_loop_lag"]["count"] > 0
    assert result["open_loop"][0]["requests"] >= 1
