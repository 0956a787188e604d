"""Tensors a module derives from its parameters (a conv weight laid out channels-last, SnakeBeta's
coefficients), made once and remade only when a parameter changes."""
from __future__ import annotations

import weakref
from typing import Callable

import torch
from torch import nn


def derived(module: nn.Module, make: Callable[[], torch.Tensor | tuple[torch.Tensor, ...]],
            *sources: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """make()'s tensor(s), derived from the parameters `sources`, made again only when one of them is
    replaced or changed in place: derived inside a captured CUDA graph, they would be remade on every
    replay. A remake of the same shape is copied into the old tensors, which captured graphs read."""
    cache = module.__dict__.setdefault("_derived", {})
    stamp = [(weakref.ref(t), _version(t)) for t in sources]
    entry = cache.get(make.__name__)
    if entry is not None and all(ref() is t and version == _version(t) for (ref, version), t in zip(entry[0], sources)):
        return entry[1]
    with torch.no_grad():
        value = make()
        if entry is not None and _same_layout(entry[1], value):
            for old, new in zip(_tensors(entry[1]), _tensors(value)):
                old.copy_(new)
            value = entry[1]
    cache[make.__name__] = (stamp, value)
    return value


def _version(tensor: torch.Tensor) -> int | None:
    """The in-place change counter; inference tensors keep none (and cannot be changed outside inference)."""
    return None if tensor.is_inference() else tensor._version


def _tensors(value: torch.Tensor | tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return (value,) if isinstance(value, torch.Tensor) else value


def _same_layout(old, new) -> bool:
    return len(_tensors(old)) == len(_tensors(new)) and all(
        (a.shape, a.stride(), a.dtype, a.device) == (b.shape, b.stride(), b.dtype, b.device)
        for a, b in zip(_tensors(old), _tensors(new)))
