"""Quality gates of a quantization option: the option's model against the unquantized one (docs/quantization.md).

Both models are fed the frames the reference generated (teacher forcing), so their outputs compare
position by position: each decoder layer's output given the same input (cosine), and the next-token
distributions of all 16 codebooks over the first frames (KL divergence, top-5 agreement). Runaways,
requests that reach their frame cap instead of EOS, are counted on free-running generation.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch
from torch.nn import functional as F

from ..api import TTS
from ..engine.planning import plan_request
from ..engine.prompt import Prompt
from ..engine.request import SpeechRequest
from ..layers.attention import CacheView, KVCache
from ..layers.decoder import DecoderStack
from ..models.talker import Talker

# What an option must reach to become a default (docs/quantization.md states and explains them).
WEIGHT_LAYER_COSINE = 0.999  # FP8 weights: the worst layer's output, given the reference's input
KV_LAYER_COSINE = 0.999  # a quantized KV cache, the same measure
MAX_KL = 0.01  # nats: codebook 0, and codebooks 1-15, each a mean over frames and prompts
MIN_TOP5_AGREEMENT = 0.9  # the share of the reference's top 5 in the option's top 5, mean over frames
RUNAWAY_ALLOWANCE = 0.005  # extra runaways per prompt over the reference's count (at least one)
GATE_FRAMES = 64


@dataclass
class StackComparison:
    """A candidate decoder stack against the reference over the same rows."""

    isolated: list[float]  # per layer: the candidate layer on the reference layer's input
    cumulative: list[float]  # per layer: each stack on its own running input
    reference_hidden: torch.Tensor  # final normed hidden states (B, S, H)
    candidate_hidden: torch.Tensor


@dataclass
class GateReport:
    """The gate figures of one option; per-layer cosines are means over prompts, the gate takes the worst layer."""

    talker_layer_cosines: list[float]
    predictor_layer_cosines: list[float]
    talker_output_cosine: float  # the last layer, each model on its own input (errors accumulated)
    predictor_output_cosine: float
    codebook0_kl: float
    predictor_kl: float
    codebook0_top5: float
    predictor_top5: float

    @property
    def layer_cosine(self) -> float:
        return min(self.talker_layer_cosines + self.predictor_layer_cosines)

    def failures(self, min_layer_cosine: float) -> list[str]:
        """The gates this report misses (empty when it passes); min_layer_cosine: WEIGHT_ or KV_LAYER_COSINE."""
        checks = {"layer cosine": self.layer_cosine >= min_layer_cosine,
                  "codebook-0 KL": self.codebook0_kl <= MAX_KL, "predictor KL": self.predictor_kl <= MAX_KL,
                  "codebook-0 top-5": self.codebook0_top5 >= MIN_TOP5_AGREEMENT,
                  "predictor top-5": self.predictor_top5 >= MIN_TOP5_AGREEMENT}
        return [name for name, passed in checks.items() if not passed]

    def as_dict(self) -> dict:
        return {**asdict(self), "layer_cosine": self.layer_cosine}


def runaway_limit(reference_runaways: int, prompts: int) -> int:
    """The most runaways an option may have over `prompts` prompts when the reference had reference_runaways."""
    return reference_runaways + max(1, math.ceil(RUNAWAY_ALLOWANCE * prompts))


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean cosine of the rows of a and b (..., H)."""
    return F.cosine_similarity(a.float().reshape(-1, a.shape[-1]), b.float().reshape(-1, b.shape[-1]), dim=-1
                               ).mean().item()


def compare_stacks(reference: DecoderStack, candidate: DecoderStack, rows: torch.Tensor,
                   kv_cache: str | None = None, candidate_rows: torch.Tensor | None = None) -> StackComparison:
    """Run rows (B, S, H) at positions 0..S-1 of slots 0..B-1 through both stacks layer by layer, on the module
    path (the fused kernels' equality with it is tested on its own). kv_cache: the candidate's cache
    quantization; candidate_rows: the candidate's own input (default: rows)."""
    batch, seq, _ = rows.shape
    candidate_rows = rows if candidate_rows is None else candidate_rows
    dtype = candidate_rows.dtype
    positions = torch.arange(seq, device=rows.device).expand(batch, seq)
    cfg = reference.cfg

    def view(quantization: str | None, cache_dtype: torch.dtype) -> CacheView:
        cache = KVCache(cfg.num_layers, batch, cfg.num_kv_heads, seq, cfg.head_dim, rows.device, cache_dtype,
                        quantization=quantization)
        return CacheView.causal(cache, positions, seq)

    reference_view, isolated_view, candidate_view = view(None, rows.dtype), view(kv_cache, dtype), view(kv_cache, dtype)
    reference_angles, candidate_angles = reference.rotary(positions, rows.dtype), candidate.rotary(positions, dtype)
    isolated, cumulative = [], []
    x, y = rows, candidate_rows
    for index, (reference_layer, candidate_layer) in enumerate(zip(reference.layers, candidate.layers)):
        alone = candidate_layer(x.to(dtype), *candidate_angles, isolated_view, index)
        x = reference_layer(x, *reference_angles, reference_view, index)
        y = candidate_layer(y, *candidate_angles, candidate_view, index)
        isolated.append(_cosine(alone, x))
        cumulative.append(_cosine(y, x))
    return StackComparison(isolated, cumulative, reference.norm(x), candidate.norm(y))


def _text_rows(prompt: Prompt, count: int) -> torch.Tensor:
    """The text rows added to frames 0..count-1: the trailing rows, then the pad row."""
    pads = prompt.pad_row.expand(max(0, count - prompt.trailing.shape[0]), -1)
    return torch.cat([prompt.trailing[:count], pads])


def talker_rows(talker: Talker, prompt: Prompt, codes: torch.Tensor) -> torch.Tensor:
    """The talker's input rows (1, L + F - 1, H) for a prompt and frames codes (F, 16), as the frame step feeds them."""
    frames = codes.shape[0]
    return torch.cat([prompt.prefill, talker.embed_frames(codes[:-1]) + _text_rows(prompt, frames - 1)]).unsqueeze(0)


def predictor_rows(talker: Talker, frame_hidden: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """The code predictor's input rows (F, 16, H_predictor) of each frame: the talker hidden that sampled
    codebook 0, then the embeddings of codebooks 0..14."""
    predictor = talker.code_predictor
    inputs = [frame_hidden, talker.embed_codec(codes[:, 0])]
    inputs += [predictor.embed_code(k, codes[:, k]) for k in range(1, predictor.num_steps)]
    return predictor.small_to_mtp_projection(torch.stack(inputs, dim=1))


def _codebook0_logits(talker: Talker, hidden: torch.Tensor) -> torch.Tensor:
    """Codebook-0 logits with the ids the frame step never samples (control ids but EOS) at -inf."""
    cfg = talker.cfg
    blocked = torch.zeros(cfg.vocab_size, dtype=torch.bool, device=hidden.device)
    blocked[cfg.vocab_size - 1024:] = True
    blocked[cfg.codec_eos_id] = False
    return talker.logits(hidden).float().masked_fill(blocked, float("-inf"))


def _predictor_logits(talker: Talker, hidden: torch.Tensor) -> torch.Tensor:
    """Logits (F, 15, V) of codebooks 1..15 from the predictor's hidden states (F, 16, H)."""
    heads = talker.code_predictor.lm_head
    return torch.stack([heads[k](hidden[:, k + 1]) for k in range(len(heads))], dim=1).float()


def kl_and_top5(reference: torch.Tensor, candidate: torch.Tensor) -> tuple[float, float]:
    """Mean KL(reference || candidate) in nats and mean top-5 agreement of logits (..., V); -inf: impossible ids."""
    ref_log, cand_log = reference.log_softmax(-1), candidate.log_softmax(-1)
    kl = torch.where(torch.isfinite(ref_log), ref_log.exp() * (ref_log - cand_log), torch.zeros_like(ref_log))
    ref_top, cand_top = reference.topk(5, dim=-1).indices, candidate.topk(5, dim=-1).indices
    agreement = (ref_top.unsqueeze(-1) == cand_top.unsqueeze(-2)).any(-1).float().mean(-1)
    return kl.sum(-1).mean().item(), agreement.mean().item()


@torch.no_grad()
def compare_on_frames(reference: Talker, candidate: Talker, prompt: Prompt, codes: torch.Tensor,
                      kv_cache: str | None = None) -> dict:
    """Gate figures of one prompt and its frames codes (F, 16); kv_cache: the candidate talker cache's quantization
    (the predictor's 16-position cache stays unquantized)."""
    rows = talker_rows(reference, prompt, codes)
    candidate_dtype = candidate.codec_head.weight.dtype
    talker = compare_stacks(reference.model, candidate.model, rows, kv_cache, rows.to(candidate_dtype))
    start = prompt.prefill.shape[0] - 1  # the hidden that samples frame t's codebook 0 sits at start + t
    hidden = talker.reference_hidden[0, start:], talker.candidate_hidden[0, start:]
    predictor = compare_stacks(reference.code_predictor.model, candidate.code_predictor.model,
                               predictor_rows(reference, hidden[0], codes),
                               candidate_rows=predictor_rows(candidate, hidden[1], codes))
    codebook0 = kl_and_top5(_codebook0_logits(reference, hidden[0]), _codebook0_logits(candidate, hidden[1]))
    others = kl_and_top5(_predictor_logits(reference, predictor.reference_hidden),
                         _predictor_logits(candidate, predictor.candidate_hidden))
    return {"talker_layers": talker.isolated, "predictor_layers": predictor.isolated,
            "talker_output": talker.cumulative[-1], "predictor_output": predictor.cumulative[-1],
            "codebook0": codebook0, "predictor": others}


@torch.no_grad()
def reference_frames(reference: TTS, requests: list[SpeechRequest], frames: int = GATE_FRAMES
                     ) -> list[tuple[SpeechRequest, torch.Tensor]]:
    """Each request with the first `frames` frames (F, 16) the reference generates for it (one batch): the
    frames every option is then fed."""
    capped = [replace(request, max_frames=frames) for request in requests]
    return [(request, codes.to(reference.device)) for request, (codes, _) in zip(capped, reference.generate_codes(capped))
            if codes.shape[0] > 0]


@torch.no_grad()
def measure_gates(reference: TTS, candidate: TTS, frames: list[tuple[SpeechRequest, torch.Tensor]],
                  candidate_kv_cache: str | None = None) -> GateReport:
    """Gate figures of `candidate` (an option's model) against `reference` over reference_frames;
    candidate_kv_cache: the talker KV quantization the candidate runs with."""
    figures = [compare_on_frames(reference.talker, candidate.talker,
                                 plan_request(reference.model, request, reference.max_len).prompt, codes,
                                 candidate_kv_cache) for request, codes in frames]

    def mean(key: str) -> torch.Tensor:
        return torch.tensor([figure[key] for figure in figures], dtype=torch.float64).mean(0)

    codebook0, others = mean("codebook0").tolist(), mean("predictor").tolist()
    return GateReport(talker_layer_cosines=mean("talker_layers").tolist(),
                      predictor_layer_cosines=mean("predictor_layers").tolist(),
                      talker_output_cosine=mean("talker_output").item(),
                      predictor_output_cosine=mean("predictor_output").item(),
                      codebook0_kl=codebook0[0], codebook0_top5=codebook0[1],
                      predictor_kl=others[0], predictor_top5=others[1])


def count_runaways(tts: TTS, requests: list[SpeechRequest]) -> int:
    """How many requests reach their frame cap instead of EOS (generated as one batch)."""
    return sum(reason == "length" for _, reason in tts.generate_codes(requests))
