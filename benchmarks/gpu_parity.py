"""Token match rate of qtts against upstream qwen-tts at the real shapes, fp32 and bf16 (random weights).

usage: python benchmarks/gpu_parity.py --sizes 0.6b,1.7b --frames 32
Greedy decoding on both sides, same checkpoint; reports per mode the frames matched before the
first difference and the fraction of equal codes, in fp32 (TF32 off) and in bf16 with a control.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.oracle import require_oracle  # noqa: E402

TEXT = "The quick brown fox jumps over the lazy dog while the morning sun rises over the hills."


def compare(ours: torch.Tensor, theirs: torch.Tensor) -> dict:
    n = min(len(ours), len(theirs))
    equal_frames = (ours[:n].cpu() == theirs[:n].cpu()).all(dim=1)
    prefix = int(equal_frames.long().cumprod(0).sum()) if n else 0
    rate = float((ours[:n].cpu() == theirs[:n].cpu()).float().mean()) if n else 0.0
    return {"frames_ours": len(ours), "frames_upstream": len(theirs), "matching_prefix": prefix,
            "code_match_rate": rate}


def reference_audio():
    t = np.arange(48000) / 24000
    return (0.3 * np.sin(2 * np.pi * 170 * t) * (1 + 0.5 * np.sin(6 * t))).astype(np.float32), 24000


def cases(model_type: str, size: str):
    base = dict(language="english")
    if model_type == "custom_voice":
        for nsm in (True, False):
            yield f"custom_voice nsm={nsm}", dict(base, speaker="aiden", non_streaming_mode=nsm)
            if not nsm:
                yield f"custom_voice auto nsm={nsm}", dict(speaker="aiden", language="auto", non_streaming_mode=nsm)
            if size == "1.7b":
                yield f"custom_voice+instruct nsm={nsm}", dict(base, speaker="aiden", instruct="Speak softly.",
                                                               non_streaming_mode=nsm)
    elif model_type == "voice_design":
        yield "voice_design nsm=False", dict(base, instruct="A warm female narrator.", non_streaming_mode=False)
    else:
        for icl in (False, True):
            yield f"clone icl={icl} nsm=False", dict(base, icl=icl, non_streaming_mode=False)


def upstream_codes(model, captured, model_type, kw, frames):
    greedy = dict(do_sample=False, subtalker_dosample=False, max_new_tokens=frames + 1)
    kw = dict(kw)
    if model_type == "custom_voice":
        model.generate_custom_voice(TEXT, **kw, **greedy)
    elif model_type == "voice_design":
        model.generate_voice_design(TEXT, **kw, **greedy)
    else:
        icl = kw.pop("icl")
        wav, sr = reference_audio()
        items = model.create_voice_clone_prompt(ref_audio=(wav, sr), ref_text="A reference." if icl else None,
                                                x_vector_only_mode=not icl)
        model.generate_voice_clone(TEXT, voice_clone_prompt=items, **kw, **greedy)
    return captured[-1][0]


def ours_codes(tts, model_type, kw, frames):
    kw = dict(kw)
    if model_type == "base":
        icl = kw.pop("icl")
        wav, sr = reference_audio()
        kw["voice"] = tts.create_voice(wav, reference_text="A reference." if icl else None, sample_rate=sr)
    return tts.generate(tts.request(TEXT, greedy=True, max_frames=frames, **kw)).codes


def load_upstream(Qwen3TTSModel, folder, dtype, device):
    model = Qwen3TTSModel.from_pretrained(str(folder), device_map=device, dtype=dtype, attn_implementation="sdpa")
    captured = []
    original = model.model.generate

    def capture(*a, _original=original, **k):
        codes, hidden = _original(*a, **k)
        captured.append([c.clone() for c in codes])
        return codes, hidden

    model.model.generate = capture
    return model, captured


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="0.6b,1.7b")
    parser.add_argument("--types", default="custom_voice,voice_design,base")
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtypes", default="fp32,bf16", help="fp32 (exactness), bf16 (with a control)")
    parser.add_argument("--out", default="benchmarks/results/gpu_parity.json")
    args = parser.parse_args()
    require_oracle()
    from qwen_tts import Qwen3TTSModel

    from qtts.api import TTS
    from qtts.bench import save_results
    from qtts.testing.fixtures import fixture_dir

    # fp32 is the exactness check (TF32 off on both sides); bf16 tokens of random-weight models
    # flip on rounding because their logits are nearly flat, so bf16 rows carry a control:
    # upstream bf16 against upstream fp32, the divergence rounding alone causes.
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    device = args.device
    dtypes = args.dtypes.split(",")
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    report = {"device": name, "frames": args.frames, "cases": []}
    for size in args.sizes.split(","):
        for model_type in args.types.split(","):
            if model_type == "voice_design" and size == "0.6b":
                continue  # there is no 0.6B VoiceDesign model
            folder = fixture_dir(model_type, size)
            up32 = load_upstream(Qwen3TTSModel, folder, torch.float32, device)
            ours32 = TTS.from_pretrained(folder, device=device, dtype="fp32")
            if "bf16" in dtypes:
                up16 = load_upstream(Qwen3TTSModel, folder, torch.bfloat16, device)
                ours16 = TTS.from_pretrained(folder, device=device, dtype="bf16")
            for case, kw in cases(model_type, size):
                theirs32 = upstream_codes(*up32, model_type, kw, args.frames)
                row = {"size": size, "case": case,
                       "fp32_ours_vs_upstream_fp32": compare(ours_codes(ours32, model_type, kw, args.frames), theirs32)}
                if "bf16" in dtypes:
                    theirs16 = upstream_codes(*up16, model_type, kw, args.frames)
                    row["bf16_ours_vs_upstream_bf16"] = compare(ours_codes(ours16, model_type, kw, args.frames), theirs16)
                    row["control_upstream_bf16_vs_fp32"] = compare(theirs16, theirs32)
                report["cases"].append(row)
                print(json.dumps(row), flush=True)
                save_results(report, args.out)
            up16 = ours16 = None
            del up32, ours32
            if device == "cuda":
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
