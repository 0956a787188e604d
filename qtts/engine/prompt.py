"""Prompt building: a request becomes prefill rows and the text rows fed while decoding.

Mirrors upstream `Qwen3TTSForConditionalGeneration.generate` row for row (and call for call
through the text projection, so bf16 rounding matches), see the architecture notes §3.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..config import ModelConfig
from ..errors import (InvalidRequestError, UnknownLanguageError, UnknownSpeakerError,
                      WrongModelTypeError)
from ..models.talker import Talker
from ..text import TextTokenizer, assistant_template, instruct_template, reference_template
from .request import SpeechRequest


@dataclass
class Prompt:
    """prefill: (L, H) rows; trailing: (n, H) text rows added at decode steps 0..n-1; pad_row: (H,) after.

    shared_length: how many leading prefill rows depend only on the voice (speaker or clone voice,
    language, instruct), not on the text; always < L, so a prefill runs at least one row.
    shared_key: prefix_key of those rows once computed (reading them back waits for the device).
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


@torch.no_grad()
def build_prompt(talker: Talker, cfg: ModelConfig, tokenizer: TextTokenizer, request: SpeechRequest,
                 settled_ids: list[int] | None = None) -> Prompt:
    """Prefill rows and trailing text rows for one resolved request (see resolve_mode).

    settled_ids: for text still being written (streaming text mode), the ids of the assistant template up
    to the text so far (text_stream.AssistantTextStream.ids, at least the role ids and one text id); the
    trailing rows then hold the text ids settled so far, and no end-of-text row yet.
    """
    device = talker.codec_head.weight.device
    tcfg = cfg.talker

    def ids(values) -> torch.Tensor:
        return torch.tensor([values], dtype=torch.long, device=device)

    if settled_ids is not None:
        input_ids = ids(settled_ids + [0] * ASSISTANT_CLOSING_TOKENS)  # the closing ids are never read
    else:
        input_ids = tokenizer.encode_tensor(assistant_template(request.text)).to(device)
    if input_ids.shape[1] < 9:
        raise InvalidRequestError("text produced no tokens to speak")
    special = talker.embed_text(ids([cfg.tokens.tts_bos, cfg.tokens.tts_eos, cfg.tokens.tts_pad]))
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

    prefix = talker.embed_codec(ids(codec_prefix_ids(cfg, request.language, request.speaker)))
    pad_bos = talker.embed_codec(ids([tcfg.codec_pad_id, tcfg.codec_bos_id]))
    codec_rows = torch.cat([prefix] + ([speaker_row] if speaker_row is not None else []) + [pad_bos], dim=1)

    parts = []
    if request.instruct:
        parts.append(talker.embed_text(tokenizer.encode_tensor(instruct_template(request.instruct)).to(device)))
    role = talker.embed_text(input_ids[:, :3])
    text_side = torch.cat((pad_row.expand(-1, codec_rows.shape[1] - 2, -1), bos_row), dim=1)
    parts += [role, text_side + codec_rows[:, :-1]]
    shared = sum(part.shape[1] for part in parts)

    text_ids = input_ids[:, 3:-5]
    voice = request.voice
    if voice is not None and voice.icl:
        ref_ids = tokenizer.encode_tensor(reference_template(voice.reference_text)).to(device)[:, 3:-2]
        rows, trailing = _icl_rows(talker, tcfg, text_ids, ref_ids, voice.reference_codes.to(device),
                                   pad_row, eos_row, request.non_streaming_mode)
        parts.append(rows)
        # the reference transcript's rows come first; in streaming mode only those laid on reference frames
        codec_len = voice.reference_codes.shape[0] + 1
        shared += ref_ids.shape[1] if request.non_streaming_mode else min(ref_ids.shape[1], codec_len)
    elif request.non_streaming_mode:
        text_rows = torch.cat((talker.embed_text(text_ids), eos_row), dim=1)
        parts.append(text_rows + talker.embed_codec(ids([tcfg.codec_pad_id] * text_rows.shape[1])))
        parts.append(pad_row + talker.embed_codec(ids([tcfg.codec_bos_id])))
        trailing = pad_row
    else:
        parts.append(talker.embed_text(input_ids[:, 3:4]) + codec_rows[:, -1:])
        trailing = talker.embed_text(input_ids[:, 4:-5])
        if settled_ids is None:
            trailing = torch.cat((trailing, eos_row), dim=1)
    prefill = torch.cat(parts, dim=1)[0]
    return Prompt(prefill=prefill, trailing=trailing[0], pad_row=pad_row[0, 0],
                  shared_length=min(shared, prefill.shape[0] - 1))


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
