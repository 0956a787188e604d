"""Count and time Triton's just-in-time compiles, so a compile after warm-up is seen, not only felt.

Triton compiles a kernel once per specialization (argument types, alignment, integers equal to 1 or divisible
by 16): a call with a combination warm-up never made compiles then, for a quarter of a second or more, and
every stream in the batch waits. The engine reads `compiles()` around its iterations and reports the late ones.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from . import triton_available


@dataclass(frozen=True)
class Compile:
    kernel: str  # the kernel with its specialization (argument types, constants), as Triton writes it
    seconds: float


class _Watch:
    def __init__(self):
        self.lock = threading.Lock()
        self.started: dict[int, float] = {}  # thread -> when its compile began
        self.log: list[Compile] = []

    def before(self, **kwargs):
        self.started[threading.get_ident()] = time.perf_counter()
        return None  # anything true would tell Triton to skip the compile

    def after(self, *, fn=None, compile: dict | None = None, **kwargs):  # noqa: A002 (Triton's keywords)
        began = self.started.pop(threading.get_ident(), None)
        seconds = time.perf_counter() - began if began is not None else 0.0
        with self.lock:
            self.log.append(Compile(_describe(fn, compile or {}), seconds))
        return None


def _describe(fn, compile: dict) -> str:
    """The kernel's name, argument types and the specializations that keyed this compile (alignment, constants)."""
    name = getattr(fn, "name", None) or "kernel"
    signature = compile.get("signature") or {}
    types = ", ".join(f"{arg}: {kind}" for arg, kind in signature.items())
    configs = compile.get("configs") or [{}]
    special = "; ".join(f"{list(args)}: {attrs}" for args, attrs in (configs[0] or {}).items())
    return f"{name}({types}) [{special}]"


_watch: _Watch | None = None
_install_lock = threading.Lock()


def _chain(first, second):
    if first is None:
        return second

    def both(**kwargs):
        skip = first(**kwargs)
        second(**kwargs)
        return skip
    return both


def watch_compiles() -> bool:
    """Start counting Triton compiles in this process (once; chained after hooks set before). Whether it can."""
    global _watch
    with _install_lock:
        if _watch is not None:
            return True
        if not triton_available():
            return False
        try:
            from triton import knobs
            runtime = knobs.runtime
            watch = _Watch()
            runtime.jit_cache_hook = _chain(runtime.jit_cache_hook, watch.before)
            runtime.jit_post_compile_hook = _chain(runtime.jit_post_compile_hook, watch.after)
        except (ImportError, AttributeError):  # a Triton without these hooks: nothing is counted
            return False
        _watch = watch
        return True


def compiles() -> list[Compile]:
    """Every compile seen since watch_compiles() (a copy; empty when not watching)."""
    if _watch is None:
        return []
    with _watch.lock:
        return list(_watch.log)
