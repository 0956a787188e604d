"""Long texts: cut into parts that each fit one request, to be spoken in order with a short pause between.

A text fits when its prompt plus the frames it may need fit max_len: its frame cap (default_frame_cap, or
max_frames when lower), so the cap is never lowered to what is left of max_len (in streaming text mode,
where text rows are read one per frame, default_frame_cap leaves room for every one). A text that fits
is one part, the request itself. A longer one is cut at sentence ends, a sentence too long at clause
marks, a clause at spaces, a word anywhere, each cut taking as much as fits. Every part is an ordinary
request with the same voice and options (so its voice rows' K/V come from the prefix cache, and an ICL
reference is the prompt of every part) and a seed derived from the request's: part 0 keeps it, so each
part gives what it gives alone.
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import replace

from ..config import SAMPLE_RATE, ModelConfig
from ..errors import InvalidRequestError
from ..text import TextTokenizer, assistant_template, instruct_template, reference_template
from .model import ModelBundle
from .planning import check_request, default_frame_cap
from .prompt import codec_prefix_ids
from .request import SpeechRequest

PAUSE_S = 0.25  # silence between two parts, about a sentence break
PAUSE_SAMPLES = round(PAUSE_S * SAMPLE_RATE)
SPARE_POSITIONS = 2  # prompt_room keeps the last two positions of a row spare

# Where a part may end, most natural first; each pattern matches the end of a piece, spaces included,
# and the pieces join back to the text. Closing quotes and brackets stay with what they close.
_SENTENCE_ENDS = re.compile(r"""[.!?…]+["'”’)\]]*\s+|[。！？]+["'”’」』)\]]*\s*|\n\s*""")
_CLAUSE_ENDS = re.compile(r"""[,;:]["'”’)\]]*\s+|\s[-–—]+\s+|[，；：、]\s*""")
_WORD_ENDS = re.compile(r"\s+")
_BOUNDARIES = (_SENTENCE_ENDS, _CLAUSE_ENDS, _WORD_ENDS)


def prompt_length(cfg: ModelConfig, tokenizer: TextTokenizer, request: SpeechRequest) -> int:
    """The prefill rows build_prompt makes for a resolved request, counted with the tokenizer alone (a
    planner loaded without its generator has no talker). Trailing text rows take no positions of their own."""
    text_ids = len(tokenizer.encode(assistant_template(request.text))) - 8  # 3 role ids, 5 closing ids
    codec_rows = len(codec_prefix_ids(cfg, request.language, request.speaker)) + 2
    codec_rows += int(request.voice is not None or bool(request.speaker))
    voice_rows = 3 + codec_rows - 1  # role ids, then the codec tags but the last against pad/bos text rows
    if request.instruct:
        voice_rows += len(tokenizer.encode(instruct_template(request.instruct)))
    voice = request.voice
    if voice is not None and voice.icl:
        codec_len = voice.reference_codes.shape[0] + 1
        if not request.non_streaming_mode:  # the text beyond the reference's frames trails
            return voice_rows + codec_len
        reference_ids = len(tokenizer.encode(reference_template(voice.reference_text))) - 5
        return voice_rows + reference_ids + text_ids + 1 + codec_len
    if request.non_streaming_mode:
        return voice_rows + text_ids + 2  # text rows, end of text, then the pad/bos row
    return voice_rows + 1  # the first text id with the last codec tag; the rest (and the end) trail


def part_seed(seed: int | None, index: int) -> int | None:
    """The seed of part `index` of a request seeded `seed`: part 0 keeps it, the others get a 63-bit hash of
    (seed, index); no seed stays no seed (each part then draws its own)."""
    if seed is None or index == 0:
        return seed
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def split_request(model: ModelBundle, request: SpeechRequest, max_len: int) -> list[SpeechRequest]:
    """The parts `request` is spoken in: [request] itself when its text fits max_len (or is still being
    written), else one request per part, in order (see the module docstring). Raises InvalidRequestError
    when not even one character fits after the voice's prompt."""
    request = check_request(model, request)
    if request.text_open:
        return [request]
    fits = _fit_test(model, request, max_len)
    if fits(request.text):
        return [request]
    try:
        texts = [text.strip() for text in _pack(request.text, fits, 0)]
    except _NoRoom as exc:
        character = exc.args[0]
        prefill = prompt_length(model.config, model.tokenizer, replace(request, text=character))
        raise InvalidRequestError(
            f"the text does not fit max_len={max_len} even cut into parts: with the voice's prompt (speaker, "
            f"instruction, reference) one character takes {prefill} positions, then up to "
            f"{_frames_needed(character, request)} frames; load the model with a larger max_len, or shorten the "
            "instruction or the reference") from None
    return [replace(request, text=text, sampling=replace(request.sampling, seed=part_seed(request.sampling.seed, i)))
            for i, text in enumerate(t for t in texts if t)]


def _fit_test(model: ModelBundle, request: SpeechRequest, max_len: int) -> Callable[[str], bool]:
    """Whether a text (stripped, as a part is) fits one request of max_len positions."""

    def fits(text: str) -> bool:
        text = text.strip()
        if not text:
            return True
        prefill = prompt_length(model.config, model.tokenizer, replace(request, text=text))
        return prefill + SPARE_POSITIONS + _frames_needed(text, request) <= max_len

    return fits


def _frames_needed(text: str, request: SpeechRequest) -> int:
    """The frame cap a text gets: default_frame_cap, or the request's max_frames when lower."""
    frames = default_frame_cap(text)
    return frames if request.max_frames is None else min(frames, request.max_frames)


class _NoRoom(Exception):
    """Not even this one character fits."""


def _pack(text: str, fits: Callable[[str], bool], level: int) -> list[str]:
    """`text` cut at boundaries of `level` (then finer ones inside a piece too long), into parts that fit;
    the parts join back to `text`."""
    pieces = _cut(text, _BOUNDARIES[level]) if level < len(_BOUNDARIES) else list(text)
    parts, start = [], 0
    while start < len(pieces):
        end = _longest_fit(pieces, start, fits)
        if end > start:
            parts.append("".join(pieces[start:end]))
            start = end
        elif level < len(_BOUNDARIES):
            parts += _pack(pieces[start], fits, level + 1)
            start += 1
        else:
            raise _NoRoom(pieces[start])
    return parts


def _cut(text: str, boundary: re.Pattern) -> list[str]:
    """`text` cut after every match of `boundary`."""
    pieces, start = [], 0
    for match in boundary.finditer(text):
        if match.end() > start:
            pieces.append(text[start:match.end()])
            start = match.end()
    if start < len(text):
        pieces.append(text[start:])
    return pieces


def _longest_fit(pieces: list[str], start: int, fits: Callable[[str], bool]) -> int:
    """The largest end such that pieces[start:end] fit together (start if not even one does): doubling
    steps, then bisection, so a part costs a few tokenizations of about its length."""
    good, step = start, 1
    while good < len(pieces):
        probe = min(good + step, len(pieces))
        if not fits("".join(pieces[start:probe])):
            break
        good, step = probe, step * 2
    else:
        return good
    bad = probe
    while bad - good > 1:
        middle = (good + bad) // 2
        if fits("".join(pieces[start:middle])):
            good = middle
        else:
            bad = middle
    return good
