"""Live sessions: a cap on their number, and admission against the KV pool.

A session reserves its worst case (`max_kv_tokens`: prompt plus every token it may generate,
within the context) in whole blocks of the KV pool (cloud/blocks.py) when it opens. The
pool's size is the budget, the single answer to "can this session be admitted": the sessions'
reservations never add up to more blocks than the pool has, so once admitted a session can
never run the server out of memory halfway through an answer. The prefix cache reserves
nothing: it lives in the blocks sessions are not using and is evicted when they need them.
Memory is the resource that runs out first on a verification server; the session count is
only a coarse guard.
"""

from __future__ import annotations

import itertools

from cloud.blocks import BlockAllocator
from common.errors import InvalidArgument, ResourceExhausted

_MIB = 1 << 20
# The retry hint of a refusal (RESOURCE_EXHAUSTED's grpc-retry-pushback-ms): about how long an
# answer of a few hundred tokens holds its session on a loaded cloud, so a retry then finds one gone.
RETRY_AFTER_S = 1.0


class SessionRegistry:
    def __init__(self, max_sessions: int, pool: BlockAllocator | None = None):
        self.max_sessions = max_sessions
        self.pool = pool  # None: no memory limit (only the session count)
        self._sessions: dict[int, tuple[object, int]] = {}  # id -> (session, reserved blocks)
        self._ids = itertools.count(1)
        self.opened_total = 0
        self.reserved_blocks = 0

    @property
    def kv_budget_bytes(self) -> int | None:
        return None if self.pool is None else self.pool.capacity * self.pool.block_bytes

    @property
    def kv_reserved_bytes(self) -> int:
        return 0 if self.pool is None else self.reserved_blocks * self.pool.block_bytes

    def add(self, session) -> int:
        """Admits a session (it has `max_kv_tokens`), or raises RESOURCE_EXHAUSTED / INVALID_ARGUMENT."""
        if len(self._sessions) >= self.max_sessions:
            raise ResourceExhausted(
                f"the server is at its limit of {self.max_sessions} concurrent sessions; retry later",
                retry_after_s=RETRY_AFTER_S)
        blocks = self.pool.blocks_for(session.max_kv_tokens) if self.pool is not None else 0
        if self.pool is not None:
            self._check_room(session.max_kv_tokens, blocks)
        session_id = next(self._ids)
        self._sessions[session_id] = (session, blocks)
        self.reserved_blocks += blocks
        self.opened_total += 1
        return session_id

    def _check_room(self, tokens: int, blocks: int) -> None:
        pool = self.pool
        need, budget = blocks * pool.block_bytes / _MIB, self.kv_budget_bytes / _MIB
        if blocks > pool.capacity:
            raise InvalidArgument(
                f"this session may need {need:.1f} MiB of KV cache ({tokens} tokens: prompt + max_new_tokens), "
                f"more than this server's whole budget of {budget:.1f} MiB of KV cache ({pool.capacity} "
                "blocks, --max-kv-mib); ask for fewer max_new_tokens"
            )
        if self.reserved_blocks + blocks > pool.capacity:
            raise ResourceExhausted(
                f"not enough KV-cache memory: this session may need {need:.1f} MiB, and live sessions hold "
                f"{self.kv_reserved_bytes / _MIB:.1f} of the KV budget of {budget:.1f} MiB (--max-kv-mib); "
                "retry later or ask for fewer max_new_tokens", retry_after_s=RETRY_AFTER_S)

    def remove(self, session_id: int) -> None:
        entry = self._sessions.pop(session_id, None)
        if entry is not None:
            self.reserved_blocks -= entry[1]

    def __len__(self) -> int:
        return len(self._sessions)

    def kv_tokens(self) -> int:
        """Tokens held in KV caches by live sessions (approximate while a pass runs)."""
        return sum(s.kv_tokens for s, _ in self._sessions.values())
