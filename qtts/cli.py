"""The `qtts` command: speak, design, clone, list voices, make fixture checkpoints, serve, bench, eval."""
from __future__ import annotations

import argparse
import sys
import time

from .errors import QttsError
from .eval import add_eval_parser, run_eval
from .server.cli import add_serve_parser, run_serve

DEFAULT_MODEL = "Qwen/Qwen3-TTS-12Hz-0.6B-CustomVoice"


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL, help="checkpoint folder or hub id")
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda when available)")
    p.add_argument("--dtype", default=None, help="bf16, fp16 or fp32 (default: bf16 on GPU, fp32 on CPU)")


def _add_generation_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("text", help="the text to speak")
    _add_model_options(p)
    p.add_argument("--language", default="auto")
    p.add_argument("--out", default="out.wav", help="output audio file (.wav, .flac, .mp3, .ogg …)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--greedy", action="store_true", help="no sampling: always take the most likely code")
    p.add_argument("--temperature", type=float)
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--repetition-penalty", type=float)
    p.add_argument("--subtalker-temperature", type=float)
    p.add_argument("--subtalker-top-k", type=int)
    p.add_argument("--subtalker-top-p", type=float)
    p.add_argument("--max-frames", type=int, help="cap on generated frames (12.5 per second)")
    p.add_argument("--text-mode", choices=("streaming", "non-streaming"), default=None,
                   help="how text is fed to the model (default: the mode's upstream default)")
    p.add_argument("--stream", action="store_true", help="decode and write audio chunk by chunk while generating")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qtts", description="Qwen3-TTS 12Hz inference")
    sub = parser.add_subparsers(dest="command", required=True)
    speak = sub.add_parser("speak", help="CustomVoice: speak with a built-in speaker")
    _add_generation_options(speak)
    speak.add_argument("--speaker", required=True)
    speak.add_argument("--instruct", default=None, help="style instruction (1.7B CustomVoice)")
    design = sub.add_parser("design", help="VoiceDesign: speak in a voice made from a description")
    _add_generation_options(design)
    design.add_argument("--instruct", required=True, help="description of the voice")
    clone = sub.add_parser("clone", help="Base: speak in the voice of a reference recording")
    _add_generation_options(clone)
    clone.add_argument("--ref", help="reference audio file")
    clone.add_argument("--ref-text", default=None, help="transcript of the reference (enables ICL cloning)")
    clone.add_argument("--voice", help="a voice file saved with --save-voice (instead of --ref)")
    clone.add_argument("--save-voice", help="save the computed voice prompt to this file")
    voices = sub.add_parser("voices", help="list the model's speakers and languages")
    _add_model_options(voices)
    fixture = sub.add_parser("fixture", help="write a random-weight checkpoint in the official layout")
    fixture.add_argument("--type", default="custom_voice", choices=("base", "custom_voice", "voice_design"))
    fixture.add_argument("--size", default="tiny", choices=("tiny", "tiny-0.6b", "0.6b", "1.7b"))
    fixture.add_argument("--seed", type=int, default=0)
    fixture.add_argument("--out", required=True)
    bench = sub.add_parser("bench", help="time one stream: ms per frame, RTF, first (audible) audio latency")
    _add_model_options(bench)
    bench.add_argument("--frames", type=int, default=250, help="frames of the throughput run")
    bench.add_argument("--requests", type=int, default=20, help="requests per first-audio measurement")
    add_serve_parser(sub)
    add_eval_parser(sub)
    return parser


def _request(tts, args, **mode):
    sampling = {name: getattr(args, name) for name in
                ("temperature", "top_k", "top_p", "repetition_penalty", "subtalker_temperature",
                 "subtalker_top_k", "subtalker_top_p")}
    non_streaming = None if args.text_mode is None else args.text_mode == "non-streaming"
    return tts.request(args.text, language=args.language, seed=args.seed, greedy=args.greedy,
                       max_frames=args.max_frames, non_streaming_mode=non_streaming, **mode, **sampling)


def _generate(args) -> None:
    import numpy as np
    from tqdm import tqdm

    from . import audio as audio_io
    from .api import TTS
    from .voices import VoicePrompt

    tts = TTS.from_pretrained(args.model, device=args.device, dtype=args.dtype)
    if args.command == "speak":
        request = _request(tts, args, speaker=args.speaker, instruct=args.instruct)
    elif args.command == "design":
        request = _request(tts, args, instruct=args.instruct)
    else:
        if args.voice:
            voice = VoicePrompt.load(args.voice)
        elif args.ref:
            voice = tts.create_voice(args.ref, reference_text=args.ref_text)
        else:
            raise QttsError("clone needs --ref REFERENCE.wav (optionally --ref-text) or --voice FILE")
        if args.save_voice:
            voice.save(args.save_voice)
        request = _request(tts, args, voice=voice)
    started = time.perf_counter()
    if args.stream:
        chunks, first = [], None
        for chunk in tts.stream(request):
            first = first if first is not None else time.perf_counter() - started
            chunks.append(chunk)
        samples = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
        print(f"first audio after {first * 1000:.0f} ms" if first is not None else "no audio", file=sys.stderr)
    else:
        with tqdm(desc="frames", unit="frame", file=sys.stderr) as bar:
            samples = tts.generate(request, on_frame=bar.update).samples
    elapsed = time.perf_counter() - started
    audio_io.write_audio(args.out, samples, tts.sample_rate)
    seconds = len(samples) / tts.sample_rate
    print(f"wrote {args.out}: {seconds:.2f} s of audio in {elapsed:.2f} s (RTF {seconds / max(elapsed, 1e-9):.2f}x)",
          file=sys.stderr)


def _voices(args) -> None:
    from .checkpoint import resolve_checkpoint
    from .config import load_model_config

    cfg = load_model_config(resolve_checkpoint(args.model))
    print(f"model type: {cfg.model_type} ({cfg.model_size})")
    if cfg.speakers:
        print("speakers: " + ", ".join(cfg.speakers))
    print("languages: " + ", ".join(cfg.languages))


def _fixture(args) -> None:
    from .testing.fixtures import write_checkpoint

    folder = write_checkpoint(args.out, model_type=args.type, size=args.size, seed=args.seed)
    print(f"wrote a random-weight {args.size} {args.type} checkpoint to {folder}")


def _bench(args) -> None:
    import json

    from . import bench
    from .api import TTS

    tts = TTS.from_pretrained(args.model, device=args.device, dtype=args.dtype)
    print(json.dumps(bench.run(tts, frames=args.frames, requests=args.requests), indent=1))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {"speak": _generate, "design": _generate, "clone": _generate, "voices": _voices,
                "fixture": _fixture, "bench": _bench, "serve": run_serve, "eval": run_eval}
    try:
        handlers[args.command](args)
    except (QttsError, ValueError, FileNotFoundError) as exc:
        print(f"qtts: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
