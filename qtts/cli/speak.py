"""`qtts speak | design | clone`: one text to one audio file, everything checked before the model loads."""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from ..config import FRAME_MS
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
    """The model's config, tokenizer and voice encoders, not its generator: enough to check requests and
    split long texts as the generator will (same max_len)."""
    from ..api import TTS

    planner = TTS.from_pretrained(args.model, device=args.device, dtype=args.dtype, max_len=args.max_len,
                                  generator=False)
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


def frame_cap(parts) -> int:
    """The most frames the parts of a text can generate (the bar's total)."""
    from ..engine.planning import default_frame_cap

    return sum(part.max_frames if part.max_frames is not None else default_frame_cap(part.text) for part in parts)


def warn_if_capped(parts: list[tuple[str, int]], what: str = "") -> None:
    """Say so on stderr (above any progress bar) when generation ended at a frame cap; parts: (finish reason,
    frames) of each part the text was spoken in (one for a text that fit)."""
    from tqdm import tqdm

    capped = [(number, frames) for number, (reason, frames) in enumerate(parts, start=1) if reason == "length"]
    if not capped:
        return
    if len(parts) == 1:
        frames = capped[0][1]
        where = f"stopped at the frame cap ({frames} frames, {frames * FRAME_MS / 1000:.1f} s)"
    else:
        numbers = ", ".join(str(number) for number, _ in capped)
        where = f"part{'s' if len(capped) > 1 else ''} {numbers} of {len(parts)} stopped at the frame cap"
    tqdm.write(f"qtts: warning: {what}{where} before the model ended the speech; raise --max-frames (it caps "
               "each part of a long text) or try another --seed", file=sys.stderr)


def speech_parts(speech) -> list[tuple[str, int]]:
    """(finish reason, frames) of each part of a Speech (itself when the text was spoken whole)."""
    return [(part.finish_reason, len(part.codes)) for part in speech.parts or [speech]]


def run(args: argparse.Namespace) -> None:
    """Check, load, generate, write; a bad option fails before the model loads."""
    out = checks.audio_output(args.out or "out.wav", streamed=args.stream)
    check_voice_files(args)
    planner = load_planner(args)
    options = request_options(args)
    if args.command == "clone":
        options["voice"] = clone_voice(args, planner)
    if args.text_stdin:
        if options.get("non_streaming_mode"):
            raise QttsError("--text-stdin speaks text as it arrives, in streaming text mode: drop --text-mode")
        planner.request("", text_open=True, **options)  # checks the options before the model loads
        _speak_stdin(load_generator(args, planner), options, out, args.stream)
        return
    request = planner.request(args.text, **options)
    parts = planner.split(request)
    tts = load_generator(args, planner)
    started = time.perf_counter()
    samples_written, finished = (_stream(tts, request, parts, out) if args.stream else _whole(tts, request, parts, out))
    elapsed = time.perf_counter() - started
    seconds = samples_written / tts.sample_rate
    warn_if_capped(finished)
    print(f"wrote {out}: {seconds:.2f} s of audio in {elapsed:.2f} s (RTF {seconds / max(elapsed, 1e-9):.2f}x)",
          file=sys.stderr)


def stdin_pieces(stream=None, size: int = 4096):
    """Text from standard input as it arrives (UTF-8, a piece per read; a character split between reads waits)."""
    import codecs

    source = (stream or sys.stdin).buffer
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    while True:
        data = source.read1(size) if hasattr(source, "read1") else source.read(size)
        if not data:
            break
        piece = decoder.decode(data)
        if piece:
            yield piece
    rest = decoder.decode(b"", final=True)
    if rest:
        yield rest


def _speak_stdin(tts, options: dict, out, grow: bool) -> None:
    """Speak standard input as it arrives; write the audio as it comes (--stream) or at the end."""
    started, samples, chunks = time.perf_counter(), 0, []
    sink = GrowingAudioFile(out, tts.sample_rate) if grow else None
    try:
        for chunk in tts.stream_text(stdin_pieces(), **options):
            samples += len(chunk)
            if sink is not None:
                sink.write(chunk)
            else:
                chunks.append(chunk)
    except BaseException:
        if sink is not None:
            sink.discard()
        raise
    if sink is not None:
        sink.close()
    else:
        write_whole(out, np.concatenate(chunks) if chunks else np.zeros(0, np.float32), tts.sample_rate)
    elapsed = time.perf_counter() - started
    print(f"wrote {out}: {samples / tts.sample_rate:.2f} s of audio in {elapsed:.2f} s", file=sys.stderr)


def _progress(parts):
    from tqdm import tqdm

    return tqdm(total=frame_cap(parts), desc="generating", unit="frame", file=sys.stderr)


def _whole(tts, request, parts, out) -> tuple[int, list[tuple[str, int]]]:
    with _progress(parts) as bar:
        speech = tts.generate(request, on_frame=bar.update)  # each frame decodes as it is made: no stall after
        bar.total = bar.n = len(speech.codes)
    write_whole(out, speech.samples, speech.sample_rate)
    return len(speech.samples), speech_parts(speech)


def _stream(tts, request, parts, out) -> tuple[int, list[tuple[str, int]]]:
    samples, started, first = 0, time.perf_counter(), None
    with GrowingAudioFile(out, tts.sample_rate) as sink, _progress(parts) as bar:
        stream = tts.stream(request)
        for chunk in stream:
            first = first if first is not None else time.perf_counter() - started
            sink.write(chunk)
            samples += len(chunk)
            bar.update(stream.frames - bar.n)
        bar.total = bar.n
    if first is not None:
        print(f"first audio after {first * 1000:.0f} ms", file=sys.stderr)
    return samples, [(part.finish_reason, part.frames) for part in stream.parts]
