"""The code predictor: codebooks 1..15 of a frame from the talker's hidden state and codebook 0."""
from __future__ import annotations

import torch
from torch import nn

from ..config import PredictorConfig
from ..layers.attention import CacheView
from ..layers.decoder import DecoderStack


class PredictorBackbone(DecoderStack):
    def __init__(self, cfg: PredictorConfig, talker_hidden: int):
        super().__init__(cfg.layers)
        # Embeds codebook k+1 at talker width; they also feed the talker's frame embedding.
        self.codec_embedding = nn.ModuleList(
            nn.Embedding(cfg.vocab_size, talker_hidden) for _ in range(cfg.num_code_groups - 1)
        )


class CodePredictor(nn.Module):
    """Parameter names match the checkpoint's `talker.code_predictor.*` tensors."""

    def __init__(self, cfg: PredictorConfig, talker_hidden: int):
        super().__init__()
        self.cfg = cfg
        self.model = PredictorBackbone(cfg, talker_hidden)
        self.lm_head = nn.ModuleList(
            nn.Linear(cfg.layers.hidden_size, cfg.vocab_size, bias=False) for _ in range(cfg.num_code_groups - 1)
        )
        if cfg.layers.hidden_size != talker_hidden:
            self.small_to_mtp_projection = nn.Linear(talker_hidden, cfg.layers.hidden_size, bias=True)
        else:
            self.small_to_mtp_projection = nn.Identity()

    @property
    def num_steps(self) -> int:
        return self.cfg.num_code_groups - 1

    def step(self, talker_width_rows: torch.Tensor, positions: torch.Tensor, view: CacheView,
             head: int) -> torch.Tensor:
        """Run rows (B, S, talker H) through the predictor and return logits of the last row for `head`."""
        from ..kernels.gemv import linear  # F.linear unless the fused model runs GEMVs

        projection, gemv = self.small_to_mtp_projection, self.model.gemv
        if isinstance(projection, nn.Linear):
            talker_width_rows = linear(talker_width_rows, projection.weight, projection.bias, gemv)
        hidden = self.model(talker_width_rows, positions, view)
        return linear(hidden[:, -1], self.lm_head[head].weight, gemv=gemv)

    def embed_code(self, codebook: int, codes: torch.Tensor) -> torch.Tensor:
        """Talker-width embedding of codes of codebook `codebook` (1..15)."""
        return self.model.codec_embedding[codebook - 1](codes)
