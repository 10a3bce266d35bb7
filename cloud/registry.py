"""Live sessions: a cap on their number, and a budget for the KV memory they may hold.

A session reserves its worst case (`max_kv_tokens`: prompt plus every token it may generate,
within the context, rounded up to whole KV blocks of cloud/blocks.py) when it opens, so once admitted it can never run the server out of
memory halfway through an answer. Memory is the resource that runs out first on a
verification server; the session count is only a coarse guard.
"""

from __future__ import annotations

import itertools

from common.errors import InvalidArgument, ResourceExhausted

_MIB = 1 << 20


class SessionRegistry:
    def __init__(self, max_sessions: int, kv_budget_bytes: int | None = None, kv_bytes_per_token: int = 0,
                 block_tokens: int = 1):
        self.max_sessions = max_sessions
        self.block_tokens = block_tokens  # KV memory comes in blocks of this many tokens
        self.kv_budget_bytes = kv_budget_bytes  # None: unlimited
        self.kv_bytes_per_token = kv_bytes_per_token
        self._sessions: dict[int, tuple[object, int]] = {}  # id -> (session, reserved bytes)
        self._ids = itertools.count(1)
        self.opened_total = 0
        self.kv_reserved_bytes = 0

    def add(self, session) -> int:
        """Admits a session (it has `max_kv_tokens`), or raises RESOURCE_EXHAUSTED / INVALID_ARGUMENT."""
        if len(self._sessions) >= self.max_sessions:
            raise ResourceExhausted(
                f"the server is at its limit of {self.max_sessions} concurrent sessions; retry later"
            )
        blocks = -(-session.max_kv_tokens // self.block_tokens)
        need = blocks * self.block_tokens * self.kv_bytes_per_token
        budget = self.kv_budget_bytes
        if budget is not None and need > budget:
            raise InvalidArgument(
                f"this session may need {need / _MIB:.1f} MiB of KV cache ({session.max_kv_tokens} tokens: prompt "
                f"+ max_new_tokens), more than this server's whole budget of {budget / _MIB:.1f} MiB; "
                "ask for fewer max_new_tokens"
            )
        if budget is not None and self.kv_reserved_bytes + need > budget:
            raise ResourceExhausted(
                f"not enough KV-cache memory: this session may need {need / _MIB:.1f} MiB, and live sessions "
                f"hold {self.kv_reserved_bytes / _MIB:.1f} of {budget / _MIB:.1f} MiB; retry later or ask for "
                "fewer max_new_tokens"
            )
        session_id = next(self._ids)
        self._sessions[session_id] = (session, need)
        self.kv_reserved_bytes += need
        self.opened_total += 1
        return session_id

    def remove(self, session_id: int) -> None:
        entry = self._sessions.pop(session_id, None)
        if entry is not None:
            self.kv_reserved_bytes -= entry[1]

    def __len__(self) -> int:
        return len(self._sessions)

    def kv_tokens(self) -> int:
        """Tokens held in KV caches by live sessions (approximate while a pass runs)."""
        return sum(s.kv_tokens for s, _ in self._sessions.values())
