"""The talker: text + codec embeddings → 28 decoder layers → codebook-0 logits."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..config import TalkerConfig
from ..layers.attention import CacheView
from ..layers.decoder import DecoderStack
from .predictor import CodePredictor


class TextProjection(nn.Module):
    """fc2(silu(fc1(x))): text embedding width → talker width."""

    def __init__(self, text_hidden: int, hidden: int):
        super().__init__()
        self.linear_fc1 = nn.Linear(text_hidden, text_hidden, bias=True)
        self.linear_fc2 = nn.Linear(text_hidden, hidden, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_fc2(F.silu(self.linear_fc1(x)))


class TalkerBackbone(DecoderStack):
    def __init__(self, cfg: TalkerConfig):
        super().__init__(cfg.layers)
        self.codec_embedding = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.text_embedding = nn.Embedding(cfg.text_vocab_size, cfg.text_hidden_size)


class Talker(nn.Module):
    """Parameter names match the checkpoint's `talker.*` tensors."""

    def __init__(self, cfg: TalkerConfig):
        super().__init__()
        self.cfg = cfg
        self.model = TalkerBackbone(cfg)
        self.text_projection = TextProjection(cfg.text_hidden_size, cfg.hidden_size)
        self.codec_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.code_predictor = CodePredictor(cfg.predictor, talker_hidden=cfg.hidden_size)

    def embed_text(self, token_ids: torch.Tensor) -> torch.Tensor:
        """T(ids): text tokens → talker-width rows."""
        return self.text_projection(self.model.text_embedding(token_ids))

    def embed_codec(self, codec_ids: torch.Tensor) -> torch.Tensor:
        """C(ids): codebook-0 / control / speaker ids → talker-width rows."""
        return self.model.codec_embedding(codec_ids)

    def embed_frames(self, codes: torch.Tensor) -> torch.Tensor:
        """E(frame) for codes (..., 16): the sum of all 16 codebook embeddings."""
        rows = [self.model.codec_embedding(codes[..., 0])]
        rows += [table(codes[..., k + 1]) for k, table in enumerate(self.code_predictor.model.codec_embedding)]
        return torch.stack(rows, dim=-2).sum(-2)

    def forward(self, embeds: torch.Tensor, positions: torch.Tensor, view: CacheView) -> torch.Tensor:
        """Normed hidden states (B, S, H) for input rows (B, S, H)."""
        return self.model(embeds, positions, view)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.codec_head(hidden)
