"""From a request to what a row needs: the checked request, its prompt, seed and frame cap."""
from __future__ import annotations

import secrets
from dataclasses import dataclass, replace

from ..errors import InvalidRequestError
from .model import ModelBundle
from .prefix_cache import prefix_key
from .prompt import Prompt, build_prompt, resolve_mode
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


def plan_request(model: ModelBundle, request: SpeechRequest, max_len: int) -> RowPlan:
    """Build a checked request's prompt (on the current CUDA stream) and fix its seed and frame cap.

    The cap is the request's max_frames (default: default_frame_cap), lowered to what fits max_len;
    text rows past it are never read, so they are dropped.
    """
    prompt = build_prompt(model.talker, model.config, model.tokenizer, request)
    room = prompt_room(prompt.prefill.shape[0], max_len)
    cap = min(request.max_frames if request.max_frames is not None else default_frame_cap(request.text), room)
    if model.prefix_cache is not None and prompt.shared_length:
        prompt.shared_key = prefix_key(prompt.prefill[: prompt.shared_length])
    prompt = replace(prompt, trailing=prompt.trailing[:cap])
    seed = request.sampling.seed if request.sampling.seed is not None else secrets.randbits(62)
    return RowPlan(prompt=prompt, sampling=request.sampling, seed=seed, max_frames=cap,
                   min_frames=request.min_frames)
