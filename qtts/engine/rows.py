"""Moving a request between rows of a FrameStep, so the active rows stay compact (0..batch-1)."""
from __future__ import annotations

from dataclasses import fields

from ..layers.sampler import SamplingTensors
from .step import FrameStep

SHARED_STATE = {"pad_row"}  # RowState fields that are not per row


def move_row(step: FrameStep, source: int, target: int, length: int) -> None:
    """Copy row `source`'s decode state and its first `length` KV positions into row `target`.

    The code predictor's cache is rebuilt within every frame, so only the talker cache moves.
    """
    state = step.state
    for field in fields(state):
        if field.name in SHARED_STATE:
            continue
        value = getattr(state, field.name)
        tensors = [getattr(value, f.name) for f in fields(value)] if isinstance(value, SamplingTensors) else [value]
        for tensor in tensors:
            tensor[target] = tensor[source]
    step.cache.copy_slot(source, target, length)
