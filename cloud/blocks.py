"""KV-cache memory in fixed-size blocks: a bounded pool, an allocator with reference counts, block tables.

Every sequence the cloud holds (a live session, a prefix-cache snapshot) owns a BlockTable:
the ids of the blocks that hold its tokens' keys and values, in order. Token t of a sequence
lives in slot `table.blocks[t // block_size] * block_size + t % block_size` of the KV pool
(the engine holds the tensors, e.g. cloud/model.py; this module only does the bookkeeping,
so it imports no torch).

The pool has a fixed number of blocks, sized once from the KV budget (as nano-vllm's
`allocate_kv_cache` does): it never grows. Admission (cloud/registry.py) reserves each
session's worst case in blocks of this pool, so an admitted session always finds its blocks.
Blocks that only the prefix cache holds are not reserved: they live in the room that live
sessions are not using right now, and when a session needs a block and none is free the
allocator asks its `reclaim` hook (the prefix cache's `evict_oldest`) to give some back.

Blocks are shared by reference: a snapshot of a prompt and every session started from it
point at the same blocks, and a block is copied only when a sequence writes into one it
shares (copy on write), as in vLLM's block manager. Rolling a session back after a rejected
draft only shortens its table; the freed slots are overwritten by the next tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from common.errors import ResourceExhausted

BLOCK_SIZE = 16
_MIB = 1 << 20


class PoolExhausted(ResourceExhausted):
    """No free block and nothing left to evict: admission let in more than the pool holds (a bug)."""


class BlockAllocator:
    """Hands out the ids of a fixed number of blocks and counts their references."""

    def __init__(self, num_blocks: int, block_size: int = BLOCK_SIZE, block_bytes: int = 0):
        assert num_blocks >= 0 and block_size >= 1
        self.block_size = block_size
        self.capacity = num_blocks  # blocks in the pool, fixed
        self.block_bytes = block_bytes  # what one block costs (for reports)
        # reclaim(): frees at least one block held only by a cache and returns True, or returns
        # False when it holds nothing more (the prefix cache's evict_oldest).
        self.reclaim: Callable[[], bool] | None = None
        self._free: list[int] = list(range(num_blocks - 1, -1, -1))  # popped from the end: 0 first
        self._refs: dict[int, int] = {}

    @property
    def used(self) -> int:
        """Blocks referenced by at least one sequence."""
        return len(self._refs)

    @property
    def free(self) -> int:
        return len(self._free)

    def allocate(self) -> int:
        while not self._free:
            if self.reclaim is None or not self.reclaim():
                raise PoolExhausted(
                    f"the KV pool's {self.capacity} blocks ({self.capacity * self.block_bytes / _MIB:.1f} MiB) "
                    "are all in use"
                )
        block = self._free.pop()
        self._refs[block] = 1
        return block

    def share(self, block: int) -> None:
        self._refs[block] += 1

    def release(self, block: int) -> None:
        refs = self._refs[block] - 1
        if refs:
            self._refs[block] = refs
        else:
            del self._refs[block]
            self._free.append(block)

    def shared(self, block: int) -> bool:
        return self._refs[block] > 1

    def blocks_for(self, tokens: int) -> int:
        """Blocks that `tokens` tokens of one sequence occupy."""
        return -(-tokens // self.block_size)


@dataclass
class BlockTable:
    """One sequence's blocks and how many tokens they hold."""

    allocator: BlockAllocator
    blocks: list[int] = field(default_factory=list)
    length: int = 0

    def fork(self) -> BlockTable:
        """A second table over the same blocks (a snapshot, or a session started from one)."""
        for block in self.blocks:
            self.allocator.share(block)
        return BlockTable(self.allocator, list(self.blocks), self.length)

    def extend(self, count: int) -> list[tuple[int, int]]:
        """Makes room for `count` more tokens; returns (from, to) block copies the caller must make.

        A block this table shares with another sequence is replaced by a private copy before
        anything is written into it (copy on write); the copy's contents are the caller's job,
        since only it holds the tensors. The shared block is let go before its copy is
        allocated, so the copy never needs a block beyond the table's own worst case (the
        other holder keeps it alive; nothing writes to it before the caller's copy is made).
        """
        size = self.allocator.block_size
        copies = []
        if self.length % size and self.allocator.shared(self.blocks[-1]):
            old = self.blocks[-1]
            self.allocator.release(old)
            self.blocks[-1] = self.allocator.allocate()
            if self.blocks[-1] != old:  # the same id only when evicting its last other holder freed it
                copies.append((old, self.blocks[-1]))
        self.length += count
        while len(self.blocks) * size < self.length:
            self.blocks.append(self.allocator.allocate())
        return copies

    def truncate(self, length: int) -> None:
        """Forgets tokens from `length` on (a rejected draft's keys and values)."""
        assert 0 <= length <= self.length, (length, self.length)
        self.length = length
        keep = self.allocator.blocks_for(length)
        for block in self.blocks[keep:]:
            self.allocator.release(block)
        del self.blocks[keep:]

    def release(self) -> None:
        self.truncate(0)

    def slots(self, start: int, end: int) -> np.ndarray:
        """Pool slots of tokens [start, end) ([end - start] int64)."""
        assert 0 <= start <= end <= self.length, (start, end, self.length)
        size = self.allocator.block_size
        positions = np.arange(start, end)
        return np.asarray(self.blocks, dtype=np.int64)[positions // size] * size + positions % size


@dataclass
class KVPool:
    """The KV cache of every sequence: the blocks' bookkeeping, and the engine's storage for them.

    `storage` is whatever the target engine keeps the keys and values in (cloud/model.py:
    PagedKV tensors); only the engine looks inside, when forward_batch is handed it back.
    """

    allocator: BlockAllocator
    storage: Any

    def new_table(self) -> BlockTable:
        return BlockTable(self.allocator)

    @property
    def used_bytes(self) -> int:
        return self.allocator.used * self.allocator.block_bytes

    @property
    def capacity_bytes(self) -> int:
        return self.allocator.capacity * self.allocator.block_bytes


def pool_blocks(budget_bytes: int, kv_bytes_per_token: int, block_size: int = BLOCK_SIZE) -> int:
    """How many whole blocks a KV budget of `budget_bytes` holds."""
    return budget_bytes // max(1, block_size * kv_bytes_per_token)
