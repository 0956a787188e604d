"""Triton compiles are counted and timed through Triton's own hooks, after any hook set before."""
import os
from types import SimpleNamespace

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # before Triton is first imported: the other kernel tests need it
triton = pytest.importorskip("triton")

from qtts.kernels import compile_watch  # noqa: E402


def test_compiles_are_recorded_with_their_kernel_and_time_and_earlier_hooks_still_run(monkeypatch):
    runtime = triton.knobs.runtime
    monkeypatch.setattr(compile_watch, "_watch", None)
    seen = []
    monkeypatch.setattr(runtime, "jit_cache_hook", lambda **kwargs: seen.append(kwargs["repr"]))
    monkeypatch.setattr(runtime, "jit_post_compile_hook", None)
    assert compile_watch.compiles() == []

    assert compile_watch.watch_compiles() and compile_watch.watch_compiles()  # a second call adds nothing
    assert runtime.jit_cache_hook(repr="snake[...](length: i32)") is None  # never tells Triton to skip
    runtime.jit_post_compile_hook(repr="snake[...](length: i32)", fn=SimpleNamespace(name="snake"),
                                  compile={"signature": {"x_ptr": "*bf16", "length": "i32"},
                                           "configs": [{(0,): [["tt.divisibility", 16]]}]})

    recorded = compile_watch.compiles()
    assert seen == ["snake[...](length: i32)"]
    assert len(recorded) == 1 and recorded[0].seconds >= 0
    assert recorded[0].kernel == "snake(x_ptr: *bf16, length: i32) [[0]: [['tt.divisibility', 16]]]"
