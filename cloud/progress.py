"""Progress heartbeats: while the model works towards a session's next answer, the edge hears
from the cloud at least every PROGRESS_INTERVAL_S (well below the edge's default fallback
timeout of 2 s), as long as the model thread is moving.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from common.pb.tandem.v1 import tandem_pb2 as pb

PROGRESS_INTERVAL_S = 0.5


def progress_of(session) -> pb.Progress:
    """How far a session's prompt is prefilled (a cloud.session.VerifierSession)."""
    return pb.Progress(prefilled_tokens=session.prefilled, prefill_tokens=session.prefill_length)


async def with_progress(answer: Awaitable, scheduler, session, report: Callable[[pb.Progress], Awaitable]):
    """Awaits `answer` (a first token or a verdict), reporting progress while the model works.

    `report(pb.Progress)` sends a progress message every PROGRESS_INTERVAL_S while the
    scheduler is running forward passes (one in flight, or one finished since the last
    message), however slow each pass: a slow cloud is never silent. Nothing is sent while
    the model thread does not move, so a cloud whose model is stuck falls silent and the
    edge moves on.
    """
    task = asyncio.ensure_future(answer)
    passes = scheduler.forward_passes
    try:
        while not (await asyncio.wait({task}, timeout=PROGRESS_INTERVAL_S))[0]:
            if scheduler.pass_started is not None or scheduler.forward_passes != passes:
                passes = scheduler.forward_passes
                await report(progress_of(session))
        return task.result()
    finally:
        task.cancel()
