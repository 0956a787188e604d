import torch
from torch import nn
from torch.nn import functional as F


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)), no biases."""

    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

        self.gate_up_weight: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))

    def fuse_projections(self) -> None:
        """One gate|up weight for a single GEMM; the two projections become views into it."""
        fused = torch.cat([self.gate_proj.weight, self.up_proj.weight]).detach()
        gate, up = fused.chunk(2)
        self.gate_proj.weight = nn.Parameter(gate, requires_grad=False)
        self.up_proj.weight = nn.Parameter(up, requires_grad=False)
        self.gate_up_weight = fused

    def forward_fused(self, x: torch.Tensor) -> torch.Tensor:
        from ..kernels.activation import silu_mul_fused

        return self.down_proj(silu_mul_fused(F.linear(x, self.gate_up_weight)))
