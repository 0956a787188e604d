import torch
from torch import nn
from torch.nn import functional as F

from ..kernels.fp8 import Fp8Weight
from ..kernels.gemv import linear
from .linear import stack_projections


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)), no biases."""

    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

        self.gate_up_weight: torch.Tensor | Fp8Weight | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))

    def fuse_projections(self) -> None:
        """One gate|up weight for a single GEMM; the two projections become views into it."""
        self.gate_up_weight = stack_projections((self.gate_proj, self.up_proj))

    def forward_fused(self, x: torch.Tensor) -> torch.Tensor:
        from ..kernels.activation import silu_mul_fused

        return self.down_proj(silu_mul_fused(linear(x, self.gate_up_weight, gemv=False)))
