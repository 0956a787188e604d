"""The per-frame decode step over tensors: KV cache and batch state in, next 16 codes out.

All state lives in preallocated device tensors that `frame_step` updates in place, so the
same function runs eagerly, inside one captured CUDA graph, and for any batch of rows.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import ModelConfig
from ..layers.attention import CacheView, KVCache
from ..layers.sampler import SamplingTensors, apply_repetition_penalty, sample
from ..models.talker import Talker
from .prefix_cache import PrefixCache, PrefixEntry, prefix_key
from .prompt import Prompt
from .request import SamplingParams

TALKER_STREAM = 0  # RNG stream of codebook 0; the predictor uses streams 1..15


@dataclass
class RowState:
    """Decode state of B rows, one request per row. Row b uses KV slot b."""

    past_hidden: torch.Tensor  # (B, H) talker hidden that produced the current c0
    c0: torch.Tensor  # (B,) codebook-0 of the current frame
    positions: torch.Tensor  # (B,) next talker position
    frame_index: torch.Tensor  # (B,) index of the current frame (= decode step)
    text_rows: torch.Tensor  # (B, max_text, H) trailing text rows, pad-filled
    text_len: torch.Tensor  # (B,)
    pad_row: torch.Tensor  # (H,)
    seen: torch.Tensor  # (B, V) bool, codebook-0 ids generated so far
    seeds: torch.Tensor  # (B,) int64
    repetition_penalty: torch.Tensor  # (B,) float32
    min_frames: torch.Tensor  # (B,) int64, EOS is masked before this many codebook-0 samples
    active: torch.Tensor  # (B,) bool; a row that is not (its next text has not arrived) keeps its state
    talker_sampling: SamplingTensors
    predictor_sampling: SamplingTensors

    @classmethod
    def allocate(cls, rows: int, hidden: int, vocab: int, max_text: int, device, dtype) -> "RowState":
        def params() -> SamplingTensors:
            return SamplingTensors(
                do_sample=torch.zeros(rows, dtype=torch.bool, device=device),
                temperature=torch.ones(rows, dtype=torch.float32, device=device),
                top_k=torch.zeros(rows, dtype=torch.int64, device=device),
                top_p=torch.ones(rows, dtype=torch.float32, device=device),
            )

        def longs() -> torch.Tensor:
            return torch.zeros(rows, dtype=torch.int64, device=device)

        return cls(
            past_hidden=torch.zeros(rows, hidden, device=device, dtype=dtype),
            c0=longs(), positions=longs(), frame_index=longs(),
            text_rows=torch.zeros(rows, max_text, hidden, device=device, dtype=dtype),
            text_len=longs(),
            pad_row=torch.zeros(hidden, device=device, dtype=dtype),
            seen=torch.zeros(rows, vocab, dtype=torch.bool, device=device),
            seeds=longs(),
            repetition_penalty=torch.ones(rows, dtype=torch.float32, device=device),
            min_frames=longs(),
            active=torch.ones(rows, dtype=torch.bool, device=device),
            talker_sampling=params(), predictor_sampling=params(),
        )

    def set_row(self, row: int, prompt: Prompt, sampling: SamplingParams, seed: int, min_frames: int = 2) -> None:
        """Load a request's parameters and text rows into `row` (before its prefill)."""
        text = prompt.trailing
        if text.shape[0] > self.text_rows.shape[1]:
            raise ValueError(f"prompt has {text.shape[0]} trailing text rows; the batch holds {self.text_rows.shape[1]}")
        self.text_rows[row] = prompt.pad_row
        self.text_rows[row, : text.shape[0]] = text
        self.pad_row.copy_(prompt.pad_row)
        # fill_, not `tensor[row] = number`: that copies the number from pageable host memory, which waits for
        # the frame step in flight
        values = [(self.seen, False), (self.text_len, text.shape[0]), (self.frame_index, 0), (self.seeds, seed),
                  (self.repetition_penalty, sampling.repetition_penalty), (self.min_frames, min_frames),
                  (self.active, True)]
        for params, prefix in ((self.talker_sampling, ""), (self.predictor_sampling, "subtalker_")):
            values += [(getattr(params, name), getattr(sampling, prefix + name))
                       for name in ("do_sample", "temperature", "top_k", "top_p")]
        for tensor, value in values:
            tensor[row].fill_(value)


@dataclass
class PrefillItem:
    """One request to prefill: its prompt, sampling parameters, seed and minimum frame count."""

    prompt: Prompt
    sampling: SamplingParams
    seed: int
    min_frames: int = 2


@dataclass(frozen=True)
class SamplingFlags:
    """Which sampling work any row needs; host-side, so graphs are captured per combination."""

    talker_sampling: bool = True
    talker_top_p: bool = True
    predictor_sampling: bool = True
    predictor_top_p: bool = True

    @classmethod
    def of(cls, params: list[SamplingParams]) -> "SamplingFlags":
        return cls(talker_sampling=any(p.do_sample for p in params),
                   talker_top_p=any(p.do_sample and p.top_p < 1 for p in params),
                   predictor_sampling=any(p.subtalker_do_sample for p in params),
                   predictor_top_p=any(p.subtalker_do_sample and p.subtalker_top_p < 1 for p in params))


class FrameStep:
    """Prefill and per-frame decoding for a fixed number of rows over a static KV cache.

    `flags` must cover every active row's sampling parameters (the engine sets it). With a
    prefix_cache, prefill reuses the K/V of a prompt's shared rows (Prompt.shared_length); every step
    sharing one must store its talker K/V the same way (kv_cache: None, "int8" or "int4"). The code
    predictor's cache holds 16 positions and stays in the model's dtype.
    """

    def __init__(self, talker: Talker, cfg: ModelConfig, rows: int, max_len: int, max_text: int,
                 prefix_cache: PrefixCache | None = None, kv_cache: str | None = None):
        self.talker, self.cfg = talker, cfg
        self.prefix_cache = prefix_cache
        weight = talker.codec_head.weight
        device, dtype = weight.device, weight.dtype
        tl, pl = cfg.talker.layers, cfg.talker.predictor.layers
        self.rows, self.max_len = rows, max_len
        self.cache = KVCache(tl.num_layers, rows, tl.num_kv_heads, max_len, tl.head_dim, device, dtype,
                             quantization=kv_cache)
        groups = cfg.talker.num_code_groups
        self.predictor_cache = KVCache(pl.num_layers, rows, pl.num_kv_heads, groups, pl.head_dim, device, dtype)
        self.state = RowState.allocate(rows, cfg.talker.hidden_size, cfg.talker.vocab_size, max_text, device, dtype)
        # positions stay below the caches' lengths
        talker.model.rotary.reserve(max_len, dtype)
        talker.code_predictor.model.rotary.reserve(groups, dtype)
        self.codes = torch.zeros(rows, groups, dtype=torch.int64, device=device)
        vocab = cfg.talker.vocab_size
        suppress = torch.zeros(vocab, dtype=torch.bool, device=device)
        suppress[vocab - 1024:] = True
        suppress[cfg.talker.codec_eos_id] = False
        self.suppress = suppress
        self.eos_only = torch.zeros_like(suppress)
        self.eos_only[cfg.talker.codec_eos_id] = True
        self.eos_id = cfg.talker.codec_eos_id
        self.flags = SamplingFlags()
        # (first_row, [(rows, start), ...]) -> last hidden (n, H); the graph runner installs a graphed one
        self.prompt_runner = None
        predictor_positions = torch.arange(groups, device=device)
        self._predictor_positions = predictor_positions.expand(rows, groups)

    # ----- codebook 0 -------------------------------------------------------------------
    def _sample_c0(self, logits: torch.Tensor, rows: slice | torch.Tensor) -> torch.Tensor:
        """Upstream's talker processors: penalty, min 2 new tokens, suppression, then sample."""
        s = self.state
        scores = apply_repetition_penalty(logits.float(), s.seen[rows], s.repetition_penalty[rows])
        too_early = (s.frame_index[rows] < s.min_frames[rows]).unsqueeze(1)
        scores = scores.masked_fill(self.suppress | (too_early & self.eos_only), float("-inf"))
        params = SamplingTensors(*(getattr(s.talker_sampling, f)[rows] for f in
                                   ("do_sample", "temperature", "top_k", "top_p")))
        token = sample(scores, params, s.seeds[rows], s.frame_index[rows], TALKER_STREAM,
                       self.flags.talker_sampling, self.flags.talker_top_p, fused=self.talker.model.fused)
        token = torch.where(s.active[rows], token, s.c0[rows])  # a held row keeps its c0
        index = token.unsqueeze(1)
        seen = s.seen[rows]
        s.seen[rows] = seen.scatter(1, index, seen.gather(1, index) | s.active[rows].unsqueeze(1))
        return token

    @torch.no_grad()
    def prefill(self, row: int, prompt: Prompt, sampling: SamplingParams, seed: int, min_frames: int = 2) -> None:
        """Run a prompt into slot `row` and sample the first frame's codebook 0."""
        self.prefill_rows(row, [PrefillItem(prompt, sampling, seed, min_frames)])

    @torch.no_grad()
    def prefill_rows(self, first_row: int, items: list[PrefillItem]) -> None:
        """Prefill items into rows first_row, first_row+1, ..., their prompt rows through the talker
        together, and sample each one's first codebook 0.

        With a prefix cache the shared rows always run as their own call (or come from the
        cache), so a request's result does not depend on whether its voice was cached.
        """
        s = self.state
        parts = []
        for row, item in enumerate(items, first_row):
            length = item.prompt.prefill.shape[0]
            if length + 1 > self.max_len:
                raise ValueError(f"prompt of {length} positions does not fit the cache of {self.max_len}")
            s.set_row(row, item.prompt, item.sampling, item.seed, item.min_frames)
            start = self._restore_prefix(row, item.prompt) if self.prefix_cache is not None else 0
            parts.append((item.prompt.prefill[start:], start))
            s.positions[row].fill_(length)
        last = self._run_prompts(first_row, parts)
        rows = slice(first_row, first_row + len(items))
        s.past_hidden[rows] = last
        s.c0[rows] = self._sample_c0(self.talker.logits(last), rows)

    def _restore_prefix(self, row: int, prompt: Prompt) -> int:
        """Fill slot `row` with the K/V of the prompt's shared rows; returns how many positions it holds."""
        shared = prompt.shared_length
        if shared == 0:
            return 0
        key = prompt.shared_key or prefix_key(prompt.prefill[:shared])
        entry = self.prefix_cache.lookup(key)
        if entry is None:
            self._run_prompt_rows(row, prompt.prefill[:shared], 0)
            self.prefix_cache.store(key, PrefixEntry.from_slot(self.cache, row, shared))
        else:
            entry.copy_into(self.cache, row)
        return shared

    def _run_prompt_rows(self, row: int, rows: torch.Tensor, start: int) -> torch.Tensor:
        """Talker hidden state (1, H) of the last of prompt rows (n, H) at positions start..; K/V go to slot `row`."""
        return self._run_prompts(row, [(rows, start)])

    def _run_prompts(self, first_row: int, parts: list[tuple[torch.Tensor, int]]) -> torch.Tensor:
        """_run_prompt_rows for several prompts (rows, start), into slots first_row..: (len(parts), H)."""
        if self.prompt_runner is not None:
            return self.prompt_runner(first_row, parts)
        return self.run_prompts_eager(first_row, parts)

    def run_prompts_eager(self, first_row: int, parts: list[tuple[torch.Tensor, int]]) -> torch.Tensor:
        """_run_prompts without graphs: each prompt in a call of its own."""
        return torch.cat([self.prompt_rows_eager(row, rows, start)[:, -1]
                          for row, (rows, start) in enumerate(parts, first_row)])

    def prompt_rows_eager(self, row: int, rows: torch.Tensor, start: int) -> torch.Tensor:
        """Talker hidden states (1, n, H) of prompt rows (n, H) at positions start.., written into slot `row`."""
        end = start + rows.shape[0]
        positions = torch.arange(start, end, device=rows.device).unsqueeze(0)
        view = CacheView.causal(self.cache, positions, end, rows_slots=torch.full((1,), row, device=rows.device))
        return self.talker(rows.unsqueeze(0), positions, view)

    # ----- one frame ------------------------------------------------------------------------
    def predict_codebooks(self, batch: int) -> torch.Tensor:
        """Codebooks 1..15 of the current frame for rows [0, batch): (batch, 15)."""
        s, predictor = self.state, self.talker.code_predictor
        params = SamplingTensors(*(getattr(s.predictor_sampling, f)[:batch] for f in
                                   ("do_sample", "temperature", "top_k", "top_p")))
        seeds, steps = s.seeds[:batch], s.frame_index[:batch]
        first = torch.stack([s.past_hidden[:batch], self.talker.embed_codec(s.c0[:batch])], dim=1)
        positions = self._predictor_positions[:batch, :2]
        view = CacheView.causal(self.predictor_cache, positions, 2)
        logits = predictor.step(first, positions, view, head=0)
        flags = (self.flags.predictor_sampling, self.flags.predictor_top_p, self.talker.model.fused)
        codes = [sample(logits, params, seeds, steps, 1, *flags)]
        for k in range(1, predictor.num_steps):
            positions = self._predictor_positions[:batch, k + 1: k + 2]
            view = CacheView.causal(self.predictor_cache, positions, k + 2)
            rows = predictor.embed_code(k, codes[-1]).unsqueeze(1)
            logits = predictor.step(rows, positions, view, head=k)
            codes.append(sample(logits, params, seeds, steps, k + 1, *flags))
        return torch.stack(codes, dim=1)

    @torch.no_grad()
    def frame_step(self, batch: int, attend_length: int) -> torch.Tensor:
        """Finish the current frame of rows [0, batch) and sample the next frame's codebook 0.

        Returns the view of `self.codes[:batch]` holding the finished frames (B, 16).
        attend_length must exceed every row's position (the caller tracks positions).
        """
        codes = self.predict_frame(batch)
        self.advance(batch, attend_length)
        return codes

    @torch.no_grad()
    def predict_frame(self, batch: int) -> torch.Tensor:
        """The first half of frame_step: the current frame's codes, in `self.codes[:batch]` (B, 16)."""
        codes = self.codes[:batch]
        codes[:, 0] = self.state.c0[:batch]
        codes[:, 1:] = self.predict_codebooks(batch)
        return codes

    @torch.no_grad()
    def advance(self, batch: int, attend_length: int) -> None:
        """The second half of frame_step: the talker over the frame in `self.codes`, and the next c0."""
        s = self.state
        rows = slice(0, batch)
        codes = self.codes[:batch]
        frame_rows = self.talker.embed_frames(codes)
        index = s.frame_index[rows]
        has_text = index < s.text_len[rows]
        text = s.text_rows[rows].gather(1, index.clamp(max=s.text_rows.shape[1] - 1).view(-1, 1, 1)
                                         .expand(-1, 1, s.text_rows.shape[2])).squeeze(1)
        text = torch.where(has_text.unsqueeze(1), text, s.pad_row)
        positions = s.positions[rows].unsqueeze(1)
        view = CacheView.causal(self.cache, positions, attend_length)
        hidden = self.talker((frame_rows + text).unsqueeze(1), positions, view)[:, 0]
        active = s.active[rows]
        s.past_hidden[rows] = torch.where(active.unsqueeze(1), hidden, s.past_hidden[rows])
        s.positions[rows] += active
        s.frame_index[rows] += active
        s.c0[rows] = self._sample_c0(self.talker.logits(hidden), rows)
