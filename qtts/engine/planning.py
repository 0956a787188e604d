"""From a request to what a row needs: the checked request, its prompt, seed and frame cap."""
from __future__ import annotations

import secrets
from dataclasses import dataclass, replace

import torch

from ..errors import InvalidRequestError
from .model import ModelBundle
from .prefix_cache import prefix_key
from .prompt import Prompt, build_prompt, resolve_mode
from ..voices import VoicePrompt
from .request import SamplingParams, SpeechRequest

FRAMES_PER_SECOND = 12.5


def default_frame_cap(text: str) -> int:
    """A generous cap from the text length: ~0.4 s per character plus 5 s, at most 8191 frames.

    About 0.3-0.5% of generations never emit EOS; the cap stops them babbling for minutes.
    """
    return min(8191, int(FRAMES_PER_SECOND * (5 + 0.4 * len(text))))


@dataclass
class RowPlan:
    """A request ready to prefill: its prompt, sampling, seed and the frames it may generate."""

    prompt: Prompt
    sampling: SamplingParams
    seed: int
    max_frames: int
    min_frames: int = 2
    text_open: bool = False  # built from text still being written: more text rows follow


def check_request(model: ModelBundle, request: SpeechRequest) -> SpeechRequest:
    """The request validated and its mode resolved against the model (once: a checked request passes as is)."""
    if request.resolved:
        return request
    return resolve_mode(model.config, request.validated())


def prompt_room(prompt_length: int, max_len: int) -> int:
    """Frames a row of max_len positions has after a prompt of prompt_length (the last two are spare)."""
    room = max_len - prompt_length - 2
    if room < 1:
        raise InvalidRequestError(f"the prompt ({prompt_length} positions) does not fit max_len={max_len}; "
                                  "shorten the text (or split it into parts) or load with a larger max_len")
    return room


def plan_request(model: ModelBundle, request: SpeechRequest, max_len: int,
                 text_so_far: tuple[list[int], bool, str] | None = None) -> RowPlan:
    """Build a checked request's prompt (on the current CUDA stream) and fix its seed and frame cap.

    The cap is the request's max_frames (default: default_frame_cap), lowered to what fits max_len;
    text rows past it are never read, so they are dropped. text_so_far: for a request whose text is
    still being written (Stream.text_so_far: the settled ids, whether it ended, the text); once it has
    ended, the plan is the one of the whole text.
    """
    text_ids = None
    if text_so_far is not None:
        ids, ended, text = text_so_far
        request = replace(request, text=text, text_open=not ended)
        if ended and not text.strip():
            raise InvalidRequestError("text is empty: give the words to speak")
        text_ids = None if ended else ids
    prompt = build_prompt(model.talker, model.config, model.tokenizer, request, text_ids)
    room = prompt_room(prompt.prefill.shape[0], max_len)
    # text still coming: no cap from its length yet (the engine sets it when the text ends)
    length_cap = room if request.text_open else default_frame_cap(request.text)
    cap = min(request.max_frames if request.max_frames is not None else length_cap, room)
    if model.prefix_cache is not None and prompt.shared_length:
        prompt.shared_key = prefix_key(prompt.prefill[: prompt.shared_length])
    prompt = replace(prompt, trailing=prompt.trailing[:cap])
    seed = request.sampling.seed if request.sampling.seed is not None else secrets.randbits(62)
    return RowPlan(prompt=prompt, sampling=request.sampling, seed=seed, max_frames=cap,
                   min_frames=request.min_frames, text_open=request.text_open)


def warm_requests(model: ModelBundle) -> list[SpeechRequest]:
    """Short requests covering what this model takes (each voice kind and prompt mode, every sampling variant,
    a one-word and a longer text) and one with its text still coming; invalid combinations left out."""
    config = model.config
    if config.model_type == "custom_voice":
        speaker = config.speakers[0] if config.speakers else None
        voices = [dict(speaker=speaker), dict(speaker=speaker, instruct="Say it calmly.")]
    elif config.model_type == "voice_design":
        voices = [dict(instruct="A calm, clear voice.")]
    else:
        embedding = torch.zeros(config.speaker_encoder.enc_dim)
        codes = torch.zeros(20, config.talker.num_code_groups, dtype=torch.long)
        voices = [dict(voice=VoicePrompt(embedding)),
                  dict(voice=VoicePrompt(embedding, reference_codes=codes, reference_text="Hello there."))]
    variants = [SamplingParams.greedy(), model.sampling(seed=0),
                model.sampling(seed=0, top_p=0.9, subtalker_top_p=0.9)]
    candidates = [SpeechRequest(text=text, sampling=sampling, max_frames=3, min_frames=3, non_streaming_mode=mode,
                                **voice)
                  for voice in voices for sampling in variants
                  for text, mode in (("Hi.", None), ("Hello there, how are you today?", not voices.index(voice)))]
    candidates.append(SpeechRequest(text="Hello", sampling=variants[1], max_frames=4, min_frames=3, text_open=True,
                                    **voices[0]))
    requests = []
    for request in candidates:
        try:
            requests.append(check_request(model, request))
        except InvalidRequestError:
            continue
    return requests
