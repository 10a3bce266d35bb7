"""An asyncio event loop on a daemon thread, for synchronous callers.

The sync SDK, the embedded cloud, the link relay and test servers all run asyncio code behind
a blocking API; this is the one place that starts, feeds and stops such a loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine


class LoopThread:
    def __init__(self, name: str):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> LoopThread:
        self._thread.start()
        return self

    def run(self, coroutine: Coroutine, timeout: float | None = None):
        """Runs the coroutine on the loop and waits for its result (up to `timeout` seconds)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def stop(self, join_timeout: float | None = None) -> None:
        """Stops the loop and closes it once its thread has ended."""
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(join_timeout)
        if not self._thread.is_alive() and not self.loop.is_closed():
            self.loop.close()
