"""Offline fallback: when the cloud can't be reached, the local model keeps answering.

A desktop runtime must not turn a dropped network into an error. With fallback on, the
engine gives the cloud at most `timeout_s` to connect, to send its first token and to
answer each draft block; past that (or when the stream breaks) it marks the cloud down and
finishes the answer with the draft model alone, from the tokens the cloud had committed, so
no text is lost or repeated at the switch. The answer is then *degraded*: it is the local
model's text from that point on, not the cloud model's.

`CloudWatch` remembers whether the cloud is usable and, while it is not, probes it in the
background (with capped exponential backoff), so the first answer after the cloud is back
is hybrid again without the caller having to wait for a probe.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from common.errors import TandemError
from common.settings import setting

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FallbackConfig:
    # Off: hybrid answers are the cloud model's or an error, never local.
    enabled: bool = setting(True, "never answer with the local model alone: fail when the cloud is unreachable "
                                  "(output is then always exactly the cloud model's)",
                            flag="--no-fallback", env="FALLBACK")
    # Longest wait for the cloud (connect, first token, each verdict).
    timeout_s: float = setting(2.0, "with fallback: longest wait for the cloud to connect, send its first token "
                                    "or answer a draft block before the local model takes over "
                                    "(default %(default)s)", flag="--fallback-timeout", env="FALLBACK_TIMEOUT",
                               metavar="SECONDS")
    retry_min_s: float = 0.5  # first background reconnect attempt after a failure
    retry_max_s: float = 2.0  # backoff cap between reconnect attempts (one Info call each)


class CloudState(str, enum.Enum):
    UNKNOWN = "unknown"  # not contacted yet
    UP = "up"
    DOWN = "down"  # unreachable; a background task is probing it


class CloudWatch:
    """Whether the cloud is usable now, and the background task that brings it back."""

    def __init__(self, probe: Callable[[], Awaitable[object]], config: FallbackConfig):
        self._probe = probe  # raises a TandemError while the cloud is not usable
        self.config = config
        self.state = CloudState.UNKNOWN
        self.last_error = ""
        self.down_since: float | None = None
        self.reconnects = 0  # times the cloud came back after being down
        self.failed_reconnects = 0  # reconnect attempts that failed since the cloud went down
        self._task: asyncio.Task | None = None

    @property
    def up(self) -> bool:
        return self.state == CloudState.UP

    def mark_up(self) -> None:
        if self.state == CloudState.DOWN:
            self.reconnects += 1
            log.info("cloud is back after %.1fs: answers are hybrid again", time.monotonic() - self.down_since)
        self.state, self.last_error, self.down_since = CloudState.UP, "", None

    def mark_down(self, reason: str) -> None:
        """Records the failure and starts probing in the background (on the running loop)."""
        if self.state != CloudState.DOWN:
            log.warning("%s: answering with the local model until the cloud is back", reason)
            self.down_since = time.monotonic()
            self.failed_reconnects = 0
        self.state, self.last_error = CloudState.DOWN, reason
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._reconnect(), name="tandem-reconnect")

    async def _reconnect(self) -> None:
        delay = self.config.retry_min_s
        while self.state == CloudState.DOWN:
            await asyncio.sleep(delay)
            try:
                await self._probe()
            except TandemError as exc:
                self.failed_reconnects += 1
                self.last_error = str(exc)
                log.debug("cloud still unavailable: %s", exc)
                delay = min(2 * delay, self.config.retry_max_s)
            else:
                self.mark_up()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    def as_dict(self) -> dict:
        return {
            "state": self.state.value,
            "last_error": self.last_error or None,
            "down_for_s": round(time.monotonic() - self.down_since, 3) if self.down_since else None,
            "reconnects": self.reconnects,
            "failed_reconnects": self.failed_reconnects,
        }
