"""edge/low_priority.py: work at the lowest CPU priority, without touching the caller's."""

from __future__ import annotations

import asyncio
import os
import sys
import threading

import pytest

from edge.low_priority import LOWEST_PRIORITY, at_lowest_priority


def own_priority() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def test_returns_the_result_and_raises_the_error():
    def fails():
        raise ValueError("from the thread")

    async def both():
        result = await at_lowest_priority(sum, [1, 2, 3])
        with pytest.raises(ValueError, match="from the thread"):
            await at_lowest_priority(fails)
        return result

    assert asyncio.run(both()) == 6


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread priority is a Linux feature")
def test_runs_at_the_lowest_priority_and_leaves_the_caller_s_alone():
    async def priorities():
        before = own_priority()
        inside = await at_lowest_priority(own_priority)
        return before, inside, own_priority()

    before, inside, after = asyncio.run(priorities())
    assert inside == LOWEST_PRIORITY and after == before < LOWEST_PRIORITY
