"""Work that may use the CPU only when nothing more urgent wants it.

The draft's prefill of a prompt runs while the edge waits for the cloud's first token. On an
edge with one core (or one core to spare) it then competes with the edge's own handling of
that token: measured with `tandem bench --ttft-prompt-tokens 100`, overlapping it at normal
priority made hybrid's time to first token ~10% longer than cloud-only's, deferring it made
them equal. At the lowest priority it still uses the idle time of the wait, and the thread
that receives the token preempts it at once.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

LOWEST_PRIORITY = 19  # nice


async def at_lowest_priority(fn: Callable[..., T], *args) -> T:
    """fn(*args) in a thread of its own at the lowest CPU priority (Linux; elsewhere a plain thread).

    A new thread each call, because an unprivileged thread can lower its priority but never
    raise it again, so a pooled thread could not be returned as it was. Cancelling the caller
    does not stop fn (like asyncio.to_thread).
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future = loop.create_future()

    def settle(result=None, error: BaseException | None = None) -> None:
        if not future.done():
            future.set_exception(error) if error is not None else future.set_result(result)

    def run() -> None:
        if sys.platform.startswith("linux"):  # Linux keeps a nice value per thread
            try:
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LOWEST_PRIORITY)
            except OSError:
                pass
        try:
            outcome = (fn(*args), None)
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
            outcome = (None, exc)
        try:
            loop.call_soon_threadsafe(settle, *outcome)
        except RuntimeError:
            pass  # the loop closed meanwhile: nobody awaits this any more (a guess outliving its answer)

    threading.Thread(target=run, name="tandem-background", daemon=True).start()
    return await future
