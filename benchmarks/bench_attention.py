"""The talker's decode attention alone, both kernels side by side: microseconds per layer call and the cache bytes
read per second, over batch sizes and cached lengths (1.7B's shape: 16 query heads, 8 KV heads of 128, bf16).

usage: python benchmarks/bench_attention.py [--rows 1,8,32,64,128,256] [--lengths 256,1024] [--out FILE] [--smoke]
`loop` is the broadcast-product kernel, `dot` the tensor-core one (kernels/attention.py); `default` marks the one
the engine picks for that call (use_dot_products). Each time is the median of triton.testing.do_bench. Then a
prompt's rows as the prefill runs them (rows of one slot, causal) through both kernels against an fp32
reference (`prompt_rows_check`, max abs difference). Writes JSON
(default benchmarks/results/attention_<device>.json; under --smoke only with --out).
"""
import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="1,8,32,64,128,256")
    parser.add_argument("--lengths", default="256,1024", help="cached positions of every row")
    parser.add_argument("--out", default=None)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes under the Triton interpreter on CPU")
    args = parser.parse_args()
    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"
        args.rows, args.lengths = "1,3", "40"
    import torch
    import triton.testing

    from qtts.bench import save_results
    from qtts.kernels.attention import attention_splits, decode_attention_fused, use_dot_products

    on_cuda = torch.cuda.is_available() and not args.smoke
    device, dtype = ("cuda", torch.bfloat16) if on_cuda else ("cpu", torch.float32)
    heads, kv_heads, dim, block_n = (16, 8, 128, 64) if on_cuda else (4, 2, 16, 16)
    results = {"device": torch.cuda.get_device_name() if on_cuda else "cpu", "torch": torch.__version__,
               "heads": heads, "kv_heads": kv_heads, "head_dim": dim, "block_n": block_n, "runs": []}
    for length in (int(n) for n in args.lengths.split(",")):
        for rows in (int(n) for n in args.rows.split(",")):
            q = torch.randn(rows, heads, dim, device=device, dtype=dtype)
            k, v = (torch.randn(rows, kv_heads, length, dim, device=device, dtype=dtype) for _ in range(2))
            positions = torch.full((rows,), length - 1, device=device)
            splits = attention_splits(rows, kv_heads, length, block_n, q.device)
            reference = decode_attention_fused(q, k, v, positions, block_n=block_n, dot=False)
            row = {"rows": rows, "length": length, "splits": splits,
                   "default": "dot" if use_dot_products(16, splits, block_n) else "loop"}
            for name, dot in (("loop", False), ("dot", True)):
                out = decode_attention_fused(q, k, v, positions, block_n=block_n, dot=dot)
                error = (out.float() - reference.float()).abs().max().item()
                if on_cuda:
                    us = triton.testing.do_bench(
                        lambda: decode_attention_fused(q, k, v, positions, block_n=block_n, dot=dot),
                        return_mode="median") * 1e3
                else:
                    us = 0.0
                cache_bytes = 2 * rows * kv_heads * length * dim * k.element_size()
                row[name] = {"us": round(us, 2), "gb_per_s": round(cache_bytes / us / 1e3, 1) if us else None,
                             "max_abs_diff_vs_loop": error}
            results["runs"].append(row)
            print(row, flush=True)
    # a prompt's rows as the prefill runs them (rows of one slot, each seeing keys up to its own position; the
    # last block partly filled), both kernels against an fp32 reference at this shape
    tokens, start = (200, 37) if on_cuda else (20, 5)
    length = max(int(n) for n in args.lengths.split(","))
    k, v = (torch.randn(3, kv_heads, length, dim, device=device, dtype=dtype) for _ in range(2))
    q = torch.randn(tokens, heads, dim, device=device, dtype=dtype)
    positions = torch.arange(start, start + tokens, device=device)
    slots = torch.full((tokens,), 1, device=device)
    end = start + tokens
    mask = torch.arange(end, device=device).view(1, -1) <= positions.view(-1, 1)
    reference = torch.nn.functional.scaled_dot_product_attention(
        q.float().transpose(0, 1).unsqueeze(0), k[1:2, :, :end].float(), v[1:2, :, :end].float(), attn_mask=mask,
        enable_gqa=True)[0].transpose(0, 1)
    results["prompt_rows_check"] = {"tokens": tokens, "start": start, **{
        name: (decode_attention_fused(q, k, v, positions, slots=slots, block_n=block_n, dot=dot).float()
               - reference).abs().max().item() for name, dot in (("loop", False), ("dot", True))}}
    print({"prompt_rows_max_abs_diff_vs_fp32": results["prompt_rows_check"]}, flush=True)
    path = args.out or ROOT / "benchmarks" / "results" / f"attention_{results['device'].replace(' ', '_')}.json"
    if args.out or not args.smoke:
        save_results(results, path)


if __name__ == "__main__":
    main()
