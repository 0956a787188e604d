"""The `qtts` command line: every subcommand, option and help text."""
from __future__ import annotations

import argparse
from importlib.metadata import PackageNotFoundError, version

from ..eval import add_eval_parser
from ..server.cli import add_serve_parser

DEFAULT_MODEL = "Qwen/Qwen3-TTS-12Hz-0.6B-CustomVoice"
MAX_SEED = 2**63 - 1  # seeds live in int64 tensors


def seed(text: str) -> int:
    """An argparse type: an integer seed the engine can hold."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"{text} is out of range; use 0 to {MAX_SEED}")
    return value


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def _package_version() -> str:
    try:
        return version("qtts")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"checkpoint folder or hub id (default: {DEFAULT_MODEL})")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--dtype", default=None, choices=("bf16", "fp16", "fp32"),
                   help="weights' precision (default: bf16 on GPU, fp32 on CPU)")


def _add_quantization_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fp8-talker", action="store_true", help="FP8 weights in the talker's decoder layers")
    p.add_argument("--fp8-predictor", action="store_true", help="FP8 weights in the code predictor's decoder layers")
    p.add_argument("--kv-cache", choices=("int8", "int4"), default=None, help="store the talker's K/V quantized")


def _add_generation_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("text", nargs="?", help="the text to speak (or give --input-file)")
    _add_model_options(p)
    _add_quantization_options(p)
    p.add_argument("--language", default="auto", help="language of the text (`qtts voices` lists them)")
    p.add_argument("--out",
                   help="output audio file: .wav .flac .mp3 .opus .ogg .aac .pcm .raw (default: out.wav)")
    p.add_argument("--seed", type=seed, default=None, help="sampling seed: the same seed gives the same audio")
    p.add_argument("--greedy", action="store_true", help="no sampling: always take the most likely code")
    p.add_argument("--temperature", type=float)
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--repetition-penalty", type=float)
    p.add_argument("--subtalker-temperature", type=float)
    p.add_argument("--subtalker-top-k", type=int)
    p.add_argument("--subtalker-top-p", type=float)
    p.add_argument("--max-frames", type=positive_int, help="cap on generated frames (12.5 per second; default: "
                   "5 s plus 0.4 s per character); each part of a long text gets this cap")
    p.add_argument("--max-len", type=positive_int, default=4096,
                   help="positions one request may use, prompt plus generated frames (default: 4096); a longer "
                        "text is spoken in parts that fit, cut at sentence ends, with a 0.25 s pause between")
    p.add_argument("--text-mode", choices=("streaming", "non-streaming"), default=None,
                   help="how text is fed to the model (default: the mode's upstream default)")
    p.add_argument("--stream", action="store_true",
                   help="decode while generating and grow --out on disk chunk by chunk (a player can open it "
                        "early; a wav's header gets its final sizes at the end)")
    p.add_argument("--text-stdin", action="store_true",
                   help="read the text from standard input as it arrives (e.g. an LLM's output piped in): speech "
                        "starts with the first words, in streaming text mode; with --stream the file grows meanwhile")
    batch = p.add_argument_group("batch", "many texts in one run, resumable: outputs that exist are skipped")
    batch.add_argument("--input-file", help="one text per line, or JSON lines with text and optionally speaker, "
                       "instruct, language, seed and out (a file name in --out-dir)")
    batch.add_argument("--out-dir", help="folder for the batch's files (default names: line number, e.g. 00007.wav)")
    batch.add_argument("--format", default="wav", choices=("wav", "flac", "mp3", "opus", "aac", "pcm"),
                       help="format of the default file names (default: wav)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `qtts` command."""
    parser = argparse.ArgumentParser(prog="qtts", description="Qwen3-TTS 12Hz inference")
    parser.add_argument("--version", action="version", version=f"qtts {_package_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    speak = sub.add_parser("speak", help="CustomVoice model: speak with a built-in speaker")
    _add_generation_options(speak)
    speak.add_argument("--speaker", help="a built-in speaker (`qtts voices` lists them)")
    speak.add_argument("--instruct", default=None, help="style instruction (1.7B CustomVoice)")
    design = sub.add_parser("design", help="VoiceDesign model: speak in a voice made from a description")
    _add_generation_options(design)
    design.add_argument("--instruct", help="description of the voice")
    clone = sub.add_parser("clone", help="Base model: speak in the voice of a reference recording")
    _add_generation_options(clone)
    clone.add_argument("--ref", help="reference audio file")
    clone.add_argument("--ref-text", default=None, help="transcript of the reference (enables ICL cloning)")
    clone.add_argument("--voice", help="a voice file saved with --save-voice (instead of --ref)")
    clone.add_argument("--save-voice", help="save the computed voice prompt to this file")
    voices = sub.add_parser("voices", help="list the model's speakers and languages")
    _add_model_options(voices)
    fixture = sub.add_parser(
        "fixture", help="write a random-weight checkpoint in the official layout",
        description="Write a random-weight checkpoint in the official hub layout, for tests and benchmarks. "
                    "It speaks noise. `qtts speak` needs --type custom_voice (the default), `qtts design` "
                    "--type voice_design, `qtts clone` --type base.")
    fixture.add_argument("--type", default="custom_voice", choices=("base", "custom_voice", "voice_design"),
                         help="model type: custom_voice for `speak`, voice_design for `design`, base for `clone` "
                              "(default: custom_voice)")
    fixture.add_argument("--size", default="tiny", choices=("tiny", "tiny-0.6b", "0.6b", "1.7b"),
                         help="tiny (1.7B-shaped, a few MB) and tiny-0.6b (0.6B-shaped) for tests; 0.6b and 1.7b "
                              "have the real shapes (1.7B is ~4 GB) (default: tiny)")
    fixture.add_argument("--seed", type=seed, default=0, help="seed of the random weights: the same seed writes "
                         "the same bytes (default: 0)")
    fixture.add_argument("--out", required=True, help="folder to write the checkpoint into")
    bench = sub.add_parser("bench", help="time one stream: ms per frame, RTF, first (audible) audio latency")
    _add_model_options(bench)
    _add_quantization_options(bench)
    bench.add_argument("--frames", type=positive_int, default=250, help="frames of the throughput run")
    bench.add_argument("--requests", type=positive_int, default=20, help="requests per first-audio measurement")
    add_serve_parser(sub)
    add_eval_parser(sub)
    return parser
