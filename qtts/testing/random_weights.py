"""Random tensors from TensorSpecs, streamed into a safetensors file one tensor at a time.

Each tensor has its own generator, seeded from (seed, name), so values never depend on the
order or the subset of tensors written, and a 4 GB file never has to sit in memory at once.
"""
from __future__ import annotations

import json
import math
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import torch

from .tensors import TensorSpec

_CHUNK_ELEMENTS = 1 << 24
_SAFETENSORS_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}


def random_tensor(spec: TensorSpec, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The tensor `spec` describes; a function of (seed, spec) only."""
    generator = torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(spec.name.encode())) % 2**63)
    out = torch.empty(spec.shape, dtype=dtype)
    rows = out.view(spec.shape[0], -1)
    rows_per_chunk = max(1, _CHUNK_ELEMENTS // max(1, rows.shape[1]))
    for start in range(0, rows.shape[0], rows_per_chunk):
        chunk = rows[start:start + rows_per_chunk]
        chunk.copy_(_sample(spec, chunk.shape, generator))
    return out


def _sample(spec: TensorSpec, shape: torch.Size, generator: torch.Generator) -> torch.Tensor:
    kind, a, b = spec.init
    if kind == "normal":
        return torch.randn(shape, generator=generator).mul_(a).add_(b)
    if kind == "uniform":
        return torch.rand(shape, generator=generator).mul_(b - a).add_(a)
    if kind == "constant":
        return torch.full(shape, a)
    raise ValueError(f"{spec.name}: unknown init {kind!r}")


def tensor_bytes(spec: TensorSpec, dtype: torch.dtype) -> int:
    """Bytes of the tensor `spec` describes, in `dtype`."""
    return math.prod(spec.shape) * torch.empty((), dtype=dtype).element_size()


def write_safetensors(path: Path, specs: list[TensorSpec], seed: int, dtype: torch.dtype,
                      on_tensor: Callable[[int], object] | None = None) -> None:
    """Write every spec's random tensor to `path` in `dtype`, in the order given.

    on_tensor, if given, is called with the bytes of each tensor once it is written (for progress bars).
    """
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for spec in specs:
        size = tensor_bytes(spec, dtype)
        header[spec.name] = {"dtype": _SAFETENSORS_DTYPES[dtype], "shape": list(spec.shape),
                             "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as file:
        file.write(struct.pack("<Q", len(encoded)))
        file.write(encoded)
        for spec in specs:
            tensor = random_tensor(spec, seed, dtype)
            file.write(tensor.reshape(-1).view(torch.uint8).numpy())
            if on_tensor is not None:
                on_tensor(tensor.numel() * tensor.element_size())
