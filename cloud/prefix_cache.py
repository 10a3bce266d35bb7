"""Prefix cache: KV snapshots of token sequences that later sessions are likely to reach.

Sampling N completions of one prompt (`tandem generate --n N`, best-of-N) opens N sessions
with the same prompt, and their first tokens repeat a lot. A snapshot holds the KV cache
after a sequence and the logits at its end; a session that reaches the same sequence
copies the snapshot instead of running the model.

Three operations are served from it, each exactly as the model would have computed it cold
(so hits change no output, bit for bit): the prefill of a whole prompt, a plain decoding step
(a block without drafts), and the start of a prefill up to a chunk boundary (a *boundary*
snapshot, without logits: the prefill runs in chunks that end at fixed positions, so a later
prompt that extends this one's first tokens, such as a chat's next turn, computes only the
chunks after it, exactly as cold). A session stores its prompt, and looks up and
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
    kv: object  # the model's KV cache after the sequence (never mutated once stored)
    logits: np.ndarray | None  # [vocab] the logits at the sequence's last position; None: a boundary
    nbytes: int


class PrefixCache:
    """Least-recently-used snapshots, at most max_bytes of KV and logits in all."""

    def __init__(self, max_bytes: int, kv_bytes_per_token: int):
        self.max_bytes = max_bytes
        self.kv_bytes_per_token = kv_bytes_per_token
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        # Keyed by (tokens, whether the snapshot has logits): boundaries are a key space of their own.
        self._entries: OrderedDict[tuple[tuple[int, ...], bool], Snapshot] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, tokens: Sequence[int]) -> Snapshot | None:
        """The snapshot (with logits) of exactly `tokens`."""
        return self._lookup((tuple(tokens), True))

    def longest_prefix(self, tokens: Sequence[int], chunk: int) -> Snapshot | None:
        """The boundary snapshot of the longest prefix of `tokens` that ends at a multiple of
        `chunk`, short of the last token (whose logits a prefill must compute)."""
        for end in range((len(tokens) - 1) // chunk * chunk, 0, -chunk):
            key = (tuple(tokens[:end]), False)
            if key in self._entries:
                return self._lookup(key)
        return None

    def _lookup(self, key) -> Snapshot | None:
        snapshot = self._entries.get(key)
        if snapshot is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return snapshot

    def would_store(self, tokens: Sequence[int], logits_nbytes: int) -> bool:
        """Whether put() would keep a snapshot of `tokens` (ask before copying a KV cache).

        logits_nbytes 0 asks about a boundary snapshot (no logits).
        """
        nbytes = len(tokens) * self.kv_bytes_per_token + logits_nbytes
        return nbytes <= self.max_bytes and (tuple(tokens), logits_nbytes > 0) not in self._entries

    def put(self, tokens: Sequence[int], kv: object, logits: np.ndarray | None) -> None:
        """Stores a snapshot (logits None: a boundary); `kv` must be a copy nobody mutates afterwards."""
        logits_nbytes = 0 if logits is None else logits.nbytes
        nbytes = len(tokens) * self.kv_bytes_per_token + logits_nbytes
        if not self.would_store(tokens, logits_nbytes):
            return
        while self.bytes + nbytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.bytes -= evicted.nbytes
        if logits is not None:
            logits = np.array(logits, dtype=np.float32)  # our own copy, which nobody may write to
            logits.setflags(write=False)
        self._entries[(tuple(tokens), logits is not None)] = Snapshot(kv, logits, nbytes)
        self.bytes += nbytes
