"""The two memory layouts of the codec decoder's (B, C, L) activations: time innermost, as PyTorch
makes them, or channels innermost (laid out as (B, L, C)), as cuDNN's Hopper convolutions want them;
and the tiles the codec's elementwise kernels cover them with."""
from __future__ import annotations

import torch


def is_channels_last(x: torch.Tensor) -> bool:
    """Whether x (B, C, L) has channels innermost. A 1-sample x is both; it counts as the layout it was made in."""
    return x.stride(1) == 1 and x.stride(2) != 1


def empty_in_layout(batch: int, channels: int, length: int, channels_last: bool, like: torch.Tensor) -> torch.Tensor:
    """An uninitialised dense (B, C, L) tensor in the given layout, on like's device and dtype."""
    if channels_last:
        return torch.empty(batch, length, channels, device=like.device, dtype=like.dtype).transpose(1, 2)
    return torch.empty(batch, channels, length, device=like.device, dtype=like.dtype)


def to_layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """x (B, C, L) in the given layout: x itself when it already is, else a dense copy (not .contiguous(),
    which keeps a 1-sample x as it is)."""
    if is_channels_last(x) == channels_last:
        return x
    return empty_in_layout(*x.shape, channels_last, x).copy_(x)


def empty_like_layout(x: torch.Tensor) -> torch.Tensor:
    """An uninitialised dense tensor of x's shape, dtype and layout (x itself may be a strided view)."""
    return empty_in_layout(*x.shape, is_channels_last(x), x)


MAX_CHANNEL_TILE = 128


def channel_tiles(out: torch.Tensor, block: int) -> tuple[int, int]:
    """(channels, samples) per tile of about `block` elements, for writing `out` (B, C, T).

    Channels innermost in memory (stride 1): a tile spans the largest power-of-two channel count that
    divides C (so the channel tiles cover C with no mask), each row of it one contiguous run. Otherwise
    a tile is one channel's run of samples."""
    channels, length = out.shape[1], out.shape[2]
    if is_channels_last(out) and channels > 1:
        block_c = min(channels & -channels, MAX_CHANNEL_TILE, block)
        return block_c, max(1, block // block_c)
    return 1, min(block, max(16, 1 << (length - 1).bit_length()))
