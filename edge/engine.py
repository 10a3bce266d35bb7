"""The edge runtime: one local draft model, one cloud connection, three ways to generate.

- hybrid: the draft proposes, the cloud verifies (Speculate); output is the cloud model's.
- cloud: the cloud generates alone (Generate); the baseline.
- edge: the local model generates alone; no network.

A stream that breaks mid-answer (a replica died or drains) is reopened on the channel, through
the load balancer or on another address, from the committed tokens (edge/resume.py): the answer
stays exactly the cloud model's. With fallback on (edge/fallback.py), a hybrid generation whose
cloud stays unreachable past the timeout continues on the local model from the committed
tokens, and is marked degraded; with `verify_offline` those tokens are provisional instead, and
verified (or rewound) when the cloud is back within the answer (edge/offline.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import functools
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from common.errors import CloudUnavailable, ContextTooLong, FailedPrecondition, InvalidArgument
from common.special_tokens import SpecialTokens
from common.stop import TokenStopScanner
from common.text_tokenizer import TextTokenizer
from common.wire import DraftMode, FinishReason, GenerateRequest, ModelInfo, SamplingParams, TokenLogprob
from edge.client import CloudClient
from edge.draft_engine import ContextFull, DraftEngine, prepare
from edge.draft_sampling import DraftPolicy, ServedLogits
from edge.fallback import CloudState, CloudWatch, FallbackConfig
from edge.kept_answers import keep_answer
from edge.offline import Rewind, Verified, apply_event, verified_offline
from edge.provenance import Source
from edge.resume import ResumeWindow
from edge.generation_stats import GenerationStats
from edge.speculation_config import SpeculationConfig
from edge.speculative import Piece, SpeculativeRun

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
    # With fallback: local tokens written while the cloud is away are provisional, verified when it
    # returns (the consumer takes Rewind events); check_ids: an earlier answer to check (edge/offline.py).
    verify_offline: bool = False
    check_ids: list[int] = field(default_factory=list)
    grammar: str = ""  # structured output: an llguidance grammar (common/grammar.py); "" for none
    logprobs: int | None = None  # None: none; N: each token's log-probability and the N most likely

    def to_wire(self, resume_token_ids: list[int]) -> GenerateRequest:
        """The request as the cloud takes it, resuming after `resume_token_ids` (see
        GenerateRequest.session_open for a Speculate session)."""
        return GenerateRequest(
            prompt_token_ids=list(self.prompt_token_ids),
            sampling=self.sampling,
            max_new_tokens=self.max_new_tokens,
            stop_token_ids=list(self.stop_token_ids),
            stop_strings=list(self.stop_strings),
            prompt_text=self.prompt_text,
            return_text=self.return_text,
            resume_token_ids=list(resume_token_ids),
            grammar=self.grammar,
            logprobs=self.logprobs,
        )


@dataclass
class Generation:
    """State of one generation, updated while its token stream is consumed."""

    mode: Mode
    token_ids: list[int] = field(default_factory=list)
    sources: list[Source] = field(default_factory=list)  # who chose each of token_ids
    # When the request asked for them: token_ids[i]'s log-probabilities, by i (the cloud's from its
    # verification pass; a local model's own for tokens it chose alone).
    logprobs: dict[int, TokenLogprob] = field(default_factory=dict)
    finish_reason: FinishReason = FinishReason.NONE
    stats: GenerationStats = field(default_factory=GenerationStats)
    text: str = ""  # the cloud's rendering of token_ids (GenerationRequest.return_text only)
    seed: int | None = None  # the seed sampling used (picked at random when none was given)
    # Offline fallback: token_ids[fallback_at:] came from the local model alone.
    degraded: bool = False
    fallback_at: int | None = None
    fallback_reason: str = ""
    # Which replica served which part: (index in token_ids where its part starts, replica name).
    served_by: list[tuple[int, str]] = field(default_factory=list)
    # verify_offline: token_ids[provisional_from:] are provisional (None: every token is verified);
    # rewinds lists the positions the answer was rewound to.
    provisional_from: int | None = None
    rewinds: list[int] = field(default_factory=list)

    def served(self, replica: str | None, from_token: int) -> None:
        if replica is not None and (not self.served_by or self.served_by[-1][1] != replica):
            self.served_by.append((from_token, replica))

    @property
    def replica(self) -> str | None:
        """The replica serving the answer now (None before the cloud answered, or when it gave no name)."""
        return self.served_by[-1][1] or None if self.served_by else None

    @property
    def answered_by(self) -> str:
        """"hybrid", "local" (the cloud was down from the start) or "hybrid-then-local"."""
        if not self.degraded:
            return self.mode.value
        return "local" if self.fallback_at == 0 else f"{self.mode.value}-then-local"


def check_fits_cloud(prompt_tokens: int, info: ModelInfo) -> None:
    """ContextTooLong, naming both numbers, for a prompt the cloud would refuse as too long."""
    if info.max_context and prompt_tokens >= info.max_context:
        raise ContextTooLong(f"the prompt has {prompt_tokens} tokens, beyond the cloud model's context of "
                             f"{info.max_context} tokens (prompt and answer together): shorten it")
    if info.max_prompt_tokens and prompt_tokens > info.max_prompt_tokens:
        raise ContextTooLong(f"the prompt has {prompt_tokens} tokens; the cloud accepts at most "
                             f"{info.max_prompt_tokens} (its --max-prompt-tokens): shorten it")


class EdgeEngine:
    def __init__(self, drafter: DraftEngine | None, client: CloudClient | None, config: SpeculationConfig | None = None,
                 fallback: FallbackConfig | None = None, draft_slots: int = 1,
                 target_tokenizer: Callable[[], TextTokenizer] | None = None, answer_log=None):
        """fallback=None turns fallback off: hybrid answers are the cloud model's or an error.

        target_tokenizer: loads the cloud model's tokenizer, for a draft of another vocabulary
        (edge/cross_vocab.py); without it the edge fetches it from the cloud (cached).

        answer_log: a common.answer_log.AnswerLog that keeps each answer the cloud committed
        (--keep-answers, opt-in; None keeps nothing).

        drafter=None: cloud mode only (the thin client). draft_slots: hybrid or edge generations
        that may draft at once. Each beyond the first gets its own context over the same model
        file (drafter.sibling(), made on first need), so concurrent answers interleave their
        drafting instead of queueing whole answers.
        """
        self.drafter = drafter
        self.client = client
        self.config = config or SpeculationConfig()
        self.pays_memory: dict = {}  # what sessions measured about drafting, for the next ones (edge/cloud_alone.py)
        self.fallback = fallback or FallbackConfig(enabled=False)
        self.cloud_info: ModelInfo | None = None
        self.cloud = CloudWatch(self._probe, self.fallback)
        self._draft_slots = asyncio.Semaphore(max(1, draft_slots))
        self._idle_drafters = [drafter]  # draft contexts no generation holds now
        self._siblings: list = []  # contexts made beyond `drafter` (closed with the engine)
        self._target_tokenizer = target_tokenizer
        self.answer_log = answer_log

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
            load = self._target_tokenizer or await self._cloud_tokenizer(info)
            await asyncio.to_thread(self._draft_in_target_vocabulary, info, load)
        self.cloud_info = info
        self.cloud.mark_up()
        return info

    async def _cloud_tokenizer(self, info: ModelInfo) -> Callable[[], TextTokenizer]:
        """The cloud model's tokenizer when no local files were given: cached, else fetched from the
        cloud (GetTokenizer) and checked against info's fingerprint (edge/tokenizer.py)."""
        from edge.tokenizer import cloud_tokenizer

        async with contextlib.aclosing(self.client.tokenizer_chunks()) as chunks:
            tokenizer = await cloud_tokenizer(chunks, info, self.drafter.name)
        return lambda: tokenizer

    def _draft_in_target_vocabulary(self, info: ModelInfo, target_tokenizer: Callable[[], TextTokenizer]) -> None:
        """Wraps a draft of another vocabulary so that it speaks the target's ids (edge/cross_vocab.py)."""
        from edge.cross_vocab import check_pair

        if self._siblings or len(self._idle_drafters) != 1:
            raise FailedPrecondition("the cloud's tokenizer changed while answers were drafting")
        self.drafter = check_pair(self.drafter, target_tokenizer(), info)
        self._idle_drafters = [self.drafter]

    def encode(self, text: str) -> list[int]:
        """A raw prompt's ids, as the target's tokenizer encodes it by default (BOS/EOS per the
        target's rules once the cloud is known, else the draft tokenizer's, which the
        fingerprint check makes the same)."""
        return self.drafter.tokenizer.encode(text, self._rules())

    @property
    def chat_template(self) -> str:
        """The target's chat template (the draft's own while the cloud is unknown)."""
        return self.cloud_info.chat_template if self.cloud_info else self.drafter.tokenizer.chat_template

    def encode_chat(self, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
        """The ids of `messages` ([{role, content}]) rendered with the target's chat template
        (the draft's own while the cloud is unknown), ready for the reply; `tools` (OpenAI tool
        objects) go to the template as transformers passes them (edge/tool_calls.py)."""
        from edge.chat_template import render_chat

        tokenizer = self.drafter.tokenizer
        rules = self._rules()
        text = render_chat(self.chat_template, messages, bos_token=rules.bos_token, eos_token=rules.eos_token,
                           tools=tools)
        ids = tokenizer.encode_rendered_chat(text, rules)
        remember_chat = getattr(self.drafter, "remember_chat", None)
        if remember_chat is not None and tools is None:  # a draft of another vocabulary reads it with its
            remember_chat(ids, messages)  # own template (with tools, it reads the target's prompt as text)
        return ids

    def _rules(self) -> SpecialTokens:
        return self.cloud_info.special_tokens if self.cloud_info else self.drafter.tokenizer.special

    def with_seed(self, request: GenerationRequest) -> GenerationRequest:
        """Sampling always carries a seed, so draft and target can share position-keyed noise."""
        s = request.sampling
        if s.greedy or s.seed is not None:
            return request
        return dataclasses.replace(request, sampling=dataclasses.replace(s, seed=secrets.randbits(63)))

    async def generate(self, request: GenerationRequest, mode: Mode, generation: Generation | None = None
                       ) -> AsyncIterator[list[int] | Verified | Rewind]:
        """Yields newly generated token ids, chosen alike (see `generation.sources`); `generation`
        (if given) collects ids, their sources, finish and stats.

        With request.verify_offline it also yields Verified (provisional tokens confirmed) and Rewind
        (token_ids[position:] retracted; generation.token_ids is already cut when it is yielded)."""
        if not request.prompt_token_ids and not request.prompt_text:
            raise InvalidArgument("the prompt is empty")
        if mode != Mode.CLOUD and (self.drafter is None or not request.prompt_token_ids):
            raise FailedPrecondition(f"{mode.value} mode needs a draft model and a tokenized prompt")
        if mode != Mode.EDGE and self.cloud_info is not None:
            check_fits_cloud(len(request.prompt_token_ids), self.cloud_info)
        generation = generation or Generation(mode)
        request = self.with_seed(request)
        generation.seed = None if request.sampling.greedy else request.sampling.seed
        hybrid = self._hybrid_or_local if self.fallback.enabled else self._hybrid
        if self.fallback.enabled and request.verify_offline:
            hybrid = functools.partial(verified_offline, self)
        run = {Mode.HYBRID: hybrid, Mode.CLOUD: self._cloud, Mode.EDGE: self._edge}[mode]
        # aclosing: a consumer that stops early (a stop string, a client gone) closes the whole
        # chain at once, so the cloud stream is cancelled now rather than at garbage collection.
        # Cloud-only generations need no draft model, so any number of them run at once.
        drafting = self._draft_context() if mode != Mode.CLOUD else contextlib.nullcontext()
        answered = False  # to its end, or until the consumer stopped reading (a stop string, say)
        try:
            async with drafting as drafter, contextlib.aclosing(run(request, generation, drafter)) as tokens:
                async for item in tokens:
                    if isinstance(item, (Verified, Rewind)):
                        apply_event(generation, item)
                        yield item
                        continue
                    source, new = item
                    if source == Source.PROVISIONAL and generation.provisional_from is None:
                        generation.provisional_from = len(generation.token_ids)
                    generation.token_ids += new
                    generation.sources += [source] * len(new)
                    yield new
            answered = True
        except GeneratorExit:
            answered = True
            raise
        finally:
            if answered and self.answer_log is not None:
                keep_answer(self.answer_log, request, generation, self.drafter, self.cloud_info)

    async def generate_to_end(self, request: GenerationRequest, mode: Mode) -> Generation:
        """The whole generation at once: its ids, sources, finish and stats (see generate)."""
        generation = Generation(mode)
        async for _ in self.generate(request, mode, generation):
            pass
        return generation

    async def _hybrid_or_local(self, request: GenerationRequest, generation: Generation, drafter
                               ) -> AsyncIterator[Piece]:
        """Hybrid while the cloud answers in time; the local model alone from the first failure."""
        reason = await self._cloud_unusable()
        if reason is None:
            try:
                async with contextlib.aclosing(self._hybrid(request, generation, drafter)) as pieces:
                    async for piece in pieces:
                        yield piece
                return
            except CloudUnavailable as exc:
                self.cloud.mark_down(str(exc))
                if generation.finish_reason:
                    return  # every token had arrived; only the end of the stream was lost
                reason = str(exc)
        async with contextlib.aclosing(self._local_continuation(request, generation, reason, drafter)) as pieces:
            async for piece in pieces:
                yield piece

    async def _cloud_unusable(self) -> str | None:
        """Why the cloud can't be used now (None if it can); contacts it if it never was."""
        if self.cloud.state == CloudState.UNKNOWN:
            try:
                await self.connect(self.fallback.timeout_s)
            except CloudUnavailable as exc:
                self.cloud.mark_down(str(exc))
        return None if self.cloud.up else self.cloud.last_error

    async def _local_continuation(self, request: GenerationRequest, generation: Generation, reason: str, drafter
                                  ) -> AsyncIterator[Piece]:
        """Continues the answer on the draft model from the tokens committed so far."""
        done = len(generation.token_ids)
        generation.degraded, generation.fallback_at, generation.fallback_reason = True, done, reason
        log.warning("continuing on the local model from token %d: %s", done, reason)
        if done >= request.max_new_tokens:
            generation.finish_reason = FinishReason.LENGTH
            return
        context = len(request.prompt_token_ids) + done
        if context >= drafter.n_ctx:
            raise CloudUnavailable(f"{reason}; the local model cannot take over: the conversation has {context} "
                                   f"tokens, beyond its context of {drafter.n_ctx}")
        rest = dataclasses.replace(request, prompt_token_ids=[*request.prompt_token_ids, *generation.token_ids],
                                   max_new_tokens=request.max_new_tokens - done)
        async with contextlib.aclosing(self._edge(rest, generation, drafter, len(request.prompt_token_ids))) as pieces:
            async for piece in pieces:
                yield piece

    def _resume_window(self) -> ResumeWindow:
        """How long a broken answer keeps looking for a replica: the fallback timeout, else the connect timeout."""
        return ResumeWindow(self.fallback.timeout_s if self.fallback.enabled else self.client.connect_timeout_s)

    async def _hybrid(self, request: GenerationRequest, generation: Generation, drafter,
                      committed: list[int] | None = None, provisional: Callable[[], list[int]] | None = None
                      ) -> AsyncIterator[Piece]:
        """Speculate streams, one per replica the answer passes through; each resumes where the last broke.

        committed: the answer's tokens the cloud already chose (an answer resumed after an outage);
        provisional() the local model's tokens after them, to verify first (edge/offline.py)."""
        info = self.cloud_info or await self.connect()
        config = self._fit(info)
        timeout = self.fallback.timeout_s if self.fallback.enabled else None

        def speculate(committed: list[int], connect_timeout_s: float | None) -> SpeculativeRun:
            session = request.to_wire(committed).session_open(
                tokenizer_fingerprint=drafter.fingerprint, draft_model_name=drafter.name, draft_mode=request.draft_mode)
            drafts = provisional() if provisional is not None and request.draft_mode != DraftMode.SPARSE_Q else []
            run = SpeculativeRun(drafter, self.client.speculate(connect_timeout_s), session, config, generation.stats,
                                 response_timeout_s=timeout, provisional=drafts, hint_limit=info.max_hint_tokens,
                                 start_guessing=getattr(drafter, "crosses_vocabularies", False),
                                 logprobs=generation.logprobs, memory=self.pays_memory)
            run.stop_ids |= set(info.eos_token_ids)
            return run

        async with contextlib.aclosing(self._resuming(speculate, generation, committed=committed)) as pieces:
            async for piece in pieces:
                yield piece

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

    async def _cloud(self, request: GenerationRequest, generation: Generation, drafter=None) -> AsyncIterator[Piece]:
        """Generate streams; a broken one resumes from the tokens received, as in _hybrid."""
        if self.client is None:
            raise FailedPrecondition("cloud mode needs a cloud address")

        def generate(committed: list[int], connect_timeout_s: float | None) -> _GenerateRun:
            return _GenerateRun(self.client.generate(request.to_wire(committed), connect_timeout_s), generation)

        # A thin client's answer (the cloud tokenizes and renders it) cannot be resumed: no ids to resume from.
        resumable = bool(request.prompt_token_ids) and not request.return_text
        async with contextlib.aclosing(self._resuming(generate, generation, resumable)) as pieces:
            async for piece in pieces:
                yield piece

    async def _resuming(self, open_stream, generation: Generation, resumable: bool = True,
                        committed: list[int] | None = None) -> AsyncIterator[Piece]:
        """The answer over one stream after another: `open_stream(committed, connect_timeout_s)`
        opens a stream (a SpeculativeRun or a _GenerateRun) that continues after `committed`;
        a stream that breaks before the finish is reopened within the resume window."""
        stats = generation.stats
        window = self._resume_window()
        committed = list(committed or [])
        broke_at = None  # perf_counter() of the break the next stream resumes
        while True:
            run = open_stream(list(committed), window.remaining_s())
            resuming = bool(generation.served_by)  # an earlier stream of this answer started
            try:
                async with contextlib.aclosing(run.tokens()) as pieces:
                    async for source, new in pieces:
                        window.progressed()
                        if broke_at is not None:
                            stats.resume_s += time.perf_counter() - broke_at
                            broke_at = None
                        generation.served(run.replica, len(committed))
                        generation.finish_reason = run.finish
                        committed += new
                        yield source, new
                return
            except CloudUnavailable as exc:
                if run.finish:
                    return  # every token had arrived; only the end of the stream was lost
                if not resumable:
                    raise
                log.info("stream broke after %d token(s): %s; resuming", len(committed), exc)
                broke_at = broke_at or time.perf_counter()
                await window.pause_or_raise(exc, len(committed))
            finally:
                if run.finish:  # also when the stream broke after the last token (see _hybrid_or_local)
                    generation.finish_reason = run.finish
                if run.replica is not None:  # the stream started: a resume if an earlier one had
                    generation.served(run.replica, len(committed))
                    stats.resumes += resuming

    async def _edge(self, request: GenerationRequest, generation: Generation, drafter,
                    answer_start: int | None = None) -> AsyncIterator[Piece]:
        """The local model alone; answer_start: where the answer began in the prompt (a fallback
        continues an answer whose first tokens are in it), for the grammar's state."""
        if len(request.prompt_token_ids) >= drafter.n_ctx:
            raise ContextTooLong(f"the prompt has {len(request.prompt_token_ids)} tokens, beyond the local model's "
                                 f"context of {drafter.n_ctx} (--n-ctx): shorten it")
        policy = DraftPolicy(request.sampling)
        prepare(drafter, request.sampling)
        start = len(request.prompt_token_ids) if answer_start is None else answer_start
        served = ServedLogits(request.sampling, request.grammar, drafter, start) \
            if ServedLogits.needed(request.sampling, request.grammar) else None
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
            if served is not None:
                logits = served.apply(context, logits)
            token = policy.choose(logits, len(context)).token_id
            if request.logprobs is not None:
                generation.logprobs[len(context) - start] = TokenLogprob.of(
                    logits, token, request.logprobs, request.sampling.temperature)
            context.append(token)
            generation.stats.local_tokens += 1
            generation.stats.mark_tokens(1)
            yield Source.LOCAL, [token]
            if token in stop_ids or (stop_text and stop_text.push(token)):
                generation.finish_reason = FinishReason.STOP
                return
        generation.finish_reason = FinishReason.LENGTH


class _GenerateRun:
    """One Generate stream of a cloud-mode answer, read the way a SpeculativeRun is: `tokens()`
    yields pieces, `replica` is set once the stream started, `finish` once it finished."""

    def __init__(self, stream, generation: Generation):
        self.stream = stream
        self.generation = generation
        self.replica: str | None = None
        self.finish = FinishReason.NONE

    async def tokens(self) -> AsyncIterator[Piece]:
        stats = self.generation.stats
        stats.bytes_sent += self.stream.bytes_sent
        received_before, passes_before = stats.bytes_received, stats.cloud_forward_passes
        try:
            async for step in self.stream:
                stats.bytes_received = received_before + self.stream.bytes_received
                if step.progress is not None:
                    stats.prefill_progress += 1  # the cloud is at work (the silence timeout restarted)
                    continue
                if self.replica is None:
                    self.replica = step.replica  # named on the first step only
                new = [step.token_id] if step.token_id is not None else []
                if new and step.logprob is not None:  # tokens before this one are all in token_ids
                    self.generation.logprobs[len(self.generation.token_ids)] = step.logprob
                stats.rounds += len(new)
                if step.finish_reason:
                    stats.cloud_forward_passes = passes_before + step.forward_passes
                stats.mark_tokens(len(new))
                self.finish = step.finish_reason
                self.generation.text += step.text
                if new:
                    yield Source.CLOUD, new
        finally:
            stats.bytes_received = received_before + self.stream.bytes_received
