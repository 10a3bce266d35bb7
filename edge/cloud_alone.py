"""The never-slower half of a hybrid session (issue 19): the cloud decoding alone, the draft's
guesses riding along, the shadow, and the switch between drafting and not.

After every verdict the session weighs what drafting commits per second against the cloud
decoding alone (edge/drafting_pays.py, from the measured acceptance, draft time and round trip,
and the cloud's own time per token for this session, Verdict.decode_step_us). When drafting does
not pay, the blocks in flight are let finish and the cloud decodes alone within the same stream
(CloudDecode requests sent ahead, edge/cloud_decode.py). Meanwhile the draft guesses the tokens
that come next and sends them (DecodeHint, edge/decode_hints.py), which the cloud checks within
its own steps without waiting; with an older cloud it only predicts them (a *shadow* acceptance,
nothing on the wire). Drafting resumes once it would pay again. Every token is still the cloud's
own choice at its position, so greedy and ids-only sampled answers do not depend on which mode
produced them. A mixin of edge.speculative.SpeculativeRun, whose state it shares.

Guesses and shadow predictions run at the lowest CPU priority (edge/low_priority.py): nothing
waits for them, while the cloud's tokens, which the client does wait for, are handled on the
same core.
"""

from __future__ import annotations

import time

from common.wire import DecodedToken
from edge.cloud_decode import REQUESTS_IN_FLIGHT, request_tokens
from edge.draft_engine import ContextFull
from edge.draft_length import DRAFT_TIME_PRIOR_S, ROUND_TRIP_PRIOR_S
from edge.drafting_pays import PaysInputs, cloud_tokens_per_s, drafting_tokens_per_s
from edge.low_priority import at_lowest_priority
from edge.provenance import Source

Piece = tuple[Source, list[int]]  # committed token ids, all chosen the same way

# Share of the time the draft may spend predicting the cloud's tokens while the cloud decodes alone:
# the shadow needs evidence, not every token, and must not load a slow edge.
SHADOW_DUTY = 0.5
MEASURED_WEIGHT = 0.25  # of the newest verdict in the measured drafting rate
# Below this acceptance the draft's guesses ahead of the cloud are mostly bytes for nothing: it then
# guesses again only every PROBE_EVERY tokens, to notice when the text gets easier.
MIN_GUESS_ACCEPTANCE = 0.3
PROBE_EVERY = 16


class CloudAloneMode:
    """The cloud decoding alone within a SpeculativeRun, and the switch (see the module docstring)."""

    def _drafting_now(self) -> bool:
        """Whether blocks may be drafted and sent: the switch says draft and no decode request is out
        (provisional drafts are sent in any case: they are written already)."""
        return self._verifying_provisional() or (not self._cloud_alone() and not self.decodes.in_flight)

    def _cloud_alone(self) -> bool:
        """Whether the cloud should decode alone: drafting does not pay, the draft is out of context,
        or it is still prefilling the prompt (a slow edge, a long prompt: the cloud streams meanwhile,
        instead of answering one anchor-only block per round trip)."""
        return self._may_switch and self.cloud_step_s > 0 and (
            not self.switch.drafting or self._draft_disabled or not self._draft_ready)

    def _decode_start(self) -> int:
        return self.decodes.in_flight[-1].end_position if self.decodes.in_flight else len(self.book.committed)

    def _can_request_decode(self) -> bool:
        generated = self._decode_start() - len(self.request.prompt_token_ids)
        return (
            self._cloud_alone()
            and not self._verifying_provisional()
            and not self.book.in_flight  # blocks in flight finish first: their verdicts fix the position
            and len(self.decodes.in_flight) < REQUESTS_IN_FLIGHT
            and generated < self.request.max_new_tokens
            and not self.finish
        )

    async def _request_decode(self) -> None:
        if not self.decodes.in_flight:
            self.book.reset()  # drop drafts never sent: the tail is the committed tokens again
            if self.hints is not None and self.hints.start != len(self.book.committed):
                self.hints.drop(len(self.book.committed))  # guesses from an earlier stretch of cloud decoding
        remaining = self.request.max_new_tokens - (self._decode_start() - len(self.request.prompt_token_ids))
        pace = self._decode_pace[1] / self._decode_pace[0] if self._decode_pace else self.cloud_step_s
        tokens = request_tokens(self.lengths.link_s or 0.0, min(self.cloud_step_s, pace), remaining)
        request = self.decodes.next_request(len(self.book.committed), tokens)
        await self._timed(self.stream.send_decode(request), "room to send")

    def _apply_decoded(self, token: DecodedToken) -> list[Piece]:
        new = self.decodes.answer(token, len(self.book.committed))
        if token.forward_passes:
            self.stats.cloud_forward_passes = max(self.stats.cloud_forward_passes,
                                                  self._passes_before + token.forward_passes)
        if token.decode_step_us:
            self.cloud_step_s = token.decode_step_us / 1e6
        if token.stale:
            return []
        first = len(self.book.committed)
        self.book.committed.extend(new)
        self.book.reset()
        self.stats.rounds += 1
        self.stats.cloud_decoded += len(new)
        self.stats.hinted += len(token.hinted_ids)
        self.stats.mark_tokens(len(new))
        if new and token.logprob is not None:
            self.logprobs[token.position - len(self.request.prompt_token_ids)] = token.logprob
        self.finish = token.finish_reason
        self._pace(len(new))
        if self.hints is not None:
            for right in self.hints.commit(first, new):
                self._judged_guess(right)
        self._judge_shadow()
        if not self.decodes.in_flight and self._drafting_now():
            self.lengths.start_block()  # drafting resumes from here
        return [(Source.CLOUD, new)] if new else []

    def _pace(self, tokens: int) -> None:
        """Adds a decoded answer to the cloud's measured pace (with the draft's guesses)."""
        since, self._decoded_at = self._decoded_at, self._arrived_at
        if since is None or not tokens:
            return
        seconds = max(1e-6, self._arrived_at - since)
        if self._decode_pace is not None:
            w = MEASURED_WEIGHT
            tokens, seconds = (1 - w) * self._decode_pace[0] + w * tokens, (1 - w) * self._decode_pace[1] + w * seconds
        self._decode_pace = (tokens, seconds)

    def _can_guess(self) -> bool:
        return (self._shadow_task is None or self._shadow_task.done()) and self._guessing()

    def _guessing(self) -> bool:
        """Whether the draft should guess ahead of the cloud now (edge/decode_hints.py)."""
        return (
            self.hints is not None
            and self._cloud_alone()
            and bool(self.decodes.in_flight)
            and not self._draft_disabled
            and self._draft_ready
            and not self.hints.full()
            and not self.finish
            and not (self.hints.ids and self.hints.ids[-1] in self.stop_ids)  # nothing comes after a stop
            and (self.lengths.acceptance >= MIN_GUESS_ACCEPTANCE or len(self.book.committed) >= self._probe_at)
        )

    async def _guess_ahead(self) -> None:
        """The draft guesses the tokens after the committed ones and its earlier guesses, sending them
        as it goes (edge/decode_hints.py), until it holds as many as the cloud would, or the mode ends."""
        hints, prompt = self.hints, len(self.request.prompt_token_ids)
        while self._guessing() and hints.context_end() - prompt < self.request.max_new_tokens - 1:
            epoch, context = hints.epoch, [*self.book.committed, *hints.ids]
            began = time.perf_counter()
            try:
                choice = await at_lowest_priority(self._choose, context, False)
            except ContextFull:
                self._disable_drafting()
                return
            if not hints.append(epoch, choice.token_id):
                continue  # the cloud's tokens passed or contradicted the guesses meanwhile
            if len(context) == self._shadow_fed + 1:  # one new token evaluated: a draft step's time
                self.lengths.observe_draft(choice.confidence, time.perf_counter() - began)
            self._shadow_fed = len(context) + 1
            hint = hints.to_send(self.book.committed)
            if hint is not None:
                self.stats.hints_sent += len(hint.token_ids) - 1
                await self._timed(self.stream.send_hint(hint), "room to send")

    def _judged_guess(self, right: bool) -> None:
        """The cloud's token at a guessed position came in: evidence, as a shadow prediction."""
        self.stats.shadow_checked += 1
        self.stats.shadow_agreed += right
        self.lengths.observe_verdict(1, int(right))
        if not right and self.lengths.acceptance < MIN_GUESS_ACCEPTANCE:
            self._probe_at = len(self.book.committed) + PROBE_EVERY
        if not self.switch.drafting:
            self.switch.observed()
            self._reconsider()

    def _can_shadow(self) -> bool:
        return (
            self.hints is None
            and self._cloud_alone()
            and not self._draft_disabled
            and self._draft_ready
            and (self._shadow_task is None or self._shadow_task.done())
            and self._shadow is None
            and time.perf_counter() >= self._shadow_next_at
            and not self.finish
        )

    async def _shadow_one(self, context: list[int]) -> None:
        """The draft predicts the cloud's next token (its shadow acceptance; nothing is sent)."""
        began = time.perf_counter()
        try:
            choice = await at_lowest_priority(self._choose, context, False)
        except ContextFull:
            self._disable_drafting()
            return
        seconds = time.perf_counter() - began
        if len(context) == self._shadow_fed + 1:  # one new token evaluated: a draft step's time
            self.lengths.observe_draft(choice.confidence, seconds)
        self._shadow_fed = len(context)
        self._shadow_next_at = time.perf_counter() + seconds * (1 / SHADOW_DUTY - 1)
        self._shadow = (len(context), choice.token_id)
        self._judge_shadow()

    def _judge_shadow(self) -> None:
        """Scores the shadow prediction once the cloud's token at its position is in."""
        if self._shadow is None or self._shadow[0] >= len(self.book.committed):
            return
        position, predicted = self._shadow
        self._shadow = None
        agreed = self.book.committed[position] == predicted
        self.stats.shadow_checked += 1
        self.stats.shadow_agreed += agreed
        self.lengths.observe_verdict(1, int(agreed))  # as a one-draft block, without a round trip
        if not self.switch.drafting:
            self.switch.observed()
            self._reconsider()

    def _measure(self, committed: int) -> None:
        """Adds a verdict's committed tokens and the time since the last one to the drafting rate."""
        since, self._measured_since = self._measured_since, self._arrived_at
        if since is None:
            # The first verdict of a drafting stretch only starts the clock: before it lie the
            # prefill, the draft catching up and, on a busy cloud, everyone's prompts.
            return
        tokens, seconds = committed, max(1e-6, self._arrived_at - since)
        if self._measured is not None:
            w = MEASURED_WEIGHT
            tokens, seconds = (1 - w) * self._measured[0] + w * tokens, (1 - w) * self._measured[1] + w * seconds
        self._measured = (tokens, seconds)

    def _pays_inputs(self) -> PaysInputs:
        lengths = self.lengths
        round_trip = lengths.round_trip_s or ROUND_TRIP_PRIOR_S
        return PaysInputs(
            acceptance=lengths.acceptance, block_tokens=lengths.block_tokens, depth=lengths.depth,
            draft_s=lengths.draft_time_s or DRAFT_TIME_PRIOR_S, round_trip_s=round_trip,
            verify_s=max(self.cloud_step_s, round_trip - (lengths.link_s or 0.0)), cloud_step_s=self.cloud_step_s,
            measured_tokens_per_s=self._measured[0] / self._measured[1] if self._measured else 0.0,
            cloud_measured_tokens_per_s=self._decode_pace[0] / self._decode_pace[1] if self._decode_pace else 0.0,
            last_drafting_tokens_per_s=self._last_drafting_rate,
        )

    def _reconsider(self) -> None:
        """Asks the switch whether drafting pays now; records the decision and its inputs in stats."""
        if not self._may_switch or self.cloud_step_s <= 0:
            return
        inputs = self._pays_inputs()
        was_drafting = self.switch.drafting
        if self.switch.update(inputs):
            self.stats.mode_switches += 1
            if was_drafting and inputs.measured_tokens_per_s > 0:
                # Kept for later sessions too: a session that starts with the cloud decoding does not
                # try blocks again on the optimistic model alone when blocks measurably lost before.
                self._last_drafting_rate = self.memory["drafting_tokens_per_s"] = inputs.measured_tokens_per_s
            self.lengths.start_block()
            self._measured = self._measured_since = None  # a drafting stretch is measured afresh
        self.stats.pays = {
            "drafting": self.switch.drafting,
            "hybrid_tokens_per_s": round(drafting_tokens_per_s(inputs, was_drafting), 2),
            "measured_tokens_per_s": round(inputs.measured_tokens_per_s, 2),
            "cloud_tokens_per_s": round(cloud_tokens_per_s(inputs), 2),
            "acceptance": round(inputs.acceptance, 4),
            "draft_ms": round(1000 * inputs.draft_s, 2),
            "round_trip_ms": round(1000 * inputs.round_trip_s, 2),
            "verify_ms": round(1000 * inputs.verify_s, 2),
            "cloud_step_ms": round(1000 * inputs.cloud_step_s, 2),
            "block_tokens": inputs.block_tokens,
            "depth": inputs.depth,
            "shadow_needed": self.switch.shadow_needed,
        }

