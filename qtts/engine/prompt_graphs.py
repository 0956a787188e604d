"""The talker over prompt rows as CUDA graphs, one per (prompts, padded row count, attended length bucket)."""
from __future__ import annotations

import torch

from ..graphs import GraphCache, pow2_bucket
from ..layers.attention import CacheView
from .step import FrameStep

MAX_GRAPHED_PROMPT = 512  # longer prompt calls run eagerly
MAX_PROMPTS = 2  # prompts per graphed call (the engine's prefills of one iteration); more run in groups
WARMUP_PREFIX_ROWS = 128  # warm-up covers prompt calls that start up to this far in (a cached voice prefix)
MIN_ATTEND_BUCKET = 64


class PromptGraphs:
    """Prompt rows through the talker as CUDA graphs, one per (prompts, padded row count, attended length
    bucket); several prompts (each into its own slot) share one pass over the weights.

    An eager prefill is ~1,000 launches (tens of ms); replayed, it is a few ms. Padding rows go
    after the real ones, so causal attention keeps them out of the real rows' results; the K/V
    they leave past the prompt are overwritten by the frames that follow before anything reads them.
    """

    def __init__(self, step: FrameStep, graphs: GraphCache):
        self.step, self.graphs = step, graphs
        device = step.codes.device
        hidden = step.talker.cfg.hidden_size
        dtype = step.talker.codec_head.weight.dtype
        self.max_prompts = min(MAX_PROMPTS, step.rows)
        self.rows = torch.zeros(self.max_prompts, MAX_GRAPHED_PROMPT, hidden, device=device, dtype=dtype)
        self.starts = torch.zeros(self.max_prompts, dtype=torch.long, device=device)
        self.first_slot = torch.zeros((), dtype=torch.long, device=device)
        self.last = torch.zeros(self.max_prompts, dtype=torch.long, device=device)
        self.out = torch.zeros(self.max_prompts, hidden, device=device, dtype=dtype)

    def _attend(self, needed: int) -> int:
        """As GraphRunner.attend_length: the fused kernels read each row's length from its positions."""
        if self.step.talker.model.fused:
            return self.step.max_len
        return pow2_bucket(needed, MIN_ATTEND_BUCKET, self.step.max_len)

    def __call__(self, first_row: int, parts: list[tuple[torch.Tensor, int]]) -> torch.Tensor:
        """Last hidden states (len(parts), H) of prompts (rows (n, H), start position), into slots first_row..."""
        if len(parts) > self.max_prompts:
            return torch.cat([self(first_row + i, parts[i: i + self.max_prompts])
                              for i in range(0, len(parts), self.max_prompts)])
        padded = pow2_bucket(max(rows.shape[0] for rows, _ in parts))
        reach = max(start for _, start in parts) + padded
        if padded > MAX_GRAPHED_PROMPT or reach > self.step.max_len:
            return self.step.run_prompts_eager(first_row, parts)
        key = ("prompt", len(parts), padded, self._attend(reach))
        for index, (rows, start) in enumerate(parts):
            self.rows[index, : rows.shape[0]] = rows
            self.starts[index].fill_(start)
            self.last[index].fill_(rows.shape[0] - 1)
        self.first_slot.fill_(first_row)
        self.graphs.run(key, lambda: self._forward(*key[1:]))
        return self.out[: len(parts)].clone()

    def warmup(self) -> None:
        """Capture the graphs of every prompt count and padded row count, for calls starting at 0 up to
        WARMUP_PREFIX_ROWS in (the text part after a cached voice prefix starts there).

        Runs garbage rows into the first slots, so call it before any request has a row.
        """
        row = torch.zeros(1, self.rows.shape[-1], device=self.rows.device, dtype=self.rows.dtype)
        max_len = self.step.max_len
        for prompts in range(1, self.max_prompts + 1):
            padded = 1
            while padded <= min(MAX_GRAPHED_PROMPT, max_len):
                attend = self._attend(padded)
                while attend <= self._attend(padded + WARMUP_PREFIX_ROWS):
                    for _ in range(2):  # eager warm-up, then capture
                        self(0, [(row.expand(padded, -1), attend - padded)] * prompts)
                    if attend == max_len:
                        break
                    attend *= 2
                padded *= 2

    def _forward(self, prompts: int, padded: int, attend_length: int) -> None:
        offsets = torch.arange(padded, device=self.starts.device)
        positions = self.starts[:prompts, None] + offsets[None, :]
        slots = self.first_slot + torch.arange(prompts, device=self.starts.device)
        view = CacheView.causal(self.step.cache, positions, attend_length, rows_slots=slots)
        hidden = self.step.talker(self.rows[:prompts, :padded], positions, view)
        index = self.last[:prompts].view(-1, 1, 1).expand(-1, 1, hidden.shape[-1])
        self.out[:prompts].copy_(hidden.gather(1, index)[:, 0])
