"""Moving a request between rows of a FrameStep, so the active rows stay compact (0..batch-1)."""
from __future__ import annotations

from dataclasses import fields

import torch

from ..layers.sampler import SamplingTensors
from .step import FrameStep

SHARED_STATE = {"pad_row"}  # RowState fields that are not per row


def move_row(step: FrameStep, source: int, target: int, length: int) -> None:
    """Copy row `source`'s decode state and its first `length` KV positions into row `target`.

    The code predictor's cache is rebuilt within every frame, so only the talker cache moves.
    """
    tensors = row_tensors(step.state)
    torch._foreach_copy_([tensor[target] for tensor in tensors], [tensor[source] for tensor in tensors])
    step.cache.copy_slot(source, target, length)


def row_tensors(state) -> list[torch.Tensor]:
    """The RowState tensors that hold one entry per row."""
    tensors = []
    for field in fields(state):
        if field.name in SHARED_STATE:
            continue
        value = getattr(state, field.name)
        tensors += [getattr(value, f.name) for f in fields(value)] if isinstance(value, SamplingTensors) else [value]
    return tensors
