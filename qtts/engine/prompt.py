"""Prompt building: a request becomes prefill rows and the text rows fed while decoding.

Mirrors upstream `Qwen3TTSForConditionalGeneration.generate` row for row (and call for call
through the text projection, so bf16 rounding matches), see the architecture notes §3.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, replace

import torch

from ..config import ModelConfig
from ..errors import (InvalidRequestError, UnknownLanguageError, UnknownSpeakerError,
                      WrongModelTypeError)
from ..models.talker import Talker
from ..text import TextTokenizer, assistant_template, instruct_template, reference_template
from .prefix_cache import prefix_key
from .request import SpeechRequest


@dataclass
class Prompt:
    """prefill: (L, H) rows; trailing: (n, H) text rows added at decode steps 0..n-1; pad_row: (H,) after.

    shared_length: how many leading prefill rows depend only on the voice (speaker or clone voice,
    language, instruct), not on the text; always < L, so a prefill runs at least one row.
    shared_key: prefix_key of those rows once computed (reading them back waits for the device).
    pad_row (and a non-streaming prompt's trailing row) may be shared with the voice's other prompts: read only.
    """

    prefill: torch.Tensor
    trailing: torch.Tensor
    pad_row: torch.Tensor
    shared_length: int = 0
    shared_key: bytes | None = None


def resolve_mode(cfg: ModelConfig, request: SpeechRequest) -> SpeechRequest:
    """Check the request against the model type and fill mode defaults."""
    model_type = cfg.model_type
    if model_type == "base":
        if request.voice is None:
            raise WrongModelTypeError("a Base model clones a voice: pass a reference audio (voice prompt)")
        if request.speaker:
            raise WrongModelTypeError("a Base model has no built-in speakers; use a CustomVoice model or clone")
        if request.instruct:
            raise WrongModelTypeError("a Base model ignores instructions; use a VoiceDesign or 1.7B CustomVoice model")
    elif model_type == "custom_voice":
        if request.voice is not None:
            raise WrongModelTypeError("voice cloning needs a Base model; this is a CustomVoice model")
        if not request.speaker:
            raise UnknownSpeakerError(f"choose a speaker: {', '.join(cfg.speakers)}")
        if request.instruct and cfg.model_size == "0b6":
            raise WrongModelTypeError("the 0.6B CustomVoice model ignores instructions; use the 1.7B model")
    elif model_type == "voice_design":
        if request.voice is not None or request.speaker:
            raise WrongModelTypeError("a VoiceDesign model takes a voice description (instruct), not a speaker")
        if not request.instruct or not request.instruct.strip():
            raise InvalidRequestError("a VoiceDesign model needs instruct: a description of the voice")
    if request.speaker and request.speaker.lower() not in cfg.talker.speaker_ids:
        raise UnknownSpeakerError(f"unknown speaker {request.speaker!r}; choose one of: {', '.join(cfg.speakers)}")
    language = (request.language or "auto").lower()
    if language not in cfg.languages:
        raise UnknownLanguageError(f"unknown language {request.language!r}; choose one of: {', '.join(cfg.languages)}")
    non_streaming = request.non_streaming_mode
    if request.text_open:
        if non_streaming:
            raise InvalidRequestError("text that is still being written is spoken in streaming text mode "
                                      "(non_streaming_mode=False)")
        non_streaming = False
    if non_streaming is None:
        non_streaming = model_type != "base"
    speaker = request.speaker.lower() if request.speaker else None
    return replace(request, language=language, non_streaming_mode=non_streaming, speaker=speaker, resolved=True)


def codec_prefix_ids(cfg: ModelConfig, language: str, speaker: str | None) -> list[int]:
    """The think/language tags that open the codec stream (§3.2)."""
    talker = cfg.talker
    language_id = None if language == "auto" else talker.language_ids[language]
    dialect = talker.speaker_dialects.get(speaker, False) if speaker else False
    if language in ("chinese", "auto") and dialect:
        language_id = talker.language_ids[dialect]
    if language_id is None:
        return [talker.codec_nothink_id, talker.codec_think_bos_id, talker.codec_think_eos_id]
    return [talker.codec_think_id, talker.codec_think_bos_id, language_id, talker.codec_think_eos_id]


ASSISTANT_CLOSING_TOKENS = 5  # <|im_end|>, "\n", <|im_start|>, assistant, "\n" after the text


@dataclass(frozen=True, eq=False)
class VoiceRows:
    """The rows of a prompt that do not depend on its text, each (1, n, H): what a PromptMemo keeps.

    shared: the prompt's leading rows (instruct, role, codec tags and speaker); bos/eos/pad_row: the tts_bos,
    tts_eos and tts_pad text rows; codec_pad / codec_bos: the codec rows laid under the text. key: prefix_key of
    shared[0] when computed, so a prompt's shared_key is hashed once per voice instead of once per request.
    """

    shared: torch.Tensor
    bos_row: torch.Tensor
    eos_row: torch.Tensor
    pad_row: torch.Tensor
    codec_pad: torch.Tensor
    codec_bos: torch.Tensor
    key: bytes | None = None


DEFAULT_PROMPT_MEMO_SIZE = 256


class PromptMemo:
    """One model's VoiceRows of recent voices, in LRU order and at most `size` of them; thread-safe.

    Making a voice's rows takes ~30 small launches and host-to-device copies; a hit, a host-side lookup.
    keyed: compute each entry's prefix key (for a model with a prefix cache).
    """

    def __init__(self, size: int = DEFAULT_PROMPT_MEMO_SIZE, keyed: bool = True):
        self.size = size
        self.keyed = keyed
        self._entries: OrderedDict[tuple, tuple[VoiceRows, object, object]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def lookup(self, key: tuple) -> VoiceRows | None:
        """The rows stored under key (None if absent), safe to read on the current CUDA stream.

        Read on another stream than the one that made them, that stream first waits for them, and their
        memory is not reused before its reads are done.
        """
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._entries.move_to_end(key)
        rows, stream, ready = entry
        if ready is not None:
            current = torch.cuda.current_stream(rows.shared.device)
            if current != stream:
                current.wait_event(ready)
                for tensor in (rows.shared, rows.pad_row, rows.codec_pad):  # the other rows are views of these
                    tensor.record_stream(current)
        return rows

    def store(self, key: tuple, rows: VoiceRows) -> None:
        """Keep rows (queued on the current stream) under key, dropping the least recently used beyond size."""
        stream = ready = None
        if rows.shared.is_cuda:
            stream = torch.cuda.current_stream(rows.shared.device)
            ready = torch.cuda.Event()
            ready.record(stream)
        with self._lock:
            self._entries[key] = (rows, stream, ready)
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)


def memo_key(request: SpeechRequest, role_ids: list[int]) -> tuple:
    """What a resolved request's VoiceRows depend on, on the host (a clone voice by its embedding's digest)."""
    voice = request.voice
    digest = None if voice is None else prefix_key(voice.speaker_embedding)
    return request.instruct, request.language, request.speaker, digest, tuple(role_ids)


def _ids(device: torch.device, values: list[int]) -> torch.Tensor:
    return torch.tensor([values], dtype=torch.long, device=device)


@torch.no_grad()
def build_prompt(talker: Talker, cfg: ModelConfig, tokenizer: TextTokenizer, request: SpeechRequest,
                 settled_ids: list[int] | None = None, memo: PromptMemo | None = None) -> Prompt:
    """Prefill rows and trailing text rows for one resolved request (see resolve_mode).

    settled_ids: for text still being written (streaming text mode), the ids of the assistant template up
    to the text so far (text_stream.AssistantTextStream.ids, at least the role ids and one text id); the
    trailing rows then hold the text ids settled so far, and no end-of-text row yet.
    memo: the model's PromptMemo, to reuse the text-independent rows of an earlier prompt of the same voice
    (the same bits); a clone voice with a reference transcript is not memoized (its shared rows hold it).
    """
    device = talker.codec_head.weight.device
    tcfg = cfg.talker

    if settled_ids is not None:
        host_ids = settled_ids + [0] * ASSISTANT_CLOSING_TOKENS  # the closing ids are never read
    else:
        host_ids = tokenizer.encode(assistant_template(request.text))
    if len(host_ids) < 9:
        raise InvalidRequestError("text produced no tokens to speak")
    input_ids = _ids(device, host_ids)
    voice = request.voice
    icl = voice is not None and voice.icl
    if memo is None or icl:
        rows = _voice_rows(talker, cfg, tokenizer, request, input_ids[:, :3])
    else:
        key = memo_key(request, host_ids[:3])
        rows = memo.lookup(key)
        if rows is None:
            rows = _voice_rows(talker, cfg, tokenizer, request, input_ids[:, :3])
            if memo.keyed:
                rows = replace(rows, key=prefix_key(rows.shared[0]))
            memo.store(key, rows)
    pad_row, eos_row = rows.pad_row, rows.eos_row
    parts = [rows.shared]
    shared = rows.shared.shape[1]

    text_ids = input_ids[:, 3:-5]
    if icl:
        ref_ids = tokenizer.encode_tensor(reference_template(voice.reference_text)).to(device)[:, 3:-2]
        icl_rows, trailing = _icl_rows(talker, tcfg, text_ids, ref_ids, voice.reference_codes.to(device),
                                       pad_row, eos_row, request.non_streaming_mode)
        parts.append(icl_rows)
        # the reference transcript's rows come first; in streaming mode only those laid on reference frames
        codec_len = voice.reference_codes.shape[0] + 1
        shared += ref_ids.shape[1] if request.non_streaming_mode else min(ref_ids.shape[1], codec_len)
    elif request.non_streaming_mode:
        text_rows = torch.cat((talker.embed_text(text_ids), eos_row), dim=1)
        parts.append(text_rows + rows.codec_pad)
        parts.append(pad_row + rows.codec_bos)
        trailing = pad_row
    else:
        parts.append(talker.embed_text(input_ids[:, 3:4]) + rows.codec_bos)
        trailing = talker.embed_text(input_ids[:, 4:-5])
        if settled_ids is None:
            trailing = torch.cat((trailing, eos_row), dim=1)
    prefill = torch.cat(parts, dim=1)[0]
    shared_length = min(shared, prefill.shape[0] - 1)
    return Prompt(prefill=prefill, trailing=trailing[0], pad_row=pad_row[0, 0], shared_length=shared_length,
                  shared_key=rows.key if shared_length == rows.shared.shape[1] else None)


def _voice_rows(talker: Talker, cfg: ModelConfig, tokenizer: TextTokenizer, request: SpeechRequest,
                role_ids: torch.Tensor) -> VoiceRows:
    """A resolved request's text-independent rows; role_ids: (1, 3) the assistant role's ids, on the device."""
    device = role_ids.device
    tcfg = cfg.talker

    special = talker.embed_text(_ids(device, [cfg.tokens.tts_bos, cfg.tokens.tts_eos, cfg.tokens.tts_pad]))
    bos_row, eos_row, pad_row = special.chunk(3, dim=1)

    speaker_row = None
    if request.voice is not None:
        speaker_row = request.voice.speaker_embedding.to(device=device, dtype=pad_row.dtype).view(1, 1, -1)
        if speaker_row.shape[-1] != tcfg.hidden_size:
            raise InvalidRequestError(
                f"voice embedding has width {speaker_row.shape[-1]}, this model needs {tcfg.hidden_size}: "
                "the voice was made with another model size")
    elif request.speaker:
        speaker_row = talker.embed_codec(torch.tensor(tcfg.speaker_ids[request.speaker], device=device)).view(1, 1, -1)

    prefix = talker.embed_codec(_ids(device, codec_prefix_ids(cfg, request.language, request.speaker)))
    pad_bos = talker.embed_codec(_ids(device, [tcfg.codec_pad_id, tcfg.codec_bos_id]))
    codec_rows = torch.cat([prefix] + ([speaker_row] if speaker_row is not None else []) + [pad_bos], dim=1)

    parts = []
    if request.instruct:
        parts.append(talker.embed_text(tokenizer.encode_tensor(instruct_template(request.instruct)).to(device)))
    role = talker.embed_text(role_ids)
    text_side = torch.cat((pad_row.expand(-1, codec_rows.shape[1] - 2, -1), bos_row), dim=1)
    parts += [role, text_side + codec_rows[:, :-1]]
    return VoiceRows(shared=torch.cat(parts, dim=1), bos_row=bos_row, eos_row=eos_row, pad_row=pad_row,
                     codec_pad=pad_bos[:, :1], codec_bos=pad_bos[:, 1:])


def _icl_rows(talker: Talker, tcfg, text_ids, ref_ids, ref_codes, pad_row, eos_row, non_streaming):
    """Reference transcript + target text against the reference audio's frames (§3.3 c)."""
    device = text_ids.device
    text_rows = torch.cat((talker.embed_text(torch.cat([ref_ids, text_ids], dim=-1)), eos_row), dim=1)
    bos = talker.embed_codec(torch.tensor([[tcfg.codec_bos_id]], device=device))
    codec_rows = torch.cat([bos, talker.embed_frames(ref_codes).unsqueeze(0)], dim=1)
    text_len, codec_len = text_rows.shape[1], codec_rows.shape[1]
    if non_streaming:
        pads = talker.embed_codec(torch.tensor([[tcfg.codec_pad_id] * text_len], device=device))
        return torch.cat([text_rows + pads, codec_rows + pad_row], dim=1), pad_row
    if text_len > codec_len:
        return text_rows[:, :codec_len] + codec_rows, text_rows[:, codec_len:]
    padded = torch.cat([text_rows] + [pad_row] * (codec_len - text_len), dim=1)
    return padded + codec_rows, pad_row
