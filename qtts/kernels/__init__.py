"""Fused Triton kernels for the decode step, each with its PyTorch reference beside it.

Kernels run on CUDA when Triton is installed; elsewhere the references run (the tests run
the kernels on CPU through the Triton interpreter).
"""
from __future__ import annotations

import functools
import os

import torch


@functools.cache
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def kernels_enabled(device: torch.device) -> bool:
    """Whether the fused kernels should be used for tensors on `device`."""
    if os.environ.get("QTTS_DISABLE_KERNELS") == "1" or not triton_available():
        return False
    return device.type == "cuda"
