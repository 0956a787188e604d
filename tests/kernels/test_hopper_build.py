"""Every Triton kernel of the decode step and the codec compiles for Hopper (sm_90), down to a cubin, without a GPU:
a kernel the interpreter runs can still fail to compile, and GPU time is scarce.

The build runs in a child process: compiling leaves Triton's globals unfit for the interpreter
that the other kernel tests use."""
import importlib.util
import subprocess
import sys

import pytest

# not imported here: the other kernel tests must set up the interpreter before Triton's first import
pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton")

BUILD = r'''
import os
os.environ.pop("TRITON_INTERPRET", None)
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from qtts.kernels.attention import (_decode_attention_dot_kernel, _decode_attention_int4_kernel, _decode_attention_kernel,
                                    _merge_splits_kernel)
from qtts.kernels.fp8 import _quantize_rows_kernel
from qtts.kernels.gemv import BLOCK_K, _gemv_kernel, block_n
from qtts.kernels.residual import _bias_residual_kernel
from qtts.kernels.rope import _qk_norm_rope_kernel
from qtts.kernels.snake import _snake_kernel


def build(fn, signature, constexprs, aligned=(), **options):
    """The kernel's PTX; `aligned`: arguments Triton sees as divisible by 16, as it does at launch."""
    signature = {**signature, **{name: "constexpr" for name in constexprs}}
    attrs = {(fn.arg_names.index(name),): [["tt.divisibility", 16]] for name in aligned}
    compiled = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs),
                              target=GPUTarget("cuda", 90, 32), options=options or None)
    assert "cubin" in compiled.asm, constexprs
    return compiled.asm["ptx"]


cache_types = {16: "*bf16", 8: "*i8", 4: "*u8"}  # plain, int8 rows, int4 rows (kernels/kv_quant.py)
for has_slots in (False, True):
    shape = {"NUM_HEADS": 16, "NUM_KV_HEADS": 8, "HEAD_DIM": 128, "HAS_SLOTS": has_slots}
    strides = {"cache_slot_stride": "i32", "cache_head_stride": "i32", "cache_pos_stride": "i32"}
    block = {"BLOCK_N": 16 if has_slots else 64}
    for bits, cache in cache_types.items():
        attention = {"q_ptr": "*bf16", "k_cache_ptr": cache, "v_cache_ptr": cache, "positions_ptr": "*i64",
                     "slots_ptr": "*i64", "out_ptr": "*bf16"}
        if bits == 4:
            build(_decode_attention_int4_kernel(), {**attention, "rotation_ptr": "*fp32", "codebook_ptr": "*fp32",
                                                    "scale": "fp32", **strides}, {**shape, "BLOCK_N": 32})
        else:
            for splits in (1, 16):  # one program per row and KV head, or the row's blocks split among 16
                partials = {name: "*fp32" if splits > 1 else "*bf16"
                            for name in ("partial_acc_ptr", "partial_max_ptr", "partial_sum_ptr")}
                build(_decode_attention_kernel(), {**attention, **partials, "scale": "fp32", **strides},
                      {**shape, **block, "KV_BITS": bits, "SPLITS": splits})
                if bits == 16:  # the tensor-core kernel: 16-bit caches only
                    build(_decode_attention_dot_kernel(), {**attention, **partials, "scale": "fp32", **strides},
                          {**shape, **block, "SPLITS": splits, "BLOCK_G": 16, "PRECISION": "tf32", "UPCAST": False})
        build(_qk_norm_rope_kernel(),
              {"qkv_ptr": "*bf16", "q_weight_ptr": "*bf16", "k_weight_ptr": "*bf16", "cos_ptr": "*bf16",
               "sin_ptr": "*bf16", "positions_ptr": "*i64", "slots_ptr": "*i64", "q_out_ptr": "*bf16",
               "k_cache_ptr": cache, "v_cache_ptr": cache, "rotation_ptr": "*fp32", "codebook_ptr": "*fp32",
               "eps": "fp32", **strides}, {**shape, "KV_BITS": bits})

build(_merge_splits_kernel(), {"partial_acc_ptr": "*fp32", "partial_max_ptr": "*fp32", "partial_sum_ptr": "*fp32",
                               "out_ptr": "*bf16"}, {"HEAD_DIM": 128, "SPLITS": 16})
pointers = {name: "*bf16" for name in ("x_ptr", "residual_ptr", "residual_out_ptr", "norm_weight_ptr", "w_ptr",
                                       "w_scale_ptr", "bias_ptr", "out_ptr")}
for n_out, k_dim in ((1024, 2048), (3072, 1024), (6144, 2048)):
    for flags in ({"ROWS": 1, "NORM": True, "HAS_RESIDUAL": True, "HAS_BIAS": False, "SILU_MUL": True},
                  {"ROWS": 2, "NORM": False, "HAS_RESIDUAL": False, "HAS_BIAS": True, "SILU_MUL": False}):
        for fp8 in (False, True):  # FP8 weights: e4m3 rows and an fp32 scale each
            weights = {"w_ptr": "*fp8e4nv", "w_scale_ptr": "*fp32"} if fp8 else {}
            build(_gemv_kernel(), {**pointers, **weights, "n_out": "i32", "eps": "fp32"},
                  {"K_DIM": k_dim, **flags, "W_SCALED": fp8, "BLOCK_N": block_n(n_out), "BLOCK_K": BLOCK_K},
                  num_warps=4)
for k_dim in (1024, 2048, 6144):
    build(_quantize_rows_kernel(), {"x_ptr": "*bf16", "out_ptr": "*fp8e4nv", "scale_ptr": "*fp32"},
          {"K_DIM": k_dim, "BLOCK": 1024})
# the codec kernels as the decoder launches them: channels innermost (channel stride 1, which Triton
# specialises) with 16-divisible strides, whose stores must be vectorised; and time innermost
aligned = ("x_ptr", "y_ptr", "residual_ptr", "out_ptr", "length",
           *(f"{t}_stride_{axis}" for t in ("x", "y", "residual", "out") for axis in ("batch", "channel", "time")))
for layout, unit, tile in (("channel", "time", {"BLOCK_C": 32, "BLOCK_T": 32}),
                           ("time", "channel", {"BLOCK_C": 1, "BLOCK_T": 1024})):
    strides = {f"{t}_stride_{axis}": "i32" for t in ("x", "y", "residual", "out") for axis in ("batch", unit)}
    units = {f"{t}_stride_{layout}": 1 for t in ("x", "y", "residual", "out")}
    for has_bias in (False, True):
        fn = _snake_kernel()
        signature = {"x_ptr": "*bf16", "frequency_ptr": "*fp32", "magnitude_ptr": "*fp32", "bias_ptr": "*bf16",
                     "out_ptr": "*bf16", "length": "i32", **{k: v for k, v in strides.items() if k[0] in "xo"}}
        ptx = build(fn, signature, {**{k: v for k, v in units.items() if k[0] in "xo"}, "HAS_BIAS": has_bias, **tile},
                    aligned=[n for n in aligned if n in signature])
        assert "st.global.v4.b32" in ptx, (layout, has_bias)
    fn = _bias_residual_kernel()
    signature = {"y_ptr": "*bf16", "bias_ptr": "*fp32", "residual_ptr": "*bf16", "out_ptr": "*bf16", "length": "i32",
                 **{k: v for k, v in strides.items() if k[0] != "x"}}
    ptx = build(fn, signature, {**{k: v for k, v in units.items() if k[0] != "x"}, **tile},
                aligned=[n for n in aligned if n in signature])
    assert "st.global.v4.b32" in ptx, layout
print("built")
'''


def test_decode_kernels_build_for_hopper():
    result = subprocess.run([sys.executable, "-c", BUILD], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and "built" in result.stdout, result.stderr[-3000:]
