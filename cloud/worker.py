"""Runs model work off the event loop, one job at a time.

One thread owns the model, so forward passes never overlap (they would only fight over the
same cores) and every session mutation is serialized without locks. This is the seam where
a batching scheduler goes: collect the verifications of many sessions and run them as one
forward pass.
"""

from __future__ import annotations

import asyncio
import functools
from concurrent.futures import Future, ThreadPoolExecutor


class ModelWorker:
    def __init__(self):
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tandem-model")

    async def run(self, fn, *args):
        """Runs fn(*args) on the model thread and awaits its result."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, functools.partial(fn, *args))

    def submit(self, fn, *args) -> Future:
        """Queues fn(*args) behind any job in flight, without waiting (e.g. freeing a session)."""
        return self._pool.submit(fn, *args)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
