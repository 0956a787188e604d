"""The talker over prompt rows as CUDA graphs, one per (padded row count, attended length bucket)."""
from __future__ import annotations

import torch

from ..layers.attention import CacheView
from .runner import attend_bucket, capture_graph
from .step import FrameStep

MAX_GRAPHED_PROMPT = 512  # longer prompt calls run eagerly
WARMUP_PREFIX_ROWS = 128  # warm-up covers prompt calls that start up to this far in (a cached voice prefix)


def prompt_bucket(rows: int) -> int:
    """Smallest power of two >= rows."""
    return 1 << (rows - 1).bit_length()


class PromptGraphs:
    """Prompt rows through the talker as CUDA graphs, one per (padded row count, attended length bucket).

    An eager prefill is ~1,000 launches (tens of ms); replayed, it is a few ms. Padding rows go
    after the real ones, so causal attention keeps them out of the real rows' results; the K/V
    they leave past the prompt are overwritten by the frames that follow before anything reads them.
    """

    def __init__(self, step: FrameStep, pool):
        self.step, self.pool = step, pool
        device = step.codes.device
        hidden = step.talker.cfg.hidden_size
        dtype = step.talker.codec_head.weight.dtype
        self.rows = torch.zeros(MAX_GRAPHED_PROMPT, hidden, device=device, dtype=dtype)
        self.start = torch.zeros((), dtype=torch.long, device=device)
        self.slot = torch.zeros(1, dtype=torch.long, device=device)
        self.last = torch.zeros(1, dtype=torch.long, device=device)
        self.out = torch.zeros(1, hidden, device=device, dtype=dtype)
        self._graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}
        self._warm: set[tuple[int, int]] = set()

    def __call__(self, row: int, rows: torch.Tensor, start: int) -> torch.Tensor:
        count = rows.shape[0]
        padded = prompt_bucket(count)
        if padded > MAX_GRAPHED_PROMPT or start + padded > self.step.max_len:
            return self.step.prompt_rows_eager(row, rows, start)[:, -1]
        key = (padded, attend_bucket(start + padded, self.step.max_len))
        self.rows[:count] = rows
        self.start.fill_(start)
        self.slot.fill_(row)
        self.last.fill_(count - 1)
        graph = self._graphs.get(key)
        if graph is None and key not in self._warm:
            self._warm.add(key)  # the first call runs eagerly and warms up the kernels
            self._forward(*key)
        elif graph is None:
            graph = self._graphs[key] = capture_graph(lambda: self._forward(*key), self.pool)
            graph.replay()
        else:
            graph.replay()
        return self.out.clone()

    def warmup(self) -> None:
        """Capture the graphs of every padded row count, for calls starting at 0 up to
        WARMUP_PREFIX_ROWS in (the text part after a cached voice prefix starts there).

        Runs garbage rows into slot 0, so call it before any request has a row.
        """
        row = torch.zeros(1, self.rows.shape[1], device=self.rows.device, dtype=self.rows.dtype)
        padded, max_len = 1, self.step.max_len
        while padded <= min(MAX_GRAPHED_PROMPT, max_len):
            attend = attend_bucket(padded, max_len)
            while attend <= attend_bucket(padded + WARMUP_PREFIX_ROWS, max_len):
                for _ in range(2):  # eager warm-up, then capture
                    self(0, row.expand(padded, -1), attend - padded)
                if attend == max_len:
                    break
                attend *= 2
            padded *= 2

    def _forward(self, padded: int, attend_length: int) -> None:
        positions = (self.start + torch.arange(padded, device=self.start.device)).unsqueeze(0)
        view = CacheView.causal(self.step.cache, positions, attend_length, rows_slots=self.slot)
        hidden = self.step.talker(self.rows[:padded].unsqueeze(0), positions, view)
        self.out.copy_(hidden[0].index_select(0, self.last))
