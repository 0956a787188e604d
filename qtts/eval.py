"""`qtts eval`: how well a checkpoint, with or without a quantization option, speaks a list of texts.

The report (JSON) holds word and character error rates (through an ASR backend), speaker similarity to
a reference recording (through the model's own speaker encoder on Base checkpoints, or a given one),
runaways (requests that reach their frame cap instead of EOS) and the real-time factor (audio seconds
per wall second, one request at a time). Run it once per option and once without, with the same
texts and seed, and compare (docs/quantization.md).

Plug-ins are "module:function" names: an ASR function (samples, sample_rate, language) -> transcript,
and a speaker encoder function (samples, sample_rate) -> embedding vector. `--asr whisper[:SIZE]`
uses faster-whisper when it is installed.
"""
from __future__ import annotations

import argparse
import importlib
import json
import time
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

Transcriber = Callable[[np.ndarray, int, str], str]
SpeakerEmbedder = Callable[[np.ndarray, int], np.ndarray]
WHISPER_LANGUAGES = {"english": "en", "chinese": "zh", "german": "de", "italian": "it", "portuguese": "pt",
                     "spanish": "es", "japanese": "ja", "korean": "ko", "french": "fr", "russian": "ru"}


@dataclass
class EvalText:
    """One line of the texts file; speaker / instruct override the command's for this text."""

    text: str
    language: str = "auto"
    speaker: str | None = None
    instruct: str | None = None


def read_texts(path: str | Path) -> list[EvalText]:
    """A .jsonl file of {"text", "language"?, "speaker"?, "instruct"?} objects, or any other file with one text
    per line (blank lines skipped)."""
    lines = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    if str(path).endswith(".jsonl"):
        return [EvalText(**json.loads(line)) for line in lines]
    return [EvalText(line) for line in lines]


def normalize(text: str) -> str:
    """Lower case, NFKC, punctuation and symbols removed, whitespace collapsed: what error rates compare."""
    text = unicodedata.normalize("NFKC", text).lower()
    kept = "".join(" " if unicodedata.category(c)[0] in "PSZ" else c for c in text)
    return " ".join(kept.split())


def edit_distance(reference: Sequence, hypothesis: Sequence) -> int:
    """Levenshtein distance (substitutions, deletions, insertions) between two sequences."""
    previous = list(range(len(hypothesis) + 1))
    for i, ref_item in enumerate(reference, 1):
        current = [i]
        for j, hyp_item in enumerate(hypothesis, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ref_item != hyp_item)))
        previous = current
    return previous[-1]


def error_counts(reference: str, hypothesis: str) -> dict:
    """Word and character edits against the reference's word and character (spaces excluded) counts."""
    ref, hyp = normalize(reference), normalize(hypothesis)
    return {"word_edits": edit_distance(ref.split(), hyp.split()), "words": len(ref.split()),
            "char_edits": edit_distance(ref.replace(" ", ""), hyp.replace(" ", "")), "chars": len(ref.replace(" ", ""))}


def load_plugin(spec: str) -> Callable:
    """The function a "module:function" name points to."""
    module, _, name = spec.partition(":")
    if not name:
        raise ValueError(f"plug-in {spec!r}: expected module:function")
    return getattr(importlib.import_module(module), name)


def whisper_transcriber(size: str = "large-v3") -> Transcriber:
    """An ASR function on faster-whisper (pip install "qtts[eval]"; it downloads the model on first use)."""
    from faster_whisper import WhisperModel

    from .audio import resample

    model = WhisperModel(size, device="auto", compute_type="default")

    def transcribe(samples: np.ndarray, sample_rate: int, language: str) -> str:
        segments, _ = model.transcribe(resample(samples, sample_rate, 16000), language=WHISPER_LANGUAGES.get(language))
        return " ".join(segment.text.strip() for segment in segments)

    return transcribe


def transcriber(spec: str) -> Transcriber:
    """`whisper[:SIZE]` or a "module:function" ASR plug-in."""
    name, _, size = spec.partition(":")
    if name == "whisper":
        return whisper_transcriber(size or "large-v3")
    return load_plugin(spec)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))


def own_speaker_embedder(tts) -> SpeakerEmbedder:
    """The checkpoint's speaker encoder (Base models) as a speaker-embedding function."""
    import torch

    from .audio import to_24k

    def embed(samples: np.ndarray, sample_rate: int) -> np.ndarray:
        wav = torch.from_numpy(to_24k(samples, sample_rate)).unsqueeze(0)
        return tts.speaker_encoder.embed(wav.to(tts.device))[0].float().cpu().numpy()

    return embed


def evaluate(tts, texts: list[EvalText], transcribe: Transcriber | None = None,
             embed_speaker: SpeakerEmbedder | None = None, reference: tuple[np.ndarray, int] | None = None,
             reference_text: str | None = None, speaker: str | None = None, instruct: str | None = None,
             seed: int = 0, max_frames: int | None = None, warmup: int = 1) -> dict:
    """Generate each text once (seed + its index) and report error rates, speaker similarity, runaways and RTF.

    reference: (samples, sample_rate) of the voice to clone on a Base model (with reference_text for ICL
    cloning), and what speaker similarity is measured against. speaker / instruct: the CustomVoice speaker
    (default: the first) / the VoiceDesign description, where a text gives none. max_frames: the frame cap
    (default: the API's, from the text length); a request that reaches it is a runaway. warmup: untimed
    requests first (graph capture).
    """
    voice = None
    if tts.model_type == "base":
        if reference is None:
            raise ValueError("a Base model clones a voice: give a reference recording (--ref)")
        voice = tts.create_voice(reference[0], reference_text=reference_text, sample_rate=reference[1])
    reference_embedding = None
    if reference is not None and embed_speaker is not None:
        reference_embedding = embed_speaker(*reference)

    def request(item: EvalText, index: int):
        mode = {"voice": voice} if voice is not None else {}
        if tts.model_type == "custom_voice":
            mode = {"speaker": item.speaker or speaker or tts.speakers[0], "instruct": item.instruct or instruct}
        elif tts.model_type == "voice_design":
            mode = {"instruct": item.instruct or instruct}
        return tts.request(item.text, language=item.language, seed=seed + index, max_frames=max_frames, **mode)

    for item in texts[:warmup]:
        tts.generate(request(item, 0))
    rows = []
    for index, item in enumerate(texts):
        started = time.perf_counter()
        speech = tts.generate(request(item, index))
        row = {"text": item.text, "finish_reason": speech.finish_reason, "frames": int(speech.codes.shape[0]),
               "audio_seconds": speech.duration_s, "wall_seconds": time.perf_counter() - started}
        if transcribe is not None:
            row["transcript"] = transcribe(speech.samples, speech.sample_rate, item.language)
            row.update(error_counts(item.text, row["transcript"]))
        if reference_embedding is not None and speech.samples.size:
            row["speaker_similarity"] = _cosine(embed_speaker(speech.samples, speech.sample_rate), reference_embedding)
        rows.append(row)
    return summarize(rows)


def summarize(rows: list[dict]) -> dict:
    """Corpus-level figures of evaluate's per-text rows (error rates: total edits over total reference length)."""
    audio, wall = sum(r["audio_seconds"] for r in rows), sum(r["wall_seconds"] for r in rows)
    runaways = sum(r["finish_reason"] == "length" for r in rows)
    report = {"requests": len(rows), "runaways": runaways, "runaway_rate": runaways / max(1, len(rows)),
              "audio_seconds": audio, "wall_seconds": wall, "rtf": audio / max(wall, 1e-9),
              "wer": None, "cer": None, "speaker_similarity": None}
    if rows and "word_edits" in rows[0]:
        report["wer"] = sum(r["word_edits"] for r in rows) / max(1, sum(r["words"] for r in rows))
        report["cer"] = sum(r["char_edits"] for r in rows) / max(1, sum(r["chars"] for r in rows))
    similarities = [r["speaker_similarity"] for r in rows if "speaker_similarity" in r]
    if similarities:
        report["speaker_similarity"] = float(np.mean(similarities))
    return {**report, "items": rows}


def add_eval_parser(sub) -> None:
    p = sub.add_parser("eval", help="WER/CER, speaker similarity, runaways and RTF of a model (and its options)")
    p.add_argument("texts", help="texts to speak: one per line, or .jsonl objects with text/language/speaker/instruct")
    p.add_argument("--model", required=True, help="checkpoint folder or hub id")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None)
    p.add_argument("--out", default=None, help="write the JSON report here (default: stdout)")
    p.add_argument("--asr", default=None, help="whisper[:SIZE] (faster-whisper) or module:function")
    p.add_argument("--speaker-encoder", default=None,
                   help="module:function giving speaker embeddings (default: the model's own, on Base models)")
    p.add_argument("--ref", default=None, help="reference recording: the voice to clone (Base) and to compare with")
    p.add_argument("--ref-text", default=None, help="its transcript (ICL cloning on Base models)")
    p.add_argument("--speaker", default=None, help="CustomVoice speaker (default: the first)")
    p.add_argument("--instruct", default=None, help="VoiceDesign description / CustomVoice style")
    p.add_argument("--seed", type=int, default=0, help="the first text's seed; each next text adds one")
    p.add_argument("--max-frames", type=int, default=None, help="frame cap (default: from each text's length)")
    p.add_argument("--fp8-talker", action="store_true", help="FP8 weights in the talker's decoder layers")
    p.add_argument("--fp8-predictor", action="store_true", help="FP8 weights in the code predictor's decoder layers")
    p.add_argument("--kv-cache", choices=("int8", "int4"), default=None, help="quantized talker KV cache")


def run_eval(args: argparse.Namespace) -> None:
    from . import audio as audio_io
    from .api import TTS

    options = {name: value for name, value in (("fp8_talker", args.fp8_talker), ("fp8_predictor", args.fp8_predictor),
                                               ("kv_cache", args.kv_cache)) if value}
    tts = TTS.from_pretrained(args.model, device=args.device, dtype=args.dtype, **options)
    reference = audio_io.load_reference(args.ref) if args.ref else None
    embed = load_plugin(args.speaker_encoder) if args.speaker_encoder else None
    if embed is None and tts.model_type == "base":
        embed = own_speaker_embedder(tts)
    report = evaluate(tts, read_texts(args.texts), transcribe=transcriber(args.asr) if args.asr else None,
                      embed_speaker=embed, reference=reference, reference_text=args.ref_text,
                      speaker=args.speaker, instruct=args.instruct, seed=args.seed, max_frames=args.max_frames)
    report = {"model": args.model, "options": options, "device": str(tts.device),
              "dtype": str(tts.dtype).replace("torch.", ""), "asr": args.asr, **report}
    text = json.dumps(report, indent=1, ensure_ascii=False)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    else:
        print(text)
