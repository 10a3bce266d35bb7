"""The edge runtime: one local draft model, one cloud connection, three ways to generate.

- hybrid: the draft proposes, the cloud verifies (Speculate); output is the cloud model's.
- cloud: the cloud generates alone (Generate); the baseline.
- edge: the local model generates alone; no network.

With fallback on (edge/fallback.py), a hybrid generation whose cloud is unreachable, silent
past the timeout, or lost mid-stream continues on the local model from the committed tokens,
and is marked degraded.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import logging
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from common.errors import CloudUnavailable, FailedPrecondition, InvalidArgument
from common.stop import TokenStopScanner
from common.wire import DraftMode, FinishReason, GenerateRequest, ModelInfo, SamplingParams, SessionOpen
from edge.client import CloudClient
from edge.draft_engine import DraftEngine
from edge.draft_sampling import ContextFull, DraftPolicy
from edge.fallback import CloudState, CloudWatch, FallbackConfig
from edge.speculative import GenerationStats, SpeculationConfig, SpeculativeRun

log = logging.getLogger(__name__)


class Mode(str, enum.Enum):
    HYBRID = "hybrid"
    CLOUD = "cloud"
    EDGE = "edge"


@dataclass(frozen=True)
class GenerationRequest:
    prompt_token_ids: list[int]
    max_new_tokens: int = 128
    sampling: SamplingParams = SamplingParams()
    stop_token_ids: list[int] = field(default_factory=list)
    draft_mode: DraftMode = DraftMode.TOKEN_IDS
    stop_strings: list[str] = field(default_factory=list)
    # Cloud mode only: the cloud tokenizes prompt_text (when prompt_token_ids is empty) and,
    # with return_text, renders the answer (Generation.text): the thin client has no tokenizer.
    prompt_text: str = ""
    return_text: bool = False


@dataclass
class Generation:
    """State of one generation, updated while its token stream is consumed."""

    mode: Mode
    token_ids: list[int] = field(default_factory=list)
    finish_reason: FinishReason = FinishReason.NONE
    stats: GenerationStats = field(default_factory=GenerationStats)
    text: str = ""  # the cloud's rendering of token_ids (GenerationRequest.return_text only)
    seed: int | None = None  # the seed sampling used (picked at random when none was given)
    # Offline fallback: token_ids[fallback_at:] came from the local model alone.
    degraded: bool = False
    fallback_at: int | None = None
    fallback_reason: str = ""

    @property
    def answered_by(self) -> str:
        """"hybrid", "local" (the cloud was down from the start) or "hybrid-then-local"."""
        if not self.degraded:
            return self.mode.value
        return "local" if self.fallback_at == 0 else f"{self.mode.value}-then-local"


class EdgeEngine:
    def __init__(self, drafter: DraftEngine | None, client: CloudClient | None, config: SpeculationConfig | None = None,
                 fallback: FallbackConfig | None = None, draft_slots: int = 1):
        """fallback=None turns fallback off: hybrid answers are the cloud model's or an error.

        drafter=None: cloud mode only (the thin client). draft_slots: hybrid or edge generations
        that may draft at once. Each beyond the first gets its own context over the same model
        file (drafter.sibling(), made on first need), so concurrent answers interleave their
        drafting instead of queueing whole answers.
        """
        self.drafter = drafter
        self.client = client
        self.config = config or SpeculationConfig()
        self.fallback = fallback or FallbackConfig(enabled=False)
        self.cloud_info: ModelInfo | None = None
        self.cloud = CloudWatch(self._probe, self.fallback)
        self._draft_slots = asyncio.Semaphore(max(1, draft_slots))
        self._idle_drafters = [drafter]  # draft contexts no generation holds now
        self._siblings: list = []  # contexts made beyond `drafter` (closed with the engine)

    async def open(self) -> None:
        """Connects to the cloud. With fallback on, an unreachable cloud is not an error: it is
        marked down and reconnected in the background, and answers are local meanwhile."""
        if self.client is None:
            return
        if not self.fallback.enabled:
            await self.connect()
            return
        try:
            await self.connect(self.fallback.timeout_s)
        except CloudUnavailable as exc:
            self.cloud.mark_down(str(exc))

    async def close(self) -> None:
        await self.cloud.close()
        for sibling in self._siblings:
            sibling.close()
        self._siblings.clear()

    @contextlib.asynccontextmanager
    async def _draft_context(self):
        """A draft context of its own for one generation (waits while all slots are taken)."""
        async with self._draft_slots:
            if self._idle_drafters:
                drafter = self._idle_drafters.pop()
            else:
                drafter = await asyncio.to_thread(self.drafter.sibling)
                self._siblings.append(drafter)
            try:
                yield drafter
            finally:
                self._idle_drafters.append(drafter)

    async def _probe(self) -> None:
        await self.connect(self.fallback.timeout_s)

    async def connect(self, timeout_s: float | None = None) -> ModelInfo:
        """Fetches the cloud's model info and refuses a draft with a different tokenizer."""
        if self.client is None:
            raise FailedPrecondition("no cloud address configured")
        info = await self.client.info(timeout_s)
        if self.drafter is not None and info.tokenizer_fingerprint != self.drafter.fingerprint:
            raise FailedPrecondition(
                f"tokenizer mismatch: draft model {self.drafter.name!r} (fingerprint "
                f"{self.drafter.fingerprint}) and cloud model {info.model_name!r} (fingerprint "
                f"{info.tokenizer_fingerprint}) tokenize text differently; pick a draft model of "
                "the target's tokenizer family"
            )
        self.cloud_info = info
        self.cloud.mark_up()
        return info

    def with_seed(self, request: GenerationRequest) -> GenerationRequest:
        """Sampling always carries a seed, so draft and target can share position-keyed noise."""
        s = request.sampling
        if s.greedy or s.seed is not None:
            return request
        return dataclasses.replace(request, sampling=dataclasses.replace(s, seed=secrets.randbits(63)))

    async def generate(self, request: GenerationRequest, mode: Mode, generation: Generation | None = None
                       ) -> AsyncIterator[list[int]]:
        """Yields newly generated token ids; `generation` (if given) collects ids, finish and stats."""
        if not request.prompt_token_ids and not request.prompt_text:
            raise InvalidArgument("the prompt is empty")
        if mode != Mode.CLOUD and (self.drafter is None or not request.prompt_token_ids):
            raise FailedPrecondition(f"{mode.value} mode needs a draft model and a tokenized prompt")
        generation = generation or Generation(mode)
        request = self.with_seed(request)
        generation.seed = None if request.sampling.greedy else request.sampling.seed
        hybrid = self._hybrid_or_local if self.fallback.enabled else self._hybrid
        run = {Mode.HYBRID: hybrid, Mode.CLOUD: self._cloud, Mode.EDGE: self._edge}[mode]
        # aclosing: a consumer that stops early (a stop string, a client gone) closes the whole
        # chain at once, so the cloud stream is cancelled now rather than at garbage collection.
        # Cloud-only generations need no draft model, so any number of them run at once.
        drafting = self._draft_context() if mode != Mode.CLOUD else contextlib.nullcontext()
        async with drafting as drafter, contextlib.aclosing(run(request, generation, drafter)) as tokens:
            async for new in tokens:
                generation.token_ids += new
                yield new

    async def _hybrid_or_local(self, request: GenerationRequest, generation: Generation, drafter
                               ) -> AsyncIterator[list[int]]:
        """Hybrid while the cloud answers in time; the local model alone from the first failure."""
        reason = await self._cloud_unusable()
        if reason is None:
            try:
                async with contextlib.aclosing(self._hybrid(request, generation, drafter)) as tokens:
                    async for new in tokens:
                        yield new
                return
            except CloudUnavailable as exc:
                self.cloud.mark_down(str(exc))
                if generation.finish_reason:
                    return  # every token had arrived; only the end of the stream was lost
                reason = str(exc)
        async with contextlib.aclosing(self._local_continuation(request, generation, reason, drafter)) as tokens:
            async for new in tokens:
                yield new

    async def _cloud_unusable(self) -> str | None:
        """Why the cloud can't be used now (None if it can); contacts it if it never was."""
        if self.cloud.state == CloudState.UNKNOWN:
            try:
                await self.connect(self.fallback.timeout_s)
            except CloudUnavailable as exc:
                self.cloud.mark_down(str(exc))
        return None if self.cloud.up else self.cloud.last_error

    async def _local_continuation(self, request: GenerationRequest, generation: Generation, reason: str, drafter
                                  ) -> AsyncIterator[list[int]]:
        """Continues the answer on the draft model from the tokens committed so far."""
        done = len(generation.token_ids)
        generation.degraded, generation.fallback_at, generation.fallback_reason = True, done, reason
        log.warning("continuing on the local model from token %d: %s", done, reason)
        if done >= request.max_new_tokens:
            generation.finish_reason = FinishReason.LENGTH
            return
        rest = dataclasses.replace(request, prompt_token_ids=[*request.prompt_token_ids, *generation.token_ids],
                                   max_new_tokens=request.max_new_tokens - done)
        async with contextlib.aclosing(self._edge(rest, generation, drafter)) as tokens:
            async for new in tokens:
                yield new

    async def _hybrid(self, request: GenerationRequest, generation: Generation, drafter
                      ) -> AsyncIterator[list[int]]:
        info = self.cloud_info or await self.connect()
        session = SessionOpen(
            prompt_token_ids=list(request.prompt_token_ids),
            max_new_tokens=request.max_new_tokens,
            sampling=request.sampling,
            stop_token_ids=list(request.stop_token_ids),
            tokenizer_fingerprint=self.drafter.fingerprint,
            draft_model_name=self.drafter.name,
            draft_mode=request.draft_mode,
            stop_strings=list(request.stop_strings),
        )
        timeout = self.fallback.timeout_s if self.fallback.enabled else None
        run = SpeculativeRun(drafter, self.client.speculate(), session, self._fit(info), generation.stats,
                             response_timeout_s=timeout)
        run.stop_ids |= set(info.eos_token_ids)
        try:
            async with contextlib.aclosing(run.tokens()) as tokens:
                async for new in tokens:
                    yield new
        finally:
            if run.finish:  # also when the stream broke after the last token (see _hybrid_or_local)
                generation.finish_reason = run.finish

    def _fit(self, info: ModelInfo) -> SpeculationConfig:
        """The speculation config within the cloud's limits.

        A block carries its anchor and, when pipelined, a guessed bonus token besides its drafts.
        """
        config = self.config
        if info.max_draft_tokens > 2 and config.draft_tokens > info.max_draft_tokens - 2:
            most = info.max_draft_tokens - 2
            config = dataclasses.replace(config, draft_tokens=most, min_draft_tokens=min(config.min_draft_tokens, most))
        if info.max_draft_top_k and config.draft_top_k > info.max_draft_top_k:
            config = dataclasses.replace(config, draft_top_k=info.max_draft_top_k)
        return config

    async def _cloud(self, request: GenerationRequest, generation: Generation, drafter=None
                     ) -> AsyncIterator[list[int]]:
        if self.client is None:
            raise FailedPrecondition("cloud mode needs a cloud address")
        stats = generation.stats
        stream = self.client.generate(GenerateRequest(
            prompt_token_ids=list(request.prompt_token_ids),
            sampling=request.sampling,
            max_new_tokens=request.max_new_tokens,
            stop_token_ids=list(request.stop_token_ids),
            stop_strings=list(request.stop_strings),
            prompt_text=request.prompt_text,
            return_text=request.return_text,
        ))
        stats.bytes_sent += stream.bytes_sent
        received_before = stats.bytes_received
        async for step in stream:
            stats.bytes_received = received_before + stream.bytes_received
            new = [step.token_id] if step.token_id is not None else []
            stats.rounds += len(new)
            if step.finish_reason:
                stats.cloud_forward_passes = step.forward_passes
            stats.mark_tokens(len(new))
            generation.finish_reason = step.finish_reason
            generation.text += step.text
            if new:
                yield new

    async def _edge(self, request: GenerationRequest, generation: Generation, drafter
                    ) -> AsyncIterator[list[int]]:
        policy = DraftPolicy(request.sampling)
        stop_ids = set(drafter.eos_token_ids) | set(request.stop_token_ids)
        stop_text = TokenStopScanner(request.stop_strings, drafter.token_bytes) if request.stop_strings else None
        context = list(request.prompt_token_ids)
        for i in range(request.max_new_tokens):
            try:
                step = drafter.start if i == 0 else drafter.next_logits
                logits = await asyncio.to_thread(step, context)
            except ContextFull:
                generation.finish_reason = FinishReason.CONTEXT
                return
            token = policy.choose(logits, len(context)).token_id
            context.append(token)
            generation.stats.local_tokens += 1
            generation.stats.mark_tokens(1)
            yield [token]
            if token in stop_ids or (stop_text and stop_text.push(token)):
                generation.finish_reason = FinishReason.STOP
                return
        generation.finish_reason = FinishReason.LENGTH
