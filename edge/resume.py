"""Resuming a broken answer on another replica.

A gRPC proxy (HAProxy, Envoy, nginx) or the channel's own `round_robin` balances per stream,
and a stream stays on one replica for its life: when that replica dies or drains, the stream
breaks and only the client can carry the answer on. The edge holds everything needed: the
prompt, every committed token, the sampling seed. A new session opened with
`resume_token_ids` prefills them on whichever replica the channel picks, and since the
target's choice at a position depends only on the sequence and (when sampling) on the seed
and the position, the rest of the answer is exactly what the first replica would have sent.

`ResumeWindow` decides how long to keep trying: from the first failure without progress, up
to `window_s` (the fallback timeout, so the local model takes over no later than it did
before resuming existed), with short, growing pauses between attempts.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from common.errors import CloudUnavailable
from edge.client import NoConnection


@dataclass
class ResumeWindow:
    window_s: float  # give up once no attempt succeeded for this long after a break
    first_delay_s: float = 0.05  # pause before the first reopen (a dead replica is often noticed at once)
    max_delay_s: float = 0.5
    # The clock and the pause (injected by tests, which then need no real time).
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)
    sleep: Callable[[float], Awaitable] = field(default=asyncio.sleep, repr=False)
    _deadline: float | None = field(default=None, repr=False)
    _delay: float = field(default=0.0, repr=False)

    def remaining_s(self) -> float | None:
        """Time left to find a replica (None before any break: the connect timeout applies)."""
        if self._deadline is None:
            return None
        return max(0.01, self._deadline - self.clock())

    def progressed(self) -> None:
        """A replica answered: the next break gets a whole window again."""
        self._deadline = None

    async def pause_or_raise(self, error: CloudUnavailable, tokens: int) -> None:
        """Waits before the next attempt, or raises when the window has run out.

        `tokens` were committed before the break. A channel that found no replica at all within
        its connect timeout has already waited long enough: no further attempt.
        """
        now = self.clock()
        if self._deadline is None:
            self._deadline, self._delay = now + self.window_s, self.first_delay_s
        if isinstance(error, NoConnection) or now + self._delay > self._deadline:
            if tokens:
                raise CloudUnavailable(f"cloud unavailable: the answer broke after {tokens} token(s) and no "
                                       f"replica took it over ({error})") from error
            raise error
        await self.sleep(self._delay)
        self._delay = min(2 * self._delay, self.max_delay_s)
