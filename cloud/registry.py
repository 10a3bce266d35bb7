"""Live sessions: a cap on their number, and an account of the KV memory they hold."""

from __future__ import annotations

import itertools

from common.errors import ResourceExhausted


class SessionRegistry:
    def __init__(self, max_sessions: int):
        self.max_sessions = max_sessions
        self._sessions: dict[int, object] = {}
        self._ids = itertools.count(1)
        self.opened_total = 0

    def add(self, session) -> int:
        if len(self._sessions) >= self.max_sessions:
            raise ResourceExhausted(
                f"the server is at its limit of {self.max_sessions} concurrent sessions; retry later"
            )
        session_id = next(self._ids)
        self._sessions[session_id] = session
        self.opened_total += 1
        return session_id

    def remove(self, session_id: int) -> None:
        self._sessions.pop(session_id, None)

    def __len__(self) -> int:
        return len(self._sessions)

    def kv_tokens(self) -> int:
        """Tokens held in KV caches by live sessions (approximate while a pass runs)."""
        return sum(s.kv_tokens for s in self._sessions.values())
