"""Tile shapes for the codec's elementwise kernels over (B, C, T) tensors in either memory layout."""
from __future__ import annotations

import torch

MAX_CHANNEL_TILE = 128


def channel_tiles(out: torch.Tensor, block: int) -> tuple[int, int]:
    """(channels, samples) per tile of about `block` elements, for writing `out` (B, C, T).

    Channels innermost in memory (stride 1): a tile spans the largest power-of-two channel count that
    divides C (so the channel tiles cover C with no mask), each row of it one contiguous run. Otherwise
    a tile is one channel's run of samples."""
    channels, length = out.shape[1], out.shape[2]
    if out.stride(1) == 1 and channels > 1:
        block_c = min(channels & -channels, MAX_CHANNEL_TILE, block)
        return block_c, max(1, block // block_c)
    return 1, min(block, max(16, 1 << (length - 1).bit_length()))
