"""Prompt-prefix KV cache: the talker K/V of a voice's text-independent prompt rows, computed once.

A prompt's leading rows (instruct, role, codec tags, speaker, a clone's reference transcript) do
not depend on the text, and under causal attention neither do their keys and values. A prefill
that finds them here copies them into its KV slot and runs the talker only over the rest.
Entries are keyed by the rows' exact bits, kept in LRU order and bounded by bytes.
"""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch

from ..layers.attention import KVCache

DEFAULT_PREFIX_CACHE_MB = 256


def prefix_key(rows: torch.Tensor) -> bytes:
    """A 256-bit BLAKE2b digest of the rows' dtype, shape and bytes: equal keys mean equal rows."""
    digest = hashlib.blake2b(f"{rows.dtype}{tuple(rows.shape)}".encode(), digest_size=32)
    digest.update(rows.detach().contiguous().view(torch.uint8).cpu().numpy().data)
    return digest.digest()


@dataclass
class PrefixEntry:
    """K/V of one prefix, every layer: (2, layers, kv_heads, length, width) as KVCache.positions, on the model's
    device."""

    kv: torch.Tensor

    @property
    def length(self) -> int:
        return self.kv.shape[3]

    @property
    def nbytes(self) -> int:
        return self.kv.numel() * self.kv.element_size()

    @classmethod
    def from_slot(cls, cache: KVCache, slot: int, length: int) -> "PrefixEntry":
        """A copy of the first `length` positions of `slot`."""
        return cls(cache.positions(slot, length).clone())

    def copy_into(self, cache: KVCache, slot: int) -> None:
        """Write these K/V into positions 0..length-1 of `slot`."""
        cache.positions(slot, self.length).copy_(self.kv)


class PrefixCache:
    """LRU map from prefix_key to PrefixEntry holding at most max_bytes of K/V; thread-safe.

    One cache serves every frame step of one model (its single-row path and its engine).
    """

    def __init__(self, max_bytes: int = DEFAULT_PREFIX_CACHE_MB << 20):
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}; pass no cache to turn it off")
        self.max_bytes = max_bytes
        self._entries: OrderedDict[bytes, PrefixEntry] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._counts = {"hits": 0, "misses": 0, "evictions": 0}

    def lookup(self, key: bytes) -> PrefixEntry | None:
        """The entry for key (now the most recently used), or None; counts a hit or a miss."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self._counts["misses"] += 1
                return None
            self._entries.move_to_end(key)
            self._counts["hits"] += 1
            return entry

    def store(self, key: bytes, entry: PrefixEntry) -> None:
        """Insert entry, evicting the least recently used ones past max_bytes (a too-large one is dropped)."""
        size = entry.nbytes
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            self._entries[key] = entry
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= evicted.nbytes
                self._counts["evictions"] += 1

    def clear(self, counters: bool = False) -> None:
        """Drop every entry (frees their device memory); the counters keep counting unless `counters`."""
        with self._lock:
            self._entries.clear()
            self._bytes = 0
            if counters:
                self._counts = dict.fromkeys(self._counts, 0)

    def stats(self) -> dict:
        """hits, misses, evictions, entries, bytes and max_bytes."""
        with self._lock:
            return {**self._counts, "entries": len(self._entries), "bytes": self._bytes,
                    "max_bytes": self.max_bytes}
