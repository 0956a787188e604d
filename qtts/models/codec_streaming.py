"""Many concurrent codec streams: one preallocated state row per slot, one decoder call per chunk.

A call reads the state rows of its slots, decodes the next chunk of every stream at once and writes
the rows' new state back, so streams join and leave between calls and a stream's samples do not
depend on its batch companions. On CUDA each (batch bucket, chunk frames) call can be replayed as
a captured CUDA graph: batches are padded up to the bucket with a scratch slot.
"""
from __future__ import annotations

import contextlib

import torch

from ..errors import OverloadedError
from ..graphs import GraphCache, bucket_for, pow2_bucket, to_device
from .codec_decoder import CodecDecoder
from .conv_layout import choose_conv_layouts


def _buckets(max_streams: int) -> list[int]:
    """Powers of two below max_streams, then max_streams."""
    return sorted({min(pow2_bucket(n), max_streams) for n in range(1, max_streams + 1)})


class StreamingCodecDecoder:
    """Slots for up to max_streams streams decoded chunk by chunk.

    use_graphs: replay CUDA graphs for chunks of graph_chunk_frames frames (captured on first use,
    one per batch bucket and chunk length, each with its convolutions' layouts chosen by timing);
    other calls, and every call off CUDA, run eagerly.
    """

    def __init__(self, decoder: CodecDecoder, max_streams: int, use_graphs: bool = False,
                 graph_chunk_frames: tuple[int, ...] = (1, 2, 4, 8, 12), batch_buckets: list[int] | None = None):
        if max_streams < 1:
            raise ValueError(f"max_streams must be at least 1, got {max_streams}")
        if decoder.code_embeddings is None:
            decoder.refresh_codebooks()
        self.decoder = decoder
        self.max_streams = max_streams
        self.scratch_slot = max_streams  # padding rows of graphed calls read and write only this row
        self.state = decoder.new_state(max_streams + 1)
        self.device = self.state.positions.device
        self._free = list(range(max_streams))
        self.use_graphs = use_graphs and self.device.type == "cuda"
        self.graph_chunk_frames = set(graph_chunk_frames)
        self.batch_buckets = sorted(batch_buckets or _buckets(max_streams))
        self._graphs: dict[tuple[int, int], _GraphedChunk] = {}
        # per captured (bucket, frames): each dense convolution's time in both layouts and the one chosen
        self.conv_layouts: dict[tuple[int, int], list[dict]] = {}
        self._graph_cache: GraphCache | None = None

    @property
    def active(self) -> int:
        """Slots in use."""
        return self.max_streams - len(self._free)

    def allocate(self) -> int:
        """A free slot, reset to a fresh stream."""
        if not self._free:
            raise OverloadedError(f"all {self.max_streams} codec decoder slots are in use; free one or "
                                  "create the decoder with a larger max_streams")
        slot = self._free.pop(0)
        self.reset(slot)
        return slot

    def free(self, slot: int) -> None:
        """Give a slot back."""
        if not 0 <= slot < self.max_streams or slot in self._free:
            raise ValueError(f"slot {slot} is not allocated")
        self._free.append(slot)
        self._free.sort()

    def reset(self, slot: int) -> None:
        """Restart a slot's stream from silence at position 0."""
        self.state.reset(slot)

    @torch.no_grad()
    def decode(self, slots: list[int] | torch.Tensor, codes: torch.Tensor, last: bool = False) -> torch.Tensor:
        """Next chunk (B, 16, t) of the streams in `slots` (B distinct allocated slots) → (B, t·1920) samples.

        last: these streams end with this chunk, so a length without a graph may be padded to the
        next graphed one; the decoder is causal, so the real frames' samples do not change.
        """
        if isinstance(slots, list):
            self._check_allocated(slots)
        slots = to_device(torch.as_tensor(slots, dtype=torch.long), self.device)
        batch, frames = slots.shape[0], codes.shape[-1]
        if codes.dim() != 3 or codes.shape[0] != batch:
            raise ValueError(f"codes must be (B={batch}, {self.decoder.cfg.num_quantizers}, t); "
                             f"got {tuple(codes.shape)}")
        codes = to_device(codes, self.device)
        longer = sorted(n for n in self.graph_chunk_frames if n > frames)
        if last and self.use_graphs and frames not in self.graph_chunk_frames and longer:
            padding = codes[..., -1:].expand(-1, -1, longer[0] - frames)
            wave = self.decode(slots, torch.cat([codes, padding], dim=-1))
            return wave[:, : wave.shape[1] // longer[0] * frames]
        if self.use_graphs and frames in self.graph_chunk_frames and batch <= self.batch_buckets[-1]:
            bucket = bucket_for(batch, self.batch_buckets)
            graph = self._graphs.get((bucket, frames))
            if graph is None:
                graph = self._graphs[(bucket, frames)] = self._capture(bucket, frames)
            return graph.run(slots, codes)
        return self._decode_rows(slots, codes)

    def warmup(self) -> None:
        """Capture every (batch bucket, chunk length) graph now instead of on first use (CUDA graphs only)."""
        if not self.use_graphs:
            return
        for bucket in self.batch_buckets:
            for frames in sorted(self.graph_chunk_frames):
                if (bucket, frames) not in self._graphs:
                    self._graphs[(bucket, frames)] = self._capture(bucket, frames)

    def _check_allocated(self, slots: list[int]) -> None:
        if len(set(slots)) != len(slots):
            raise ValueError(f"slots must be distinct, got {slots}")
        free = set(self._free)  # one set per call: the engine checks every row's slot every frame
        unknown = [s for s in slots if not 0 <= s < self.max_streams or s in free]
        if unknown:
            raise ValueError(f"slots {unknown} are not allocated; call allocate() first")

    def _decode_rows(self, slots: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        return self.decoder.decode_chunk(codes, self.state, slots)[0]

    def _capture(self, bucket: int, frames: int) -> "_GraphedChunk":
        if self._graph_cache is None:
            # a capture stream of our own: cuBLAS keys its workspace by stream, and these graphs may
            # replay while talker work runs on another stream, so they must not have its workspace built
            # in. torch hands out streams from per-priority pools; the talker's capture and warm-up
            # streams come from the default-priority pool, this one from the high-priority pool.
            self._graph_cache = GraphCache(self.device, torch.cuda.Stream(self.device, priority=-1))
        slots = torch.full((bucket,), self.scratch_slot, dtype=torch.long, device=self.device)
        codes = torch.zeros(bucket, self.decoder.cfg.num_quantizers, frames, dtype=torch.long, device=self.device)
        self.decoder.channels_last_calls.add((bucket, frames))  # the layouts are then tuned for this shape
        # cuDNN times its algorithms for the captured shapes only (~25% faster convolutions on an H200);
        # left on globally it would re-time every new eager shape (references, uploads, whole clips)
        with _cudnn_autotuning():
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):  # warm-up on the scratch row only
                    self._decode_rows(slots, codes)
                self.conv_layouts[(bucket, frames)] = choose_conv_layouts(
                    self.decoder, lambda: self._decode_rows(slots, codes))
            torch.cuda.current_stream().wait_stream(side)
            outputs = []
            graph = self._graph_cache.capture((bucket, frames), lambda: outputs.append(self._decode_rows(slots, codes)))
        return _GraphedChunk(graph, slots, codes, outputs[0], self.scratch_slot)


@contextlib.contextmanager
def _cudnn_autotuning():
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


class _GraphedChunk:
    """A captured decode call with its static inputs and output."""

    def __init__(self, graph, slots: torch.Tensor, codes: torch.Tensor, wave: torch.Tensor, scratch_slot: int):
        self.graph, self.slots, self.codes, self.wave, self.scratch_slot = graph, slots, codes, wave, scratch_slot

    def run(self, slots: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        batch = slots.shape[0]
        self.slots.fill_(self.scratch_slot)
        self.slots[:batch] = slots
        self.codes.zero_()
        self.codes[:batch] = codes
        self.graph.replay()
        return self.wave[:batch].clone()
