"""KV-cache memory in fixed-size blocks: an allocator with reference counts, and block tables.

Every sequence the cloud holds (a live session, a prefix-cache snapshot) owns a BlockTable:
the ids of the blocks that hold its tokens' keys and values, in order. Token t of a sequence
lives in slot `table.blocks[t // block_size] * block_size + t % block_size` of the KV pool
(cloud/model.py holds the tensors; this module only does the bookkeeping, so it imports
no torch).

Blocks are shared by reference: a snapshot of a prompt and every session started from it
point at the same blocks, and a block is copied only when a sequence writes into one it
shares (copy on write), as in vLLM's block manager. Rolling a session back after a rejected
draft only shortens its table; the freed slots are overwritten by the next tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

BLOCK_SIZE = 16


class BlockAllocator:
    """Hands out block ids, counts their references, and grows the pool when it runs out."""

    def __init__(self, block_size: int = BLOCK_SIZE, grow=None):
        self.block_size = block_size
        self.capacity = 0  # blocks the pool has room for
        self.grow = grow  # grow(new_capacity_blocks): makes the pool that large, keeping its contents
        self._free: list[int] = []
        self._refs: dict[int, int] = {}

    @property
    def used(self) -> int:
        """Blocks referenced by at least one sequence."""
        return len(self._refs)

    def allocate(self) -> int:
        if not self._free:
            new_capacity = max(2 * self.capacity, 64)
            if self.grow is not None:
                self.grow(new_capacity)
            self._free.extend(range(new_capacity - 1, self.capacity - 1, -1))
            self.capacity = new_capacity
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
        since only it holds the tensors.
        """
        size = self.allocator.block_size
        copies = []
        if self.length % size and self.allocator.shared(self.blocks[-1]):
            old = self.blocks[-1]
            self.blocks[-1] = self.allocator.allocate()
            self.allocator.release(old)
            copies.append((old, self.blocks[-1]))
        self.length += count
        while len(self.blocks) * size < self.length:
            self.blocks.append(self.allocator.allocate())
        return copies

    def truncate(self, length: int) -> None:
        """Forgets tokens from `length` on (a rejected draft's keys and values)."""
        assert 0 <= length <= self.length, (length, self.length)
        self.length = length
        keep = -(-length // self.allocator.block_size)
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
