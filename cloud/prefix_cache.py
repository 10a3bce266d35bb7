"""Prefix cache: KV snapshots of token sequences that later sessions are likely to reach.

Sampling N completions of one prompt (`tandem generate --n N`, best-of-N) opens N sessions
with the same prompt, and their first tokens repeat a lot. A snapshot holds the KV cache
after a sequence and the logits at its end; a session that reaches the same sequence
copies the snapshot instead of running the model.

Only two operations are served from it, each exactly as the model would have computed it
cold (so hits change no output, bit for bit). A snapshot's KV is a block table that shares
its blocks with the session that stored it (cloud/blocks.py), so storing one copies nothing: the prefill of a whole prompt, and a plain
decoding step (a block without drafts). A session stores its prompt, and looks up and
stores a step only while it extends a sequence it found here: every session adds at most
one level beyond the shared prefix, so a long generation neither fills the cache with
snapshots of itself nor pays a lookup per token.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Snapshot:
    kv: object  # a BlockTable of the KV after the sequence (never written once stored; released on eviction)
    logits: np.ndarray  # [vocab] the logits at the sequence's last position
    nbytes: int


class PrefixCache:
    """Least-recently-used snapshots, at most max_bytes of KV and logits in all."""

    def __init__(self, max_bytes: int, kv_bytes_per_token: int):
        self.max_bytes = max_bytes
        self.kv_bytes_per_token = kv_bytes_per_token
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[tuple[int, ...], Snapshot] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, tokens: Sequence[int]) -> Snapshot | None:
        snapshot = self._entries.get(tuple(tokens))
        if snapshot is None:
            self.misses += 1
            return None
        self._entries.move_to_end(tuple(tokens))
        self.hits += 1
        return snapshot

    def would_store(self, tokens: Sequence[int], logits_nbytes: int) -> bool:
        """Whether put() would keep a snapshot of `tokens` (ask before copying a KV cache)."""
        nbytes = len(tokens) * self.kv_bytes_per_token + logits_nbytes
        return nbytes <= self.max_bytes and tuple(tokens) not in self._entries

    def put(self, tokens: Sequence[int], kv: object, logits: np.ndarray) -> None:
        """Stores a snapshot, taking over `kv` (released when evicted or refused)."""
        key = tuple(tokens)
        nbytes = len(key) * self.kv_bytes_per_token + logits.nbytes
        if not self.would_store(key, logits.nbytes):
            kv.release()
            return
        while self.bytes + nbytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.bytes -= evicted.nbytes
            evicted.kv.release()
        logits = np.array(logits, dtype=np.float32)  # our own copy, which nobody may write to
        logits.setflags(write=False)
        self._entries[key] = Snapshot(kv, logits, nbytes)
        self.bytes += nbytes
