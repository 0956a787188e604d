"""Linear layers over one or two rows as one Triton kernel, with the RMSNorm before them and the
SiLU·mul after them folded in — and its PyTorch reference.

cuBLAS runs a one-row product as a general GEMM: 5–12 µs for the 4–12 MB matrices of a decode
step, whose bytes take 2–4 µs to read, and the norm and activation around it are launches of
their own. Here each program reads a block of weight rows once and makes the row's norm itself.

out = act(norm(x [+ residual]) @ W.T [+ bias]); with silu_mul, W holds gate|up and
out = silu(x @ gate.T) * (x @ up.T). Rounding follows the unfused path: the residual add, the
norm, the weight multiply, the product and SiLU each round to the activation dtype. An FP8 weight
(kernels/fp8.py) is read as e4m3 and each output multiplied by its row's scale; the activations stay
unquantized (half the weight bytes, and more precise than the FP8 GEMM of larger batches).
"""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import torch
from torch.nn import functional as F

from .fp8 import Fp8Weight, fp8_linear, weight_only_linear_reference

MAX_ROWS = 2  # past this many rows a GEMM reuses each weight enough for cuBLAS to win
BLOCK_K = 256  # 512 contiguous bytes of a bf16 weight row per load
MIN_PROGRAMS = 264  # two per SM of an H100/H200, so enough loads are in flight to draw full bandwidth


TUNED_DIR = Path(__file__).parent / "tuned"  # gemv_<GPU name>.json, written by benchmarks/tune_gemv.py


def block_n(n_out: int) -> int:
    """Weight rows per program: the largest power of two (4..32) that still gives MIN_PROGRAMS programs."""
    size = 4
    while size < 32 and n_out // (size * 2) >= MIN_PROGRAMS:
        size *= 2
    return size


def shape_key(n_out: int, k_dim: int, silu_mul: bool, fp8: bool) -> str:
    return f"{n_out}x{k_dim}{'-silu' if silu_mul else ''}{'-fp8' if fp8 else ''}"


def tuned_file(device_name: str) -> Path:
    return TUNED_DIR / f"gemv_{device_name.replace(' ', '_')}.json"


@functools.cache
def _tuned(device_index: int) -> dict[str, tuple[int, int, int]]:
    """The measured best (BLOCK_N, BLOCK_K, num_warps) per shape on this GPU: $QTTS_GEMV_TUNED or the file
    kept for its name; empty where neither exists."""
    path = os.environ.get("QTTS_GEMV_TUNED") or tuned_file(torch.cuda.get_device_name(device_index))
    if not Path(path).exists():
        return {}
    try:
        shapes = json.loads(Path(path).read_text())["shapes"]
        return {key: (int(best["block_n"]), int(best["block_k"]), int(best["num_warps"]))
                for key, best in shapes.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path} is not a GEMV tuning table (benchmarks/tune_gemv.py writes one): {exc!r}") from exc


def gemv_config(n_out: int, k_dim: int, silu_mul: bool, fp8: bool, device: torch.device) -> tuple[int, int, int]:
    """(BLOCK_N, BLOCK_K, num_warps) of a launch: the tuned one for the shape, else the rule above."""
    if device.type != "cuda":
        return 64, 128, 4  # the interpreter (tests) runs faster with fewer programs
    tuned = _tuned(device.index if device.index is not None else torch.cuda.current_device())
    return tuned.get(shape_key(n_out, k_dim, silu_mul, fp8), (block_n(n_out), BLOCK_K, 4))


@functools.cache
def _gemv_kernel():
    """Compiled lazily, so that the Triton interpreter setting is read when it is first used."""
    import triton
    import triton.language as tl

    @triton.jit
    def gemv_kernel(x_ptr, residual_ptr, residual_out_ptr, norm_weight_ptr, w_ptr, w_scale_ptr, bias_ptr, out_ptr,
                    n_out, eps, K_DIM: tl.constexpr,
                    ROWS: tl.constexpr, NORM: tl.constexpr, HAS_RESIDUAL: tl.constexpr, HAS_BIAS: tl.constexpr,
                    SILU_MUL: tl.constexpr, W_SCALED: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        pid = tl.program_id(0)
        n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        n_mask = n < n_out
        ks = tl.arange(0, BLOCK_K)
        dtype = out_ptr.dtype.element_ty
        for r in tl.static_range(ROWS):
            inv = 1.0
            if NORM:  # the row's inverse RMS (program 0 also writes the summed residual)
                squares = tl.zeros((BLOCK_K,), tl.float32)
                for k0 in range(0, K_DIM, BLOCK_K):
                    k = k0 + ks
                    k_mask = k < K_DIM
                    h = tl.load(x_ptr + r * K_DIM + k, mask=k_mask, other=0.0)
                    if HAS_RESIDUAL:
                        h = (h.to(tl.float32) + tl.load(residual_ptr + r * K_DIM + k, mask=k_mask,
                                                        other=0.0).to(tl.float32)).to(dtype)
                        tl.store(residual_out_ptr + r * K_DIM + k, h, mask=k_mask & (pid == 0))
                    hf = h.to(tl.float32)
                    squares += hf * hf
                inv = tl.rsqrt(tl.sum(squares, axis=0) / K_DIM + eps)
            acc = tl.zeros((BLOCK_N,), tl.float32)
            acc_up = tl.zeros((BLOCK_N,), tl.float32)
            for k0 in range(0, K_DIM, BLOCK_K):
                k = k0 + ks
                k_mask = k < K_DIM
                h = tl.load(x_ptr + r * K_DIM + k, mask=k_mask, other=0.0)
                if NORM:
                    if HAS_RESIDUAL:
                        h = (h.to(tl.float32) + tl.load(residual_ptr + r * K_DIM + k, mask=k_mask,
                                                        other=0.0).to(tl.float32)).to(dtype)
                    normed = (h.to(tl.float32) * inv).to(dtype)
                    scale = tl.load(norm_weight_ptr + k, mask=k_mask, other=0.0)
                    h = (scale.to(tl.float32) * normed.to(tl.float32)).to(dtype)
                hf = h.to(tl.float32)[None, :]
                tile_mask = n_mask[:, None] & k_mask[None, :]
                w = tl.load(w_ptr + n[:, None] * K_DIM + k[None, :], mask=tile_mask, other=0.0)
                acc += tl.sum(w.to(tl.float32) * hf, axis=1)
                if SILU_MUL:
                    w_up = tl.load(w_ptr + (n + n_out)[:, None] * K_DIM + k[None, :], mask=tile_mask, other=0.0)
                    acc_up += tl.sum(w_up.to(tl.float32) * hf, axis=1)
            if W_SCALED:  # FP8 rows: one scale per output row
                acc *= tl.load(w_scale_ptr + n, mask=n_mask, other=0.0)
                if SILU_MUL:
                    acc_up *= tl.load(w_scale_ptr + n + n_out, mask=n_mask, other=0.0)
            if HAS_BIAS:
                acc += tl.load(bias_ptr + n, mask=n_mask, other=0.0).to(tl.float32)
            if SILU_MUL:
                gate = acc.to(dtype).to(tl.float32)
                act = (gate / (1.0 + tl.exp(-gate))).to(dtype)
                out = (act.to(tl.float32) * acc_up.to(dtype).to(tl.float32)).to(dtype)
            else:
                out = acc.to(dtype)
            tl.store(out_ptr + r * n_out + n, out, mask=n_mask)

    return gemv_kernel


def skinny(x: torch.Tensor) -> bool:
    """Whether a fused model's linear layer over x (rows, K) runs as gemv_fused (QTTS_DISABLE_GEMV=1: never)."""
    return x.dim() == 2 and x.shape[0] <= MAX_ROWS and os.environ.get("QTTS_DISABLE_GEMV") != "1"


def gemv_fused(x: torch.Tensor, weight: torch.Tensor | Fp8Weight, bias: torch.Tensor | None = None,
               norm_weight: torch.Tensor | None = None, eps: float = 0.0, residual: torch.Tensor | None = None,
               silu_mul: bool = False, config: tuple[int, int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, new residual) for x (rows <= MAX_ROWS, K); the new residual is x + residual (x without one),
    as rms_norm_fused returns it. The norm runs when norm_weight is given. config: (BLOCK_N, BLOCK_K,
    num_warps) instead of gemv_config's (the tuner's sweep)."""
    w_scale = weight.scale if isinstance(weight, Fp8Weight) else None
    weight = weight.data if isinstance(weight, Fp8Weight) else weight
    rows, k_dim = x.shape
    if rows > MAX_ROWS or not weight.is_contiguous() or (norm_weight is not None and not norm_weight.is_contiguous()):
        raise ValueError("gemv_fused takes at most MAX_ROWS rows and contiguous weights")
    if (residual is not None and norm_weight is None) or (bias is not None and silu_mul):
        raise ValueError("gemv_fused adds a residual only before its norm, and a bias only without silu_mul")
    n_out = weight.shape[0] // 2 if silu_mul else weight.shape[0]
    x = x.contiguous()
    out = torch.empty(rows, n_out, device=x.device, dtype=x.dtype)
    has_residual = residual is not None
    residual_out = torch.empty_like(x) if has_residual else x
    args = (x, residual.contiguous() if has_residual else x, residual_out,
            norm_weight if norm_weight is not None else weight, weight, w_scale if w_scale is not None else weight,
            bias if bias is not None else weight, out, n_out, eps)
    flags = dict(K_DIM=k_dim, ROWS=rows, NORM=norm_weight is not None, HAS_RESIDUAL=has_residual,
                 HAS_BIAS=bias is not None, SILU_MUL=silu_mul, W_SCALED=w_scale is not None)
    size, block_k, warps = config or gemv_config(n_out, k_dim, silu_mul, w_scale is not None, x.device)
    _gemv_kernel()[(-(-n_out // size),)](*args, **flags, BLOCK_N=size, BLOCK_K=block_k, num_warps=warps)
    return out, residual_out


def gemv_reference(x, weight, bias=None, norm_weight=None, eps=0.0, residual=None, silu_mul=False):
    """The unfused path gemv_fused replaces: (out, new residual)."""
    from .activation import silu_mul_reference
    from .norm import rms_norm_reference

    new_residual = x
    if norm_weight is not None:
        x, new_residual = rms_norm_reference(x, norm_weight, eps, residual)
    out = weight_only_linear_reference(x, weight, bias) if isinstance(weight, Fp8Weight) else F.linear(x, weight, bias)
    return (silu_mul_reference(out) if silu_mul else out), new_residual


def linear(x: torch.Tensor, weight: torch.Tensor | Fp8Weight, bias: torch.Tensor | None = None,
           gemv: bool = True) -> torch.Tensor:
    """F.linear over x (..., K), plain or FP8 weight: gemv_fused when gemv is on and its rows are few."""
    rows = x.reshape(-1, x.shape[-1])
    if gemv and skinny(rows):
        return gemv_fused(rows, weight, bias)[0].view(*x.shape[:-1], weight.shape[0])
    if isinstance(weight, Fp8Weight):
        return fp8_linear(x, weight, bias)
    return F.linear(x, weight, bias)
