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

That stand-in is a *guess*, not a draft: it is not verified, so it does not count toward a
block's drafts. Every block therefore verifies the same positions as in lock-step, and the
cloud picks its bonus tokens at the same positions: a sampled output (whose randomness is
keyed by position) is the same whatever the pipelining depth and the timing.

Never slower than cloud-only (issue 19): when drafting does not pay, the cloud decodes alone in the
same stream while the draft's guesses ride along (edge/cloud_alone.py, the mixin that holds that
half of the session). Sparse-q sampling never switches: its realized sample depends on where blocks end.
Provisional tokens (edge/offline.py) become the tail's first drafts, sent in bounded blocks.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from common.errors import CloudUnavailable, ProtocolError
from common.wire import DecodedToken, FinishReason, Progress, SessionOpen, SessionStarted, Verdict
from edge.client import SpeculateStream
from edge.cloud_alone import CloudAloneMode, Piece
from edge.cloud_decode import DecodeRequests
from edge.draft_engine import ContextFull, DraftEngine, prepare
from edge.draft_length import DraftLengthPolicy
from edge.draft_sampling import DraftPolicy, ServedLogits
from edge.drafting_pays import DraftingSwitch
from edge.decode_hints import HintTail
from edge.draft_tail import DraftTail
from edge.low_priority import at_lowest_priority
from edge.generation_stats import GenerationStats
from edge.provenance import Source
from edge.speculation_config import SpeculationConfig




_KINDS = {SessionStarted: "started", Verdict: "answer", DecodedToken: "answer"}  # what SpeculateStream.read() yields




class SpeculativeRun(CloudAloneMode):
    """One hybrid generation. Iterate `tokens()` for committed token ids as they arrive."""

    def __init__(self, drafter: DraftEngine, stream: SpeculateStream, request: SessionOpen, config: SpeculationConfig,
                 stats: GenerationStats | None = None, response_timeout_s: float | None = None,
                 provisional: list[int] | None = None, hint_limit: int = 0, start_guessing: bool = False,
                 logprobs: dict | None = None, memory: dict | None = None):
        """response_timeout_s bounds each wait for the cloud (None: wait as long as the stream lives).
        provisional: tokens the local model wrote after the resumed ones (edge/offline.py). Once the
        cloud's first token equals the first of them, the rest are the tail's drafts, sent in blocks
        of draft_tokens whether drafting pays or not (they cost nothing to draft). hint_limit: most
        guesses the cloud holds (its Limits.max_hint_tokens; 0: send none). start_guessing: begin with
        the cloud decoding and the draft guessing (a draft of another family) rather than drafting in
        blocks (a draft of the target's own family). logprobs: where the cloud's log-probabilities
        go, by index in the answer (Generation.logprobs). memory: what earlier sessions of the same
        engine measured, shared (see CloudAloneMode._reconsider)."""
        self.drafter = drafter
        self.stream = stream
        self.request = request
        self.config = config
        self.stats = stats or GenerationStats()
        self.response_timeout_s = response_timeout_s
        self.policy = DraftPolicy(request.sampling, request.draft_mode, config.draft_top_k)
        prompt_length = len(request.prompt_token_ids)
        self.logprobs = {} if logprobs is None else logprobs
        adjusted = ServedLogits.needed(request.sampling, request.grammar) and config.mask_draft
        self.served = ServedLogits(request.sampling, request.grammar, drafter, prompt_length) if adjusted else None
        prepare(drafter, request.sampling)
        self.lengths = DraftLengthPolicy(config.draft_tokens, config.min_confidence, config.max_in_flight,
                                         config.adaptive, config.min_draft_tokens,
                                         fixed_lengths=self.policy.sparse)
        self.stop_ids = set(request.stop_token_ids)
        self.finish = FinishReason.NONE
        # The tail, the blocks in flight and which of them are stale (edge/draft_tail.py).
        self.book = DraftTail(list(request.prompt_token_ids) + list(request.resume_token_ids))
        self._responses: asyncio.Queue = asyncio.Queue()  # (arrival time, response or error)
        self._arrived_at = 0.0
        self._draft_disabled = False
        self._draft_ready = False  # the draft has prefilled the prompt (or given up on it)
        self._prefill: asyncio.Task | None = None
        self._first_reply_at: float | None = None  # when the cloud first answered (its acknowledgement)
        self._fed: tuple[int, int] | None = None  # (tail epoch, tail length) last prefed
        self.replica: str | None = None  # the replica serving this session, once it started ("" if unnamed)
        self._passes_before = self.stats.cloud_forward_passes  # earlier sessions of this answer (resumes)
        # Never slower than cloud-only: whether to draft, the cloud's own requests, the shadow.
        self._may_switch = config.adaptive and config.cloud_decode and not self.policy.sparse
        # With guesses (edge/decode_hints.py) the cloud decoding alone is never slower than the cloud
        # alone and gains from every right guess. A draft of another family (which agrees far less
        # often than a quantized sibling) starts there and drafts in blocks once the evidence says
        # blocks pay more; any session that stops drafting decodes this way.
        self.hints = HintTail(len(self.book.committed), hint_limit) \
            if self._may_switch and config.decode_hints and hint_limit > 0 and request.logprobs is None else None
        self.memory = {} if memory is None else memory
        # What the last stretch of drafting in blocks measured (tokens/s), in this session or an earlier one.
        self._last_drafting_rate = self.memory.get("drafting_tokens_per_s", 0.0)
        start_guessing = start_guessing or self.memory.get("drafting_lost", False)
        self.switch = DraftingSwitch(drafting=self.hints is None or not start_guessing or bool(provisional))
        self.decodes = DecodeRequests()
        self.cloud_step_s = 0.0  # the cloud's time per token for this session decoding alone (0: unknown)
        self._shadow: tuple[int, int] | None = None  # (position, the draft's token there), awaiting the cloud's
        self._shadow_task: asyncio.Task | None = None  # the shadow's prediction, or the guesses' drafting
        self._decode_pace: tuple[float, float] | None = None  # cloud decoding: EMAs of (tokens, seconds) per answer
        self._decoded_at: float | None = None
        self._probe_at = 0  # committed length from which a draft guessing poorly guesses again
        self._shadow_fed = 0  # context length of the last shadow prediction
        self._shadow_next_at = 0.0
        self._measured: tuple[float, float] | None = None  # drafting: EMAs of (tokens, seconds) per verdict
        self._measured_since: float | None = None  # when the interval of the next verdict began
        self.provisional = list(provisional or [])
        self._provisional_epoch: int | None = None  # the tail's epoch while it holds provisional drafts
        self._provisional_end = 0  # tail length up to the last provisional draft

    async def tokens(self) -> AsyncIterator[Piece]:
        """Yields (source, ids): a round's accepted drafts, then the cloud's own token."""
        reader = asyncio.create_task(self._read_all())
        try:
            opened_at = time.perf_counter()
            await self._timed(self.stream.open(self.request), "connection")
            if not self.config.defer_draft_prefill:
                # Alongside the cloud's prefill, at the lowest priority: on a one-core edge it must
                # not slow the edge's own handling of the first token (edge/low_priority.py).
                self._prefill = asyncio.create_task(self._prefill_draft(at_lowest_priority))
            started = await self._next_response("started")
            # The acknowledgement (the first reply) times the link; `started` also waited for the prefill.
            self.lengths.observe_link((self._first_reply_at or self._arrived_at) - opened_at)
            self.stats.policy = self.lengths.snapshot()
            self.cloud_step_s = started.decode_step_us / 1e6
            first = self._apply_started(started)
            if first:
                yield Source.CLOUD, first
            if self._prefill is None:
                self._prefill = asyncio.create_task(self._prefill_draft())
            else:
                # It ran alongside the cloud's prefill, so it is mostly done by now: waiting up to a
                # round trip more costs less than a block without drafts. A long prompt can take the
                # draft far longer than the cloud, though; then go on without it.
                await asyncio.wait({self._prefill}, timeout=self.lengths.round_trip_s)  # set by observe_link above
            # Until the draft has the prompt the cloud goes on generating alone (as it does for good
            # when the prompt is beyond the draft's context): CloudDecode requests, or, with an older
            # cloud or sparse q, blocks of only their anchor.
            while not self.finish:
                for piece in await self._step():
                    yield piece
            if self._shadow_task is not None:  # no guess may go out after the half-close
                self._shadow_task.cancel()
                await asyncio.gather(self._shadow_task, return_exceptions=True)
            await self.stream.done_writing()
            while await self._next_response(None) is not None:
                pass  # stale verdicts of blocks still in flight at the finish
        finally:
            reader.cancel()
            if self._shadow_task is not None:
                self._shadow_task.cancel()  # its thread finishes its eval; the drafter's lock orders what follows
            self._end_prefill()
            self.stream.cancel()
            self.stats.bytes_sent += self.stream.bytes_sent
            self.stats.bytes_received += self.stream.bytes_received
            self.stats.policy = self.lengths.snapshot()
            if self.finish and self.hints is not None and self.switch.switches:
                # How this session ended, for the next one: a draft that lost here starts guessing there.
                self.memory["drafting_lost"] = not self.switch.drafting

    def _end_prefill(self) -> None:
        if self._prefill is None:
            return
        if self._prefill.done() and not self._prefill.cancelled():
            self._prefill.exception()  # retrieved: it was raised from _step already, or is moot now
        self._prefill.cancel()  # the draft thread finishes its eval; the drafter's lock orders what follows

    async def _step(self) -> list[Piece]:
        """Applies any verdict that arrived; else drafts a token, sends a block, or waits."""
        if not self._draft_ready and self._prefill.done():
            self._prefill.result()  # raises what the draft's prefill raised
        if not self._responses.empty():
            return self._apply(await self._next_response("answer"))
        if self._can_draft():
            await self._draft_one()
            return []
        if self._should_send():
            await self._send_block()
            return []
        if self._can_request_decode():
            await self._request_decode()
            return []
        if self._can_prefeed():
            await self._prefeed()
            return []
        if self._can_guess():
            self._shadow_task = asyncio.create_task(self._guess_ahead())
        elif self._can_shadow():
            self._shadow_task = asyncio.create_task(self._shadow_one(list(self.book.committed)))
        return self._apply(await self._next_response("answer"))

    def _apply(self, response: Verdict | DecodedToken) -> list[Piece]:
        if isinstance(response, DecodedToken):
            return self._apply_decoded(response)
        return self._apply_verdict(response)

    def _remaining_budget(self) -> int:
        """Tokens still allowed after the tail and the bonus token its last block will bring."""
        generated_if_all_accepted = len(self.book.tail) - len(self.request.prompt_token_ids) + 1
        return self.request.max_new_tokens - generated_if_all_accepted

    def _can_draft(self) -> bool:
        return (
            self._drafting_now()
            and self._draft_ready
            and not self._draft_disabled
            and len(self.book.in_flight) < self.lengths.depth
            and self._remaining_budget() > 0
            and self.book.pending_drafts() < self.lengths.block_tokens
            and not self.book.ends_in(self.stop_ids)
            and not self.lengths.cut_requested
        )

    def _should_send(self) -> bool:
        if len(self.book.in_flight) >= self.lengths.depth or not self._drafting_now():
            return False
        return self.book.pending_drafts() > 0 or not self.book.awaiting_bonus()

    def _can_prefeed(self) -> bool:
        """Whether the draft model could evaluate the tail's last token while a verdict travels."""
        return (
            bool(self.book.in_flight)
            and self._draft_ready
            and not self._draft_disabled
            and self._fed != (self.book.epoch, len(self.book.tail))
            and self._remaining_budget() > 0
            and self.book.tail[-1] not in self.stop_ids
        )

    async def _prefill_draft(self, in_thread=asyncio.to_thread) -> None:
        try:
            # Only sparse q makes the output depend on the draft's numbers; otherwise a prefix
            # shared with the last sequence (a chat's earlier turns) need not be evaluated again.
            await in_thread(self.drafter.start, list(self.request.prompt_token_ids)
                            + list(self.request.resume_token_ids), not self.policy.sparse)
        except ContextFull:
            self._disable_drafting(at=0)
        self._draft_ready = True

    def _disable_drafting(self, at: int | None = None) -> None:
        """The sequence outgrew the draft's context: the cloud generates the rest alone."""
        self._draft_disabled = True
        self.stats.drafting = "off-beyond-draft-context"
        self.stats.drafting_off_at = len(self.book.committed) - len(self.request.prompt_token_ids) if at is None else at

    async def _prefeed(self) -> None:
        """Feeds the tail's last token to the draft model, off the critical path.

        After the verdict, the draft then has one token to evaluate (the cloud's next token)
        instead of two.
        """
        self._fed = (self.book.epoch, len(self.book.tail))
        try:
            await asyncio.to_thread(self.drafter.next_logits, list(self.book.tail))
        except ContextFull:
            self._disable_drafting()

    async def _draft_one(self) -> None:
        epoch, context, guess = self.book.epoch, list(self.book.tail), self.book.next_is_guess()
        began = time.perf_counter()
        try:
            choice = await asyncio.to_thread(self._choose, context, guess)
        except ContextFull:
            self._disable_drafting()
            return
        seconds = time.perf_counter() - began
        if not self.book.append(epoch, choice.token_id, choice.dist):
            return  # a verdict reset the tail while we drafted
        if not guess:
            self.lengths.observe_draft(choice.confidence, seconds)

    def _choose(self, context: list[int], guess: bool):
        logits = self.drafter.next_logits(context)
        if self.served is not None:
            logits = self.served.apply(context, logits)
        return self.policy.choose(logits, len(context), guess)

    async def _send_block(self) -> None:
        most = self.config.draft_tokens if self._verifying_provisional() else None
        block = self.book.cut_block(time.perf_counter(), with_dists=self.policy.sparse, max_drafts=most)
        self.stats.peak_in_flight = max(self.stats.peak_in_flight, len(self.book.in_flight))
        self.lengths.start_block()
        await self._timed(self.stream.send(block), "room to send")

    def _apply_started(self, started: SessionStarted) -> list[int]:
        new = self.book.start(started.position, started.token_id)
        if new and started.logprob is not None:
            self.logprobs[started.position - len(self.request.prompt_token_ids)] = started.logprob
        self.lengths.start_block()
        self.stats.rounds += 1
        self.stats.cloud_forward_passes = self._passes_before + started.forward_passes
        self.replica = started.replica
        self.finish = started.finish_reason
        self.stats.mark_tokens(len(new))
        if self.provisional and new == self.provisional[:1]:
            for token in self.provisional[1:]:  # verified as drafts, block by block
                self.book.append(self.book.epoch, token)
            self._provisional_epoch, self._provisional_end = self.book.epoch, len(self.book.tail)
        return new

    def _verifying_provisional(self) -> bool:
        """Whether provisional drafts are still to be sent (no rejection has reset the tail since)."""
        return self.book.epoch == self._provisional_epoch and self.book.sent_upto < self._provisional_end

    def _apply_verdict(self, verdict: Verdict) -> list[Piece]:
        judged = self.book.judge(verdict)
        self.stats.cloud_forward_passes = max(self.stats.cloud_forward_passes,
                                              self._passes_before + verdict.forward_passes)
        if verdict.decode_step_us:
            self.cloud_step_s = verdict.decode_step_us / 1e6
        self.lengths.observe_cap(verdict.max_drafts)
        if judged.stale:
            self.stats.stale_drafted += judged.stale_drafts
            return []
        drafted, accepted = len(judged.drafts), len(judged.accepted)
        first = len(self.book.committed) - len(judged.committed) - len(self.request.prompt_token_ids)
        for i, logprob in enumerate(verdict.logprobs[: len(judged.committed)]):
            self.logprobs[first + i] = logprob
        round_trip_s = self._arrived_at - judged.sent_at
        self.stats.rounds += 1
        self.stats.drafted += drafted
        self.stats.accepted += accepted
        self.stats.verified_blocks.append((drafted, accepted))
        self.stats.round_trips_s.append(round_trip_s)
        self.stats.mark_tokens(len(judged.committed))
        if not verdict.finish_reason:  # a finish truncates the drafts it judges: no evidence
            self.lengths.observe_verdict(drafted, accepted, round_trip_s)
            self.stats.policy = self.lengths.snapshot()  # live: a chat page shows the round trip
            if drafted and self.switch.drafting:
                self._measure(len(judged.committed))
                self.switch.observed()
                self._reconsider()
        self.finish = verdict.finish_reason
        if judged.reset:
            self.lengths.start_block()
        pieces = ((Source.ACCEPTED, judged.accepted), (Source.CLOUD, judged.chosen))
        return [(source, ids) for source, ids in pieces if ids]

    async def _read_all(self) -> None:
        try:
            while True:
                response = await self.stream.read()
                await self._responses.put((time.perf_counter(), response))
                if response is None:
                    return
        except Exception as exc:  # noqa: BLE001 - surfaced to the consumer, not swallowed
            await self._responses.put((time.perf_counter(), exc))
        except asyncio.CancelledError:
            if asyncio.current_task().cancelling():
                raise  # this answer ended
            # The call was cancelled under the reader: say so, or the answer would wait forever.
            self._responses.put_nowait((time.perf_counter(), CloudUnavailable("the cloud call was cancelled")))

    async def _timed(self, awaitable, what: str):
        """Awaits a step that needs the cloud, within response_timeout_s.

        asyncio.timeout rather than wait_for: on Python 3.11, wait_for can swallow a cancellation
        that lands as the awaited step completes, and a cancelled answer (Ctrl-C in the chat, a
        client gone) would then run on to the end.
        """
        try:
            async with asyncio.timeout(self.response_timeout_s):
                return await awaitable
        except TimeoutError:
            raise CloudUnavailable(f"no {what} from the cloud within {self.response_timeout_s:g}s") from None

    async def _next_response(self, expected: str | None):
        """The next response (None at the end of the stream); sets `_arrived_at` to when it came.

        Progress messages are skipped: each one restarts the silence timeout, so a cloud that
        is prefilling a long prompt or verifying slowly is waited for, a silent one is not.
        """
        while True:
            self._arrived_at, response = await self._timed(self._responses.get(), expected or "end of stream")
            if self._first_reply_at is None:
                self._first_reply_at = self._arrived_at
            if isinstance(response, Exception):
                raise response
            if response is None:
                if expected is None:
                    return None
                raise ProtocolError(f"the cloud ended the stream while a {expected} was expected")
            if not isinstance(response, Progress):
                break
            self.stats.prefill_progress += 1
        kind = _KINDS[type(response)]
        if expected is not None and kind != expected:
            raise ProtocolError(f"expected {expected}, got {kind}")
        return response
