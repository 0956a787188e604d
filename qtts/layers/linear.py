"""Linear layers whose weight is plain or FP8, and the row-stacked weights of fused projections."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..kernels.fp8 import Fp8Weight
from ..kernels.gemv import linear


class Fp8Linear(nn.Module):
    """nn.Linear with an FP8 weight and one scale per output channel (kernels/fp8.py); parameters, so that
    counts of a model's weight bytes see them."""

    def __init__(self, weight: Fp8Weight, bias: torch.Tensor | None = None):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.weight_fp8 = nn.Parameter(weight.data, requires_grad=False)
        self.weight_scale = nn.Parameter(weight.scale, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)

    @classmethod
    def from_linear(cls, layer: nn.Linear) -> "Fp8Linear":
        return cls(Fp8Weight.from_weight(layer.weight.detach()), layer.bias)

    @property
    def weight(self) -> Fp8Weight:
        return Fp8Weight(self.weight_fp8.data, self.weight_scale.data)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias, gemv=False)


def stack_projections(projections: Sequence[nn.Linear | Fp8Linear]) -> torch.Tensor | Fp8Weight:
    """One weight with the projections' rows stacked in order, for a single GEMM; each projection's weight
    becomes a view into it. The projections are all plain or all FP8."""
    sizes = [projection.out_features for projection in projections]
    if all(isinstance(projection, Fp8Linear) for projection in projections):
        stacked = Fp8Weight.concat([projection.weight for projection in projections])
        for projection, data, scale in zip(projections, stacked.data.split(sizes), stacked.scale.split(sizes)):
            projection.weight_fp8 = nn.Parameter(data, requires_grad=False)
            projection.weight_scale = nn.Parameter(scale, requires_grad=False)
        return stacked
    stacked = torch.cat([projection.weight for projection in projections]).detach()
    for projection, part in zip(projections, stacked.split(sizes)):
        projection.weight = nn.Parameter(part, requires_grad=False)
    return stacked
