"""What goes into one forward pass: a pure function of the queued work and the token budget.

The scheduler (cloud/scheduler.py) keeps two queues: ready work (verification blocks and
decoding steps, a fixed number of tokens each) and sessions whose prompt is still being
prefilled. Each step it asks plan_pass what to take, then runs it. The rules, after vLLM's
chunked prefill and nano-vllm's per-step token budget:

1. Ready work first, in arrival order (latency matters most there), while it fits in the
   budget; the first piece always goes in, so a block larger than the budget runs alone
   rather than never. Arrival order is kept: a big block is not overtaken by small ones.
2. Then prompt chunks in the room left, in arrival order, each at most what its prompt still
   lacks: a long prompt is prefilled a chunk per step instead of stalling everyone.

So a pass holds at most max_tokens tokens, unless its first ready block alone is larger, and
at least one piece of work whenever any is queued.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class PassPlan:
    ready: int  # how many ready pieces of work, from the front of the queue, go in
    chunks: tuple[int, ...]  # prompt tokens each prefilling session feeds, in queue order (the first len(chunks))
    tokens: int  # tokens in the pass


def plan_pass(ready: Sequence[int], prefilling: Sequence[int], max_tokens: int) -> PassPlan:
    """The next pass: `ready` holds each queued block's token count, `prefilling` each prefilling
    session's prompt tokens still to feed (> 0), both in arrival order."""
    assert max_tokens >= 1 and all(remaining > 0 for remaining in prefilling), (max_tokens, prefilling)
    room, taken = max_tokens, 0
    for size in ready:
        if taken and size > room:
            break
        taken += 1
        room -= size
    chunks = []
    for remaining in prefilling:
        if room <= 0:
            break
        chunks.append(min(remaining, room))
        room -= chunks[-1]
    return PassPlan(taken, tuple(chunks), max_tokens - room)
