"""Codec decoder throughput for streaming: stateful chunks (eager, CUDA graphs) against re-decoding with left context.

usage: python benchmarks/bench_codec.py [--batches 1,16,64,128] [--chunks 1,2,4,8] [--out FILE]
       python benchmarks/bench_codec.py --smoke      # tiny decoder on CPU, a sanity check of the script
Real decoder shapes (CodecDecoderConfig defaults), random weights, bf16 on CUDA. "audio_s_per_s" is audio
seconds produced per wall second over all streams. The baseline decodes 25 frames of left context plus the
chunk from scratch and keeps the chunk's samples, as upstream chunked_decode and faster-qwen3-tts do (the
upstream module when importable, else our one-pass forward). "bf16_snr_db": the streamed bf16 decode (4-frame
chunks, as the benchmark runs it) against an fp32 one-pass decode of the same codes, with the fixture
checkpoint's codec weights (scaled random init, so the waveform is not just clamped noise). Writes JSON (default
benchmarks/results/codec_<device>.json; only with --out under --smoke) and prints it.
"""
import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qtts.bench import save_results  # noqa: E402
from qtts.config import FRAME_MS, CodecDecoderConfig  # noqa: E402
from qtts.config import parse_codec_config  # noqa: E402
from qtts.models.codec_decoder import CodecDecoder  # noqa: E402
from qtts.models.codec_streaming import StreamingCodecDecoder  # noqa: E402
from qtts.testing.configs import codec_config  # noqa: E402
from qtts.testing.random_weights import random_tensor  # noqa: E402
from qtts.testing.tensors import codec_tensor_specs  # noqa: E402
from qtts.weights import load_module  # noqa: E402

LEFT_CONTEXT = 25
TINY = CodecDecoderConfig(codebook_size=64, codebook_dim=32, latent_dim=32, hidden_size=32, intermediate_size=64,
                          num_layers=2, num_heads=4, num_kv_heads=4, head_dim=8, decoder_dim=48)


def random_decoder(cfg: CodecDecoderConfig, device: str, dtype: torch.dtype) -> CodecDecoder:
    decoder = CodecDecoder(cfg).eval()
    with torch.no_grad():
        for name, p in decoder.named_parameters():
            if name.endswith("embedding_sum"):
                p.normal_()
    decoder.refresh_codebooks()
    return decoder.to(device=device, dtype=dtype)


def upstream_decoder(ours: CodecDecoder):
    """Upstream Qwen3TTSTokenizerV2Decoder with our weights, or None when qwen-tts is not installed."""
    try:
        from tests.oracle import require_oracle

        require_oracle()
        from qwen_tts.core.tokenizer_12hz.configuration_qwen3_tts_tokenizer_v2 import (
            Qwen3TTSTokenizerV2DecoderConfig)
        from qwen_tts.core.tokenizer_12hz.modeling_qwen3_tts_tokenizer_v2 import Qwen3TTSTokenizerV2Decoder
    except BaseException as exc:  # pytest's Skipped is not an Exception
        print(f"upstream decoder unavailable ({type(exc).__name__}); the baseline re-decodes with ours", flush=True)
        return None
    c = ours.cfg
    config = Qwen3TTSTokenizerV2DecoderConfig(
        codebook_size=c.codebook_size, codebook_dim=c.codebook_dim, latent_dim=c.latent_dim, hidden_size=c.hidden_size,
        intermediate_size=c.intermediate_size, num_hidden_layers=c.num_layers, num_attention_heads=c.num_heads,
        num_key_value_heads=c.num_kv_heads, head_dim=c.head_dim, sliding_window=c.sliding_window,
        decoder_dim=c.decoder_dim, upsample_rates=list(c.upsample_rates), upsampling_ratios=list(c.upsampling_ratios))
    weight = ours.pre_conv.conv.weight
    upstream = Qwen3TTSTokenizerV2Decoder(config).eval()
    upstream.load_state_dict(ours.state_dict(), strict=False)
    return upstream.to(device=weight.device, dtype=weight.dtype)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def seconds_per_call(fn, device: str, min_time_s: float, max_iters: int) -> float:
    for _ in range(2):
        fn()
    sync(device)
    calls, start = 0, time.perf_counter()
    while calls < max_iters and (calls < 3 or time.perf_counter() - start < min_time_s):
        fn()
        calls += 1
        if calls % 4 == 0:
            sync(device)
    sync(device)
    return (time.perf_counter() - start) / calls


def fixture_decoder(size: str) -> CodecDecoder:
    """The codec decoder of the fixture checkpoint of `size` (fp32, CPU), built in memory."""
    config = codec_config(size)
    specs = [s for s in codec_tensor_specs(config) if s.name.startswith("decoder.")]
    decoder = CodecDecoder(parse_codec_config(config).decoder).eval()
    load_module(decoder, {s.name.removeprefix("decoder."): random_tensor(s, seed=0) for s in specs}, "fixture")
    decoder.refresh_codebooks()  # in fp32, before any cast, as load_codec_decoder does
    return decoder


def bf16_snr_db(size: str, device: str, graphs: bool, batch: int = 2, frames: int = 24, chunk: int = 4) -> dict:
    """SNR of the streamed bf16 decode against the fp32 one-pass decode (the fp32 one on CPU)."""
    fp32 = fixture_decoder(size)
    codes = torch.randint(0, fp32.cfg.codebook_size, (batch, fp32.cfg.num_quantizers, frames),
                          generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = fp32(codes)[:, 0].double()
        bf16 = fixture_decoder(size).to(device=device, dtype=torch.bfloat16)
        streams = StreamingCodecDecoder(bf16, max_streams=batch, use_graphs=graphs, graph_chunk_frames=(chunk,))
        slots = [streams.allocate() for _ in range(batch)]
        pieces = [streams.decode(slots, codes[:, :, start:start + chunk].to(device))
                  for start in range(0, frames, chunk)]
        upstream = upstream_decoder(fp32.to(device=device, dtype=torch.bfloat16))
        upstream_wave = None if upstream is None else upstream(codes.to(device))[:, 0].double().cpu()

    def snr(test: torch.Tensor) -> float:
        noise = (test - reference).pow(2).sum().item()
        return round(10 * math.log10(reference.pow(2).sum().item() / max(noise, 1e-30)), 2)
    return {"batch": batch, "frames": frames, "chunk_frames": chunk,
            "reference_rms": round(reference.pow(2).mean().sqrt().item(), 4),
            "snr_db": snr(torch.cat(pieces, dim=-1).double().cpu()),
            "upstream_one_pass_snr_db": None if upstream_wave is None else snr(upstream_wave)}


def codes_for(cfg: CodecDecoderConfig, batch: int, frames: int, device: str) -> torch.Tensor:
    return torch.randint(0, cfg.codebook_size, (batch, cfg.num_quantizers, frames), device=device)


def stateful_run(decoder, batch, chunk, device, graphs, args) -> dict:
    streams = StreamingCodecDecoder(decoder, max_streams=batch, use_graphs=graphs, graph_chunk_frames=(chunk,),
                                    batch_buckets=[batch])
    slots = [streams.allocate() for _ in range(batch)]
    codes = codes_for(decoder.cfg, batch, chunk, device)
    seconds = seconds_per_call(lambda: streams.decode(slots, codes), device, args.min_time_s, args.max_iters)
    run = {"ms_per_call": 1e3 * seconds, "audio_s_per_s": batch * chunk * FRAME_MS / 1e3 / seconds}
    if (batch, chunk) in streams.conv_layouts:  # the convolutions its capture switched to (N, C, L)
        run["ncl"] = [r["name"] for r in streams.conv_layouts[(batch, chunk)] if r["ncl"]]
    return run


def redecode_run(module, cfg, batch, chunk, device, args) -> dict:
    codes = codes_for(cfg, batch, LEFT_CONTEXT + chunk, device)
    seconds = seconds_per_call(lambda: module(codes)[..., -chunk * cfg.samples_per_frame:], device,
                               args.min_time_s, args.max_iters)
    return {"ms_per_call": 1e3 * seconds, "audio_s_per_s": batch * chunk * FRAME_MS / 1e3 / seconds}


def first_chunk_latency_ms(decoder, device, graphs) -> float:
    """A fresh stream's first 2-frame chunk at batch 1 (graph captured beforehand)."""
    streams = StreamingCodecDecoder(decoder, max_streams=1, use_graphs=graphs, graph_chunk_frames=(2,))
    codes = codes_for(decoder.cfg, 1, 2, device)
    best = float("inf")
    for _ in range(5):
        slot = streams.allocate()
        sync(device)
        start = time.perf_counter()
        streams.decode([slot], codes).cpu()
        best = min(best, time.perf_counter() - start)
        streams.free(slot)
    return 1e3 * best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", default="1,16,64,128")
    parser.add_argument("--chunks", default="1,2,4,8")
    parser.add_argument("--whole-clip", default="16x250", help="BATCHxFRAMES of the one-pass comparison")
    parser.add_argument("--min-time-s", type=float, default=0.5)
    parser.add_argument("--max-iters", type=int, default=50)
    parser.add_argument("--smoke", action="store_true", help="tiny decoder, batches 1,2, chunks 1,2, on CPU")
    parser.add_argument("--cudnn-benchmark", action="store_true", help="let cuDNN time its conv algorithms")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    if args.smoke:
        args.batches, args.chunks, args.whole_clip, args.min_time_s, args.max_iters = "1,2", "1,2", "1x4", 0.0, 3
    cfg = TINY if args.smoke else CodecDecoderConfig()
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    torch.set_grad_enabled(False)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    decoder = random_decoder(cfg, device, dtype)
    upstream = upstream_decoder(decoder)
    results = {"device": name, "torch": torch.__version__, "dtype": str(dtype).replace("torch.", ""),
               "cudnn_benchmark": args.cudnn_benchmark, "left_context_frames": LEFT_CONTEXT,
               "baseline": "upstream" if upstream is not None else "ours one-pass", "runs": []}
    variants = ["stateful_eager"] + (["stateful_graphs"] if device == "cuda" else []) + ["redecode_context"]
    for batch in (int(b) for b in args.batches.split(",")):
        for chunk in (int(c) for c in args.chunks.split(",")):
            for variant in variants:
                if variant == "redecode_context":
                    run = redecode_run(upstream or decoder, cfg, batch, chunk, device, args)
                else:
                    run = stateful_run(decoder, batch, chunk, device, variant == "stateful_graphs", args)
                run = {"variant": variant, "batch": batch, "chunk_frames": chunk, **run}
                results["runs"].append(run)
                print(json.dumps(run), flush=True)
                if device == "cuda":
                    torch.cuda.empty_cache()
    batch, frames = (int(n) for n in args.whole_clip.split("x"))
    codes = codes_for(cfg, batch, frames, device)
    for variant, module in (("one_pass_ours", decoder), ("one_pass_upstream", upstream)):
        if module is not None:
            seconds = seconds_per_call(lambda: module(codes), device, args.min_time_s, min(args.max_iters, 5))
            run = {"variant": variant, "batch": batch, "frames": frames, "ms_per_call": 1e3 * seconds,
                   "audio_s_per_s": batch * frames * FRAME_MS / 1e3 / seconds}
            results["runs"].append(run)
            print(json.dumps(run), flush=True)
    results["first_chunk_2_frames_ms"] = {
        "stateful_eager": first_chunk_latency_ms(decoder, device, False),
        **({"stateful_graphs": first_chunk_latency_ms(decoder, device, True)} if device == "cuda" else {}),
    }
    results["bf16_snr_db"] = bf16_snr_db("tiny" if args.smoke else "0.6b", device, device == "cuda")
    text = json.dumps(results, indent=1)
    print(text)
    if args.smoke and not args.out:
        return
    save_results(results, args.out or ROOT / f"benchmarks/results/codec_{name.replace(' ', '_')}.json")


if __name__ == "__main__":
    main()
