"""Prefix cache: the KV of token sequences that later sessions are likely to start with.

Two kinds of entry, both a block table that shares its blocks with the session that stored it
(cloud/blocks.py), so storing one copies nothing:

- A *snapshot* holds the KV after a sequence and the logits at its end. A session whose
  prompt is exactly that sequence copies it instead of running the model: sampling N
  completions of one prompt (`tandem generate --n N`, best-of-N) opens N sessions with the
  same prompt, and their first steps repeat a lot too. A session stores its prompt, and looks
  up and stores a plain decoding step (a block without drafts) only while it extends a
  sequence it found here, so every session adds at most one snapshot beyond the shared prefix.
  Served only as an exact match; a hit returns the very numbers the storing session computed.
- A *prefix* entry holds KV only, no logits: what a finished session leaves behind, its
  prompt and answer (every token it fed). A chat's next turn sends that history plus a new
  user message; its session forks the entry with the longest common prefix, keeps the common
  part and prefills only the rest (`longest_prefix`). Never served as an exact match.

Reusing a prefix splits the prefill at a different place than a cold run would (the reused
keys and values were computed in other chunks or verification blocks), which changes only the
order of floating-point sums, as the scheduler's budget-sized chunks already do.

Memory: at most max_bytes of KV (counted per token of each entry, as if nothing were shared)
and logits in all; the least recently used entries go first. The entries' blocks live in the
KV pool (cloud/blocks.py) beside the sessions' and count against its fixed size: when a
session needs a block and none is free, the pool evicts entries here, oldest first
(`evict_oldest`, its reclaim hook), so a full cache never makes a pass run out of memory. A sequence that a cached one
already covers (a prefix of it) is not stored again as a prefix entry, and storing a longer
sequence drops the prefix entries it covers.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from cloud.target_engine import Logits


@dataclass(frozen=True)
class Snapshot:
    """A cached sequence's KV; with the logits after it for a snapshot, without for a prefix entry."""

    kv: object  # a BlockTable of the KV of the sequence (never written once stored; released on eviction)
    # The logits at the sequence's last position: [vocab] on the host, or the engine's one-row
    # Logits (cloud.target_engine.kept_first_row); None: a prefix entry.
    logits: np.ndarray | Logits | None
    nbytes: int


class PrefixCache:
    """Least-recently-used snapshots and prefix entries, at most max_bytes of KV and logits in all."""

    def __init__(self, max_bytes: int, kv_bytes_per_token: int):
        self.max_bytes = max_bytes
        self.kv_bytes_per_token = kv_bytes_per_token
        self.bytes = 0
        self.hits = 0  # exact snapshot hits
        self.misses = 0
        self.prefix_hits = 0  # sessions that started from a cached prefix
        self.reused_tokens = 0  # prompt tokens those sessions did not prefill
        self.evictions = 0  # entries the KV pool took back for sessions
        self._entries: OrderedDict[tuple[int, ...], Snapshot] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def snapshots(self) -> int:
        """Entries with logits (the rest are prefix entries)."""
        return sum(entry.logits is not None for entry in self._entries.values())

    def tables(self) -> list[object]:
        """Every entry's KV block table (to check that only the cache holds blocks)."""
        return [entry.kv for entry in self._entries.values()]

    def get(self, tokens: Sequence[int]) -> Snapshot | None:
        """The snapshot of exactly `tokens` (with its logits), if one is cached."""
        key = tuple(tokens)
        snapshot = self._entries.get(key)
        if snapshot is None or snapshot.logits is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return snapshot

    def longest_prefix(self, tokens: Sequence[int]) -> tuple[int, Snapshot] | None:
        """The entry sharing the longest common prefix with `tokens`, and that prefix's length.

        None when no entry shares even the first token. The caller counts what it reuses
        (`reused`), since it may keep less than the whole common prefix.
        """
        best_length, best_key = 0, None
        wanted = np.asarray(tokens, dtype=np.int64)
        for key in self._entries:
            length = _common_prefix_length(wanted, key)
            if length > best_length:
                best_length, best_key = length, key
        if best_key is None:
            return None
        self._entries.move_to_end(best_key)
        return best_length, self._entries[best_key]

    def reused(self, tokens: int) -> None:
        self.prefix_hits += 1
        self.reused_tokens += tokens

    def would_store(self, tokens: Sequence[int], logits_nbytes: int) -> bool:
        """Whether put() would keep `tokens` (ask before forking a KV cache).

        logits_nbytes 0 asks about a prefix entry (no logits).
        """
        key = tuple(tokens)
        if not key or self._nbytes(key, logits_nbytes) > self.max_bytes:
            return False
        if logits_nbytes:
            existing = self._entries.get(key)
            return existing is None or existing.logits is None
        return not self._covers(key)

    def put(self, tokens: Sequence[int], kv: object, logits: np.ndarray | Logits | None = None,
            logits_nbytes: int | None = None) -> None:
        """Stores a snapshot (with logits) or a prefix entry (without), taking over `kv`.

        logits: [vocab] on the host (copied), or an engine's one-row Logits kept as it is
        (cloud.target_engine.kept_first_row), counted as logits_nbytes.
        `kv` is released when the entry is evicted, or at once when it is refused.
        """
        key = tuple(tokens)
        if logits_nbytes is None:
            logits_nbytes = 0 if logits is None else logits.nbytes
        if not self.would_store(key, logits_nbytes):
            kv.release()
            return
        for covered in [k for k, entry in self._entries.items()
                        if entry.logits is None and len(k) <= len(key) and key[: len(k)] == k]:
            self._drop(covered)
        nbytes = self._nbytes(key, logits_nbytes)
        while self.bytes + nbytes > self.max_bytes:
            self._drop(next(iter(self._entries)))
        if isinstance(logits, np.ndarray):
            logits = np.array(logits, dtype=np.float32)  # our own copy, which nobody may write to
            logits.setflags(write=False)
        self._entries[key] = Snapshot(kv, logits, nbytes)
        self.bytes += nbytes

    def attach(self, allocator) -> None:
        """Lets the KV pool (a cloud.blocks.BlockAllocator) evict entries when it runs out of blocks."""
        allocator.reclaim = self.evict_oldest

    def evict_oldest(self) -> bool:
        """Drops the least recently used entry, releasing its blocks; False when there is none."""
        if not self._entries:
            return False
        self._drop(next(iter(self._entries)))
        self.evictions += 1
        return True

    def clear(self) -> None:
        """Releases every entry's blocks."""
        while self._entries:
            self._drop(next(iter(self._entries)))

    def _nbytes(self, key: tuple[int, ...], logits_nbytes: int) -> int:
        return len(key) * self.kv_bytes_per_token + logits_nbytes

    def _covers(self, key: tuple[int, ...]) -> bool:
        """Whether a cached sequence starts with `key` (and so holds its KV already)."""
        return any(len(k) >= len(key) and k[: len(key)] == key for k in self._entries)

    def _drop(self, key: tuple[int, ...]) -> None:
        entry = self._entries.pop(key)
        self.bytes -= entry.nbytes
        entry.kv.release()


def _common_prefix_length(tokens: np.ndarray, key: tuple[int, ...]) -> int:
    """How many leading tokens `tokens` ([n] int64) and `key` have in common."""
    n = min(len(tokens), len(key))
    differ = np.flatnonzero(tokens[:n] != np.asarray(key[:n], dtype=np.int64))
    return int(differ[0]) if differ.size else n
