"""Triton compiles are counted and timed through Triton's own hooks, after any hook set before."""
import pytest

from qtts.kernels import compile_watch

triton = pytest.importorskip("triton")


def test_compiles_are_recorded_with_their_kernel_and_time_and_earlier_hooks_still_run(monkeypatch):
    runtime = triton.knobs.runtime
    monkeypatch.setattr(compile_watch, "_watch", None)
    seen = []
    monkeypatch.setattr(runtime, "jit_cache_hook", lambda **kwargs: seen.append(kwargs["repr"]))
    monkeypatch.setattr(runtime, "jit_post_compile_hook", None)
    assert compile_watch.compiles() == []

    assert compile_watch.watch_compiles() and compile_watch.watch_compiles()  # a second call adds nothing
    assert runtime.jit_cache_hook(repr="snake[...](length: i32)") is None  # never tells Triton to skip
    runtime.jit_post_compile_hook(repr="snake[...](length: i32)")

    recorded = compile_watch.compiles()
    assert seen == ["snake[...](length: i32)"]
    assert [c.kernel for c in recorded] == ["snake[...](length: i32)"] and recorded[0].seconds >= 0
