"""Offline-first, eventually exact: what the local model wrote while the cloud was away is
verified when it returns, within the same answer.

With `GenerationRequest.verify_offline` (and fallback on), a hybrid answer whose cloud becomes
unreachable goes on with the local model, as the plain fallback does, but its tokens are
*provisional* (Source.PROVISIONAL). The background probe (edge/fallback.py) notices the cloud is
back; the local model then stops between two tokens and a new Speculate session opens after the
*exact* tokens (those the cloud committed), carrying the provisional ones as its first drafts
(SpeculativeRun's `provisional`): blocks of them are verified like any others, pipelined and
batched on the cloud. The accepted prefix becomes exact; from the first position the target
would not have chosen, its own token replaces the provisional one and drafting goes on as usual.

Why the result is exactly the uncut answer: greedy and ids-only sampling make the target's token
at a position a function of the prefix and (sampled) of the seed and the position alone (its
uniforms are keyed by position, common/sampling.py), never of the drafts. The local model samples
its provisional tokens with that same position-keyed noise (edge/draft_sampling.py), so they
agree with the target wherever the two distributions let them, and the verdicts keep exactly the
target's choices. (Sparse-q sampling sends no provisional drafts: its sample depends on where
blocks end, so it has no fixed ids to equal; the answer is still exact in distribution.)

The consumer sees events besides new ids (EdgeEngine.generate): `Verified` when provisional tokens
turned out to be the target's (their source changes, their text does not), `Rewind` when the answer
from a position on is retracted; the ids that follow replace it. `Reconciler` is that bookkeeping,
pure and unit-tested (tests/test_offline.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from common.errors import CloudUnavailable
from common.wire import FinishReason
from edge.provenance import Source

log = logging.getLogger(__name__)


class Offline(str, enum.Enum):
    """What a client is shown while the cloud is away (`tandem serve --offline`, SDK `offline=`)."""

    DEGRADE = "degrade"  # the local model's tokens stay, the answer is marked degraded (no rewind)
    REWIND = "rewind"  # provisional tokens are shown, verified on reconnect; a rewind retracts a tail
    HOLD = "hold"  # provisional tokens are written but held back until verified or the answer ends

    @property
    def verifies(self) -> bool:
        return self is not Offline.DEGRADE


@dataclass(frozen=True)
class Verified:
    """token_ids[start:start + count] were provisional and are the target's own: now `source`."""

    start: int
    count: int
    source: Source


@dataclass(frozen=True)
class Rewind:
    """token_ids[position:] are retracted (`retracted`, the provisional ids that were there);
    the ids that follow replace them."""

    position: int
    retracted: list[int]


Event = Verified | Rewind


class Reconciler:
    """Lines the tokens a resumed session commits up with the provisional ones shown before.

    `start` is the answer's index of the first provisional token; pieces arrive in order from
    there. While they equal the provisional tokens they verify them; the first that differs
    retracts the rest; what comes after the provisional tokens is new.
    """

    def __init__(self, start: int, provisional: list[int]):
        self.start = start
        self.pending = list(provisional)  # provisional ids not yet verified or retracted
        self.verified = 0  # of the provisional ids, confirmed
        self.retracted = 0

    @property
    def position(self) -> int:
        """Index in the answer of the first pending provisional token."""
        return self.start + self.verified

    def take(self, source: Source, ids: list[int]) -> list[Event | tuple[Source, list[int]]]:
        """The events and new pieces that committed `ids` (chosen by `source`) bring."""
        out: list = []
        same = 0
        while same < min(len(ids), len(self.pending)) and ids[same] == self.pending[same]:
            same += 1
        if same:
            out.append(Verified(self.position, same, source))
            self.verified += same
            del self.pending[:same]
            ids = ids[same:]
        if ids and self.pending:
            out.append(self._retract())
        if ids:
            out.append((source, list(ids)))
        return out

    def finish(self) -> list[Event]:
        """The answer ended before reaching every provisional token: the rest is not the target's."""
        return [self._retract()] if self.pending else []

    def _retract(self) -> Rewind:
        rewind = Rewind(self.position, list(self.pending))
        self.retracted += len(self.pending)
        self.pending.clear()
        return rewind


def apply_event(generation, event: Event) -> None:
    """Brings a Generation's ids, sources and counts in line with a verification event."""
    stats = generation.stats
    if isinstance(event, Verified):
        generation.sources[event.start:event.start + event.count] = [event.source] * event.count
        done = event.start + event.count
        generation.provisional_from = done if done < len(generation.token_ids) else None
        # The resumed session counted these tokens again: they are the cloud's now, not new and not local.
        stats.tokens -= event.count
        stats.local_tokens -= event.count
    else:
        del generation.token_ids[event.position:]
        del generation.sources[event.position:]
        generation.provisional_from = None
        generation.rewinds.append(event.position)
        stats.tokens -= len(event.retracted)
        stats.local_tokens -= len(event.retracted)
        stats.rewinds += 1
    if generation.provisional_from is None and Source.LOCAL not in generation.sources:
        generation.degraded, generation.fallback_at = False, None  # every token is the target's again


async def verified_offline(engine, request, generation, drafter) -> AsyncIterator:
    """Hybrid while the cloud answers; provisional local tokens while it is away; verified (and
    where needed rewound) once it is back. Yields pieces (source, ids) and Verified/Rewind events.

    `engine` is the EdgeEngine (its _hybrid, _edge and cloud watch); the generation's token_ids are
    always the exact tokens followed by `pending` provisional ones, as the consumer saw them.
    """
    stats = generation.stats
    exact: list[int] = []  # committed by the cloud, from the answer's start
    pending: list[int] = list(request.check_ids)  # provisional, shown, not yet verified
    reason = await engine._cloud_unusable()
    back_at: float | None = None  # when the cloud was seen back (for stats.verify_s)
    checking = bool(pending)
    if checking:  # an answer finished offline earlier: the cloud must be here to check it
        if reason is not None:
            raise CloudUnavailable(f"cannot verify the answer while the cloud is away: {reason}")
        generation.degraded, generation.fallback_at = True, 0
        stats.mark_tokens(len(pending))
        stats.local_tokens += len(pending)
        yield Source.PROVISIONAL, list(pending)
    while True:
        if reason is None:
            reconciler = Reconciler(len(exact), pending)
            try:
                async with contextlib.aclosing(engine._hybrid(request, generation, drafter, list(exact),
                                                              lambda: reconciler.pending)) as pieces:
                    async for source, ids in pieces:
                        if back_at is not None:
                            stats.verify_s += time.perf_counter() - back_at
                            back_at = None
                        exact += ids
                        for item in reconciler.take(source, ids):
                            yield item
                        if checking and not reconciler.pending and not reconciler.retracted:
                            return  # verified exact: the check needs nothing beyond the answer
                for item in reconciler.finish():
                    yield item
                return
            except CloudUnavailable as exc:
                engine.cloud.mark_down(str(exc))
                if checking:
                    raise
                reason = str(exc)
                if generation.finish_reason:
                    for item in reconciler.finish():
                        yield item
                    return
            finally:
                stats.provisional_accepted += reconciler.verified
                stats.provisional_rewritten += reconciler.retracted
                pending = list(reconciler.pending)
        ended = False
        async with contextlib.aclosing(_provisional(engine, request, generation, drafter, exact + pending,
                                                    reason)) as pieces:
            async for source, ids in pieces:
                pending += ids
                yield source, ids
            ended = bool(generation.finish_reason)
        if ended:
            return  # finished offline: the answer ends provisional (verified later, as a history prefix)
        reason, back_at = None, time.perf_counter()
        stats.reconnects_in_answer += 1
        log.info("cloud is back: verifying %d provisional token(s) from token %d", len(pending), len(exact))


async def _provisional(engine, request, generation, drafter, done: list[int], reason: str) -> AsyncIterator:
    """The local model from `done` on, one token at a time, until the answer ends or the cloud is back."""
    if generation.fallback_at is None:
        generation.fallback_at, generation.fallback_reason = len(done), reason
    generation.degraded = True
    log.warning("writing provisional tokens on the local model from token %d: %s", len(done), reason)
    if len(done) >= request.max_new_tokens:
        generation.finish_reason = FinishReason.LENGTH
        return
    context = len(request.prompt_token_ids) + len(done)
    if context >= drafter.n_ctx:
        raise CloudUnavailable(f"{reason}; the local model cannot take over: the conversation has {context} "
                               f"tokens, beyond its context of {drafter.n_ctx}")
    rest = dataclasses.replace(request, prompt_token_ids=[*request.prompt_token_ids, *done],
                               max_new_tokens=request.max_new_tokens - len(done))
    async with contextlib.aclosing(engine._edge(rest, generation, drafter)) as pieces:
        async for _, ids in pieces:
            generation.stats.provisional += len(ids)
            yield Source.PROVISIONAL, ids
            if engine.cloud.up and not generation.finish_reason:
                return  # the cloud is back: verify what was written, then go on hybrid
