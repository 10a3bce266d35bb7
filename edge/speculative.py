"""The edge's draft-verify loop over one Speculate stream.

The edge keeps a speculative `tail`: the committed tokens followed by every drafted token
it has not yet heard back about. Blocks are cut from the tail and sent; each block starts
with an *anchor*, the token before its first draft, so the cloud can tell whether the block
still continues its committed sequence. Several blocks may be in flight (how many, and how
long each is, edge/draft_length.py decides from measured acceptance, draft speed and round
trip): while a verdict travels, the draft keeps extending the tail as if everything were
accepted (its own next token standing in for the cloud's bonus token). A verdict that disagrees with the
tail resets it to the committed tokens; the blocks still in flight are then known to be
stale on both sides, without an extra round trip.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field

import grpc

from common.errors import TandemError
from common.pb.tandem.v1 import tandem_pb2 as pb
from common.types import DraftBlock, FinishReason, SessionOpen, SessionStarted, Verdict
from edge.client import CountedStream, error_from_rpc
from edge.drafter import ContextFull
from edge.draft_length import DraftLengthPolicy
from edge.drafting import DraftPolicy


class ProtocolError(TandemError):
    """The cloud answered something the protocol does not allow."""


@dataclass
class SpeculationConfig:
    draft_tokens: int = 32  # most drafts per block (the adaptive policy picks fewer when that pays)
    max_in_flight: int = 4  # most blocks awaiting a verdict at once; 1 = lock-step
    draft_top_k: int = 8  # sparse-q mode: candidates sent per drafted token
    min_confidence: float = 0.1  # cut a block after a draft the draft model is less sure of
    adaptive: bool = True  # block length and depth from measurements (edge/draft_length.py)
    min_draft_tokens: int = 1  # adaptive block length stays at or above this


@dataclass
class GenerationStats:
    rounds: int = 0  # cloud verification rounds, the prefill round included
    drafted: int = 0  # draft tokens the cloud verified
    accepted: int = 0  # of those, accepted
    stale_drafted: int = 0  # draft tokens sent in blocks that turned out stale (pipelining)
    cloud_forward_passes: int = 0  # as counted by the cloud
    bytes_sent: int = 0  # serialized gRPC message bytes, edge -> cloud
    bytes_received: int = 0  # serialized gRPC message bytes, cloud -> edge
    tokens: int = 0  # tokens generated
    ttft_s: float = 0.0  # request start to first token
    elapsed_s: float = 0.0  # request start to last token
    peak_in_flight: int = 0  # most blocks that awaited a verdict at once
    policy: dict = field(default_factory=dict)  # the draft-length policy's final estimates
    verified_blocks: list[tuple[int, int]] = field(default_factory=list, repr=False)  # (drafted, accepted)
    started_at: float = field(default_factory=time.perf_counter, repr=False)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def mark_tokens(self, count: int) -> None:
        now = time.perf_counter() - self.started_at
        if self.tokens == 0 and count:
            self.ttft_s = now
        self.tokens += count
        self.elapsed_s = now

    def as_dict(self) -> dict:
        d = asdict(self)
        d.pop("started_at")
        d.pop("verified_blocks")
        d["tokens_per_s"] = round(self.tokens_per_s, 3)
        d["tokens_per_round"] = round(self.tokens / self.rounds, 3) if self.rounds else 0.0
        for key in ("ttft_s", "elapsed_s"):
            d[key] = round(d[key], 4)
        return d


@dataclass
class _InFlight:
    block: DraftBlock
    sent_at: float  # perf_counter() when written to the stream
    doomed: bool = False  # known stale: sent before a rejection that invalidates it


class SpeculativeRun:
    """One hybrid generation. Iterate `tokens()` for committed token ids as they arrive."""

    def __init__(self, drafter, stream: CountedStream, request: SessionOpen, config: SpeculationConfig,
                 stats: GenerationStats | None = None):
        self.drafter = drafter
        self.stream = stream
        self.request = request
        self.config = config
        self.stats = stats or GenerationStats()
        self.policy = DraftPolicy(request.sampling, request.draft_mode, config.draft_top_k)
        self.lengths = DraftLengthPolicy(config.draft_tokens, config.min_confidence, config.max_in_flight,
                                         config.adaptive, config.min_draft_tokens)
        self.stop_ids = set(request.stop_token_ids)
        self.finish = FinishReason.NONE
        self.committed = list(request.prompt_token_ids) + list(request.resume_token_ids)
        self.tail: list[int] = []
        self.sent_upto = 0  # tail[:sent_upto] is known to the cloud or in flight
        self.in_flight: deque[_InFlight] = deque()
        self._tail_epoch = 0  # bumped on every reset, to drop drafts made for an old tail
        self._dists: list = []  # sparse-q distributions of tail[sent_upto:]
        self._responses: asyncio.Queue = asyncio.Queue()  # (arrival time, response or error)
        self._arrived_at = 0.0
        self._draft_disabled = False

    @property
    def generated(self) -> list[int]:
        start = len(self.request.prompt_token_ids)
        return self.committed[start:]

    async def tokens(self) -> AsyncIterator[list[int]]:
        reader = asyncio.create_task(self._read_all())
        try:
            opened_at = time.perf_counter()
            await self.stream.write(pb.SpeculateRequest(open=self.request.to_pb()))
            prefill = asyncio.create_task(self._prefill_draft())
            started = await self._next_response("started")
            self.lengths.observe_round_trip(self._arrived_at - opened_at)
            first = self._apply_started(SessionStarted.from_pb(started.started))
            if first:
                yield first
            await prefill
            while not self.finish:
                new = await self._step()
                if new:
                    yield new
            await self.stream.done_writing()
            while await self._next_response(None) is not None:
                pass  # stale verdicts of blocks still in flight at the finish
        finally:
            reader.cancel()
            self.stream.cancel()
            self.stats.bytes_sent = self.stream.bytes_sent
            self.stats.bytes_received = self.stream.bytes_received
            self.stats.policy = self.lengths.snapshot()

    async def _step(self) -> list[int]:
        """Applies any verdict that arrived; else drafts a token, sends a block, or waits."""
        if not self._responses.empty():
            return self._apply_verdict(await self._next_response("verdict"))
        if self._can_draft():
            await self._draft_one()
            return []
        if self._should_send():
            await self._send_block()
            return []
        return self._apply_verdict(await self._next_response("verdict"))

    def _remaining_budget(self) -> int:
        """Tokens still allowed after the tail and the bonus token its last block will bring."""
        generated_if_all_accepted = len(self.tail) - len(self.request.prompt_token_ids) + 1
        return self.request.max_new_tokens - generated_if_all_accepted

    def _pending_drafts(self) -> int:
        return len(self.tail) - self.sent_upto

    def _can_draft(self) -> bool:
        return (
            not self._draft_disabled
            and len(self.in_flight) < self.lengths.depth
            and self._remaining_budget() > 0
            and self._pending_drafts() < self.lengths.block_tokens
            and not (self._pending_drafts() and self.tail[-1] in self.stop_ids)
            and not self.lengths.cut_requested
        )

    def _should_send(self) -> bool:
        if len(self.in_flight) >= self.lengths.depth:
            return False
        return self._pending_drafts() > 0 or not self.in_flight

    async def _prefill_draft(self) -> None:
        try:
            await asyncio.to_thread(self.drafter.next_logits, self.committed)
        except ContextFull:
            self._draft_disabled = True

    async def _draft_one(self) -> None:
        epoch, context = self._tail_epoch, list(self.tail)
        began = time.perf_counter()
        try:
            choice = await asyncio.to_thread(self._choose, context)
        except ContextFull:
            self._draft_disabled = True
            return
        seconds = time.perf_counter() - began
        if epoch != self._tail_epoch:
            return  # a verdict reset the tail while we drafted
        self.tail.append(choice.token_id)
        self._dists.append(choice.dist)
        self.lengths.observe_draft(choice.confidence, seconds)

    def _choose(self, context: list[int]):
        return self.policy.choose(self.drafter.next_logits(context), len(context))

    async def _send_block(self) -> None:
        start = self.sent_upto - 1  # the anchor: the last token the cloud knows or will know
        block = DraftBlock(
            start_position=start,
            token_ids=self.tail[start:],
            draft_dists=list(self._dists) if self.policy.sparse else [],
        )
        self._dists = []
        self.sent_upto = len(self.tail)
        self.in_flight.append(_InFlight(block, time.perf_counter()))
        self.stats.peak_in_flight = max(self.stats.peak_in_flight, len(self.in_flight))
        self.lengths.start_block()
        await self.stream.write(pb.SpeculateRequest(draft=block.to_pb()))

    def _apply_started(self, started: SessionStarted) -> list[int]:
        if started.position != len(self.committed):
            raise ProtocolError(f"cloud started at position {started.position}, expected {len(self.committed)}")
        self.stats.rounds += 1
        self.stats.cloud_forward_passes = started.forward_passes
        new = [started.token_id] if started.token_id is not None else []
        self.committed += new
        self.finish = started.finish_reason
        self._reset_tail()
        self.stats.mark_tokens(len(new))
        return new

    def _apply_verdict(self, response: pb.SpeculateResponse) -> list[int]:
        verdict = Verdict.from_pb(response.verdict)
        if not self.in_flight:
            raise ProtocolError("a verdict arrived for no block in flight")
        sent = self.in_flight.popleft()
        block = sent.block
        if verdict.start_position != block.start_position or verdict.stale != sent.doomed:
            raise ProtocolError(
                f"verdict for position {verdict.start_position} (stale={verdict.stale}) does not match the "
                f"block in flight at {block.start_position} (stale expected: {sent.doomed})"
            )
        self.stats.cloud_forward_passes = max(self.stats.cloud_forward_passes, verdict.forward_passes)
        if verdict.stale:
            self.stats.stale_drafted += len(block.token_ids) - 1
            return []
        overlap = len(self.committed) - block.start_position
        drafts = block.token_ids[overlap:]
        if verdict.accepted_count > len(drafts):
            raise ProtocolError(f"cloud accepted {verdict.accepted_count} of {len(drafts)} drafts")
        new = drafts[: verdict.accepted_count]
        if verdict.next_token is not None:
            new.append(verdict.next_token)
        self.committed += new
        self.stats.rounds += 1
        self.stats.drafted += len(drafts)
        self.stats.accepted += verdict.accepted_count
        self.stats.verified_blocks.append((len(drafts), verdict.accepted_count))
        self.stats.mark_tokens(len(new))
        if not verdict.finish_reason:  # a finish truncates the drafts it judges: no evidence
            self.lengths.observe_verdict(len(drafts), verdict.accepted_count, self._arrived_at - sent.sent_at)
        self.finish = verdict.finish_reason
        if self.tail[: len(self.committed)] != self.committed:
            for later in self.in_flight:
                later.doomed = True
            self._reset_tail()
        return new

    def _reset_tail(self) -> None:
        self.tail = list(self.committed)
        self.sent_upto = len(self.tail)
        self._dists = []
        self._tail_epoch += 1
        self.lengths.start_block()

    async def _read_all(self) -> None:
        try:
            while True:
                response = await self.stream.read()
                await self._responses.put((time.perf_counter(), response))
                if response is None:
                    return
        except grpc.aio.AioRpcError as exc:
            await self._responses.put((time.perf_counter(), error_from_rpc(exc)))
        except Exception as exc:  # noqa: BLE001 - surfaced to the consumer, not swallowed
            await self._responses.put((time.perf_counter(), exc))

    async def _next_response(self, expected: str | None):
        """The next response (None at the end of the stream); sets `_arrived_at` to when it came."""
        self._arrived_at, response = await self._responses.get()
        if isinstance(response, Exception):
            raise response
        if response is None:
            if expected is None:
                return None
            raise ProtocolError(f"the cloud ended the stream while a {expected} was expected")
        kind = response.WhichOneof("kind")
        if expected is not None and kind != expected:
            raise ProtocolError(f"expected {expected}, got {kind}")
        return response

