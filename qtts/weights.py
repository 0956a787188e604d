"""safetensors → modules, by name, shapes checked."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from .errors import CheckpointError


def safetensor_files(folder: Path) -> list[Path]:
    """The weight files of a folder: model.safetensors, or the shards its index names."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, AttributeError) as exc:
            raise CheckpointError(f"{index} is not a safetensors index (no weight_map): download it again") from exc
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing:
            raise CheckpointError(f"{folder}: shards named in the index are missing: {missing}")
        return [folder / s for s in shards]
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    raise CheckpointError(f"{folder}: no model.safetensors (or model.safetensors.index.json) found")


def read_tensors(folder: Path, prefix: str = "") -> dict[str, torch.Tensor]:
    """All tensors whose name starts with prefix, with the prefix removed."""
    tensors: dict[str, torch.Tensor] = {}
    for file in safetensor_files(folder):
        try:
            with safe_open(str(file), framework="pt") as f:
                for name in f.keys():
                    if name.startswith(prefix):
                        tensors[name[len(prefix):]] = f.get_tensor(name)
        except SafetensorError as exc:
            raise CheckpointError(f"{file} is not a readable safetensors file ({exc}): empty or cut short? "
                                  "Download it again") from exc
    return tensors


def load_module(module: nn.Module, tensors: dict[str, torch.Tensor], source: str, strict: bool = True) -> None:
    """Copy tensors into module parameters/buffers by name, checking names and shapes.

    Extra tensors in the file that the module does not use are ignored; every persistent
    parameter or buffer of the module must be present (when strict) with the same shape.
    """
    expected = dict(module.named_parameters())
    expected.update({n: b for n, b in module.named_buffers() if _is_persistent(module, n)})
    missing = [n for n in expected if n not in tensors]
    if missing and strict:
        shown = ", ".join(missing[:8]) + (" …" if len(missing) > 8 else "")
        raise CheckpointError(f"{source}: {len(missing)} tensors missing: {shown}")
    with torch.no_grad():
        for name, target in expected.items():
            if name not in tensors:
                continue
            value = tensors[name]
            if tuple(value.shape) != tuple(target.shape):
                raise CheckpointError(
                    f"{source}: tensor {name} has shape {tuple(value.shape)}, expected {tuple(target.shape)}"
                )
            target.copy_(value.to(target.dtype))


def _is_persistent(module: nn.Module, dotted: str) -> bool:
    owner_path, _, leaf = dotted.rpartition(".")
    owner = module.get_submodule(owner_path) if owner_path else module
    return leaf not in owner._non_persistent_buffers_set
