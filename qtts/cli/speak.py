"""`qtts speak | design | clone`: one text to one audio file, everything checked before the model loads."""
from __future__ import annotations

import argparse
import sys
import time

from ..config import FRAME_MS, SAMPLES_PER_FRAME
from ..errors import QttsError, WrongModelTypeError
from . import checks
from .output import GrowingAudioFile, write_whole

# command -> the model type it needs; model type -> its name on the hub and the command that runs it
MODEL_TYPE_OF_COMMAND = {"speak": "custom_voice", "design": "voice_design", "clone": "base"}
MODEL_TYPE_NAMES = {"custom_voice": "CustomVoice", "voice_design": "VoiceDesign", "base": "Base"}
COMMAND_OF_MODEL_TYPE = {model_type: command for command, model_type in MODEL_TYPE_OF_COMMAND.items()}
SAMPLING_OPTIONS = ("temperature", "top_k", "top_p", "repetition_penalty", "subtalker_temperature",
                    "subtalker_top_k", "subtalker_top_p")


def load_planner(args: argparse.Namespace):
    """The model's config, tokenizer and voice encoders, not its generator: enough to check requests."""
    from ..api import TTS

    planner = TTS.from_pretrained(args.model, device=args.device, dtype=args.dtype, generator=False)
    needed = MODEL_TYPE_OF_COMMAND[args.command]
    if planner.model_type != needed:
        raise WrongModelTypeError(
            f"`qtts {args.command}` needs a {MODEL_TYPE_NAMES[needed]} model; {args.model} is a "
            f"{MODEL_TYPE_NAMES[planner.model_type]} model (`qtts {COMMAND_OF_MODEL_TYPE[planner.model_type]}` "
            "runs it)")
    return planner


def load_generator(args: argparse.Namespace, planner):
    """The whole model, once every request has been checked."""
    from ..api import TTS

    return TTS.from_pretrained(planner.folder, device=args.device, dtype=args.dtype, max_len=args.max_len,
                                     fp8_talker=args.fp8_talker, fp8_predictor=args.fp8_predictor, kv_cache=args.kv_cache)


def request_options(args: argparse.Namespace) -> dict:
    """Keyword arguments of `TTS.request` that every text of this command shares."""
    options = {name: getattr(args, name) for name in SAMPLING_OPTIONS}
    options["non_streaming_mode"] = None if args.text_mode is None else args.text_mode == "non-streaming"
    options.update(language=args.language, seed=args.seed, greedy=args.greedy, max_frames=args.max_frames)
    if args.command == "speak":
        options.update(speaker=args.speaker, instruct=args.instruct)
    elif args.command == "design":
        options.update(instruct=args.instruct)
    return options


def check_voice_files(args: argparse.Namespace) -> None:
    """clone's --ref / --voice / --save-voice, before anything loads."""
    if args.command != "clone":
        return
    if bool(args.ref) == bool(args.voice):
        raise QttsError("clone needs either --ref REFERENCE.wav (optionally --ref-text) or --voice FILE")
    if args.ref_text and not args.ref:
        raise QttsError("--ref-text is the transcript of --ref; give --ref too")
    checks.input_file(args.ref or args.voice, "--ref" if args.ref else "--voice")
    if args.save_voice:
        checks.writable_file(args.save_voice)


def clone_voice(args: argparse.Namespace, planner):
    """The voice prompt of --voice, or computed from --ref (and saved with --save-voice)."""
    from ..voices import VoicePrompt

    voice = VoicePrompt.load(args.voice) if args.voice else planner.create_voice(args.ref, reference_text=args.ref_text)
    if args.save_voice:
        voice.save(args.save_voice)
    return voice


def frame_cap(request) -> int:
    """The most frames `request` can generate (the bar's total)."""
    from ..engine.planning import default_frame_cap

    return request.max_frames if request.max_frames is not None else default_frame_cap(request.text)


def warn_if_capped(finish_reason: str, frames: int, what: str = "") -> None:
    """Say so on stderr (above any progress bar) when generation ended at the frame cap."""
    from tqdm import tqdm

    if finish_reason == "length":
        seconds = frames * FRAME_MS / 1000
        tqdm.write(f"qtts: warning: {what}stopped at the frame cap ({frames} frames, {seconds:.1f} s) before the "
                   "model ended the speech; raise --max-frames or --max-len, or split the text", file=sys.stderr)


def run(args: argparse.Namespace) -> None:
    """Check, load, generate, write; a bad option fails before the model loads."""
    out = checks.audio_output(args.out or "out.wav", streamed=args.stream)
    check_voice_files(args)
    planner = load_planner(args)
    options = request_options(args)
    if args.command == "clone":
        options["voice"] = clone_voice(args, planner)
    request = planner.request(args.text, **options)
    tts = load_generator(args, planner)
    started = time.perf_counter()
    samples_written, finish_reason = (_stream(tts, request, out) if args.stream else _whole(tts, request, out))
    elapsed = time.perf_counter() - started
    seconds = samples_written / tts.sample_rate
    warn_if_capped(finish_reason, samples_written // SAMPLES_PER_FRAME)
    print(f"wrote {out}: {seconds:.2f} s of audio in {elapsed:.2f} s (RTF {seconds / max(elapsed, 1e-9):.2f}x)",
          file=sys.stderr)


def _progress(request):
    from tqdm import tqdm

    return tqdm(total=frame_cap(request), desc="generating", unit="frame", file=sys.stderr)


def _whole(tts, request, out) -> tuple[int, str]:
    with _progress(request) as bar:
        speech = tts.generate(request, on_frame=bar.update)  # each frame decodes as it is made: no stall after
        bar.total = bar.n = len(speech.codes)
    write_whole(out, speech.samples, speech.sample_rate)
    return len(speech.samples), speech.finish_reason


def _stream(tts, request, out) -> tuple[int, str]:
    samples, started, first = 0, time.perf_counter(), None
    with GrowingAudioFile(out, tts.sample_rate) as sink, _progress(request) as bar:
        for chunk in tts.stream(request):
            first = first if first is not None else time.perf_counter() - started
            sink.write(chunk)
            samples += len(chunk)
            bar.update(samples // SAMPLES_PER_FRAME - bar.n)
    if first is not None:
        print(f"first audio after {first * 1000:.0f} ms", file=sys.stderr)
    # the stream does not report why it ended; a stream that used every frame it could was cut
    return samples, "length" if samples // SAMPLES_PER_FRAME >= frame_cap(request) else "stop"
