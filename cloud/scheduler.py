"""Continuous batching: every step, one forward pass over the ready work of all live sessions.

One thread owns the model, the KV pool and every session's state (no locks; passes never
fight over the cores). The event loop hands it jobs through a queue and gets answers back
through futures. Each step it:

1. takes the jobs that arrived (new sessions, draft blocks, closes) and asks each session what
   it needs: a stale block or a prefix-cache hit is answered at once, anything else becomes
   Work for the pass;
2. fills the pass within a token budget (`max_batch_tokens`) as cloud/pass_plan.py decides:
   verification blocks and decoding steps first, then prompt chunks in the room left;
3. runs one forward pass (the TargetEngine's forward_batch, cloud/target_engine.py: the only
   thing it knows of the model), hands each session its logits,
   and delivers the answers. Generate sessions are driven here: after each token their next
   decoding step is queued at once, so they ride every pass without a round trip through the
   event loop. So are Speculate sessions while the cloud decodes for them alone (CloudDecode,
   the same job kind): their requests are chained, a request sent ahead taking over where the
   last ends.

Each step's time is fitted against the tokens in its pass (cloud/step_time.py), so every answer
to a Speculate session can tell the edge how long one step of decoding alone would take for it
(decode_step_us): the edge's input for deciding whether drafting pays.

Sessions join and leave between steps. An error in one session's job fails that job only;
a failed forward pass fails the jobs in it, nothing else.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import enum
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from cloud.decode_hints import hint_count
from cloud.goodput import GoodputShaper
from cloud.pass_plan import plan_pass
from cloud.session import VerifierSession, Work
from cloud.step_time import StepTimeModel
from cloud.target_engine import Segment, TargetEngine, default_kv_budget_bytes, new_kv_pool
from common.errors import TandemError
from common.wire import CloudDecode, DecodeHint, DraftBlock, FinishReason, SessionStarted, TokenLogprob, Verdict

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Token:
    """One Generate step's result."""

    position: int
    token_id: int | None
    finish_reason: FinishReason
    stale: bool = False  # CloudDecode only: the request did not continue the session; nothing decoded
    decode_step_us: int = 0  # the step-time fit's estimate for this session decoding alone
    hinted: tuple[int, ...] = ()  # CloudDecode only: the edge's guesses committed right before token_id
    retires: int = 0  # CloudDecode only: requests this token completes (with guesses, possibly several)
    logprob: TokenLogprob | None = None  # token_id's, when the session asked for log-probabilities


class JobKind(enum.Enum):
    START = "start"  # open a Speculate session: prefill, choose its first token
    # open a Generate session and decode until it finishes; with a CloudDecode payload, decode for a
    # started Speculate session alone up to the end of its requests
    GENERATE = "generate"
    VERIFY = "verify"  # one Speculate draft block
    CLOSE = "close"  # free a session
    HINT = "hint"  # the edge's guesses for a session the cloud decodes alone (DecodeHint)
    CALL = "call"  # run a function on the model thread between steps


@dataclass
class _Job:
    kind: JobKind
    session: VerifierSession | None = None
    payload: object = None
    future: concurrent.futures.Future | None = None
    emit: Callable[[object], None] | None = None  # generate: receives each Token, or an exception
    queued_at: float = field(default_factory=time.monotonic)

    def resolve(self, result) -> None:
        if self.emit is not None:
            try:
                self.emit(result)
            except RuntimeError:  # the caller's event loop is gone (shutdown): nobody is listening
                pass
        elif self.future is not None and not self.future.done():
            try:
                if isinstance(result, BaseException):
                    self.future.set_exception(result)
                else:
                    self.future.set_result(result)
            except concurrent.futures.InvalidStateError:  # cancelled meanwhile
                pass


@dataclass
class _Decoding:
    """A Speculate session the cloud decodes for alone: the job whose emit gets every answer, and
    its CloudDecode requests not yet fully answered, oldest first, each with whether it continued
    the session (False: it gets a stale answer when its turn comes)."""

    job: _Job
    requests: deque[tuple[CloudDecode, bool]]
    last_tokens: int = 1  # tokens its last planned step fed (the pending one and any guesses)


class ShuttingDown(TandemError):
    code = "UNAVAILABLE"


class NoMetrics:
    """What the scheduler reports; cloud/metrics.py turns it into Prometheus metrics."""

    def step(self, sessions: int, tokens: int, seconds: float) -> None: ...

    def queue_wait(self, seconds: float) -> None: ...

    def shaped(self, cap: int | None) -> None: ...

    def verdict(self, drafted: int, accepted: int) -> None: ...

    def generated(self, rpc: str, tokens: int) -> None: ...


class Scheduler:
    def __init__(self, model: TargetEngine, max_batch_tokens: int = 256, metrics=None, batch_wait_s: float = 0.05,
                 kv_budget_bytes: int | None = None, shaper: GoodputShaper | None = None):
        """kv_budget_bytes sizes the KV pool once (None: half the memory free where the model runs);
        shaper caps the drafts per block under load (cloud/goodput.py; None: never)."""
        assert max_batch_tokens >= 1 and batch_wait_s >= 0
        self.model = model
        budget = default_kv_budget_bytes(model) if kv_budget_bytes is None else kv_budget_bytes
        self.kv = new_kv_pool(model, budget)
        self.max_batch_tokens = max_batch_tokens
        self.batch_wait_s = batch_wait_s
        self._expected: set[VerifierSession] = set()  # Speculate sessions answered by the last pass
        self._last_step_s = 0.0
        self.metrics = metrics or NoMetrics()
        self.shaper = shaper or GoodputShaper(enabled=False)
        self._draft_cap: int | None = None  # sent with every verdict (Verdict.max_drafts), set after each pass
        self._last_pass_ended: float | None = None
        self.forward_passes = 0
        self.pass_started: float | None = None  # monotonic time the pass in flight began; None between passes
        self._inbox: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._ready: deque[tuple[Work, _Job]] = deque()  # verification blocks and decoding steps
        self._prefilling: deque[_Job] = deque()  # start/generate jobs whose prompt is not all in yet
        self._decoding: dict[VerifierSession, _Decoding] = {}  # Speculate sessions the cloud decodes for alone
        self.step_times = StepTimeModel()
        self._gather_started = time.monotonic()
        self._last_pass_tokens = 0
        self._thread = threading.Thread(target=self._run, name="tandem-model", daemon=True)
        self._thread.start()

    # --- the event loop's side ---------------------------------------------------------------

    async def start(self, session: VerifierSession) -> SessionStarted:
        """Prefills a Speculate session's prompt and chooses its first token."""
        return await self._call(_Job(JobKind.START, session))

    async def verify(self, session: VerifierSession, block: DraftBlock) -> Verdict:
        return await self._call(_Job(JobKind.VERIFY, session, block))

    async def generate(self, session: VerifierSession) -> AsyncIterator[Token]:
        """Prefills, then decodes every step until the session finishes; yields each token."""
        loop = asyncio.get_running_loop()
        tokens: asyncio.Queue = asyncio.Queue()
        emit = lambda item: loop.call_soon_threadsafe(tokens.put_nowait, item)  # noqa: E731
        self._inbox.put(_Job(JobKind.GENERATE, session, emit=emit))
        while True:
            item = await tokens.get()
            if isinstance(item, BaseException):
                raise item
            yield item
            if item.finish_reason:
                return

    def decode(self, session: VerifierSession, request: CloudDecode, emit: Callable[[object], None]) -> None:
        """Queues a CloudDecode for a started Speculate session. `emit` (called on the model thread)
        receives every answer: each Token decoded alone, a stale Token per stale request, in request
        order, or an exception. A request sent before the last is done continues it without a gap."""
        self._inbox.put(_Job(JobKind.GENERATE, session, payload=request, emit=emit))

    def hint(self, session: VerifierSession, hint: DecodeHint) -> None:
        """Hands the model thread the edge's guesses for a Speculate session (never answered)."""
        self._inbox.put(_Job(JobKind.HINT, session, payload=hint))

    async def close(self, session: VerifierSession) -> None:
        """Frees the session between steps (never while a pass uses its blocks); survives cancellation."""
        await asyncio.shield(asyncio.wrap_future(self.submit_job(_Job(JobKind.CLOSE, session))))

    async def run(self, fn, *args):
        """Runs fn(*args) on the model thread between steps and awaits its result."""
        return await self._call(_Job(JobKind.CALL, payload=(fn, args)))

    def submit(self, fn, *args) -> concurrent.futures.Future:
        """Queues fn(*args) for the model thread between steps, without waiting."""
        return self.submit_job(_Job(JobKind.CALL, payload=(fn, args)))

    def submit_job(self, job: _Job) -> concurrent.futures.Future:
        job.future = concurrent.futures.Future()
        self._inbox.put(job)
        return job.future

    async def _call(self, job: _Job):
        return await asyncio.wrap_future(self.submit_job(job))

    def shutdown(self) -> None:
        self._inbox.put(None)
        self._thread.join()

    # --- the model thread ------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            idle = not self._ready and not self._prefilling
            if not self._take_jobs(block=idle) or not self._gather():
                break
            batch = self._fill_pass()
            if batch:
                self._step(batch)
        self._fail_all(ShuttingDown("the server is shutting down"))

    def _gather(self) -> bool:
        """Waits briefly for the Speculate sessions of the last pass to send their next block.

        Their verdicts went out at the end of that pass; their next blocks come back a round
        trip (plus drafting) later. Starting the pass without them would run it half full
        and leave them a whole pass to wait: hybrid sessions would split into two alternating
        halves. So wait up to batch_wait_s, and never more than a quarter of the last pass's
        time, while some of them are missing. False once shut down.
        """
        self._gather_started = time.monotonic()
        deadline = self._gather_started + min(self.batch_wait_s, self._last_step_s / 4)
        while self._ready and self._expected - {job.session for _, job in self._ready}:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                job = self._inbox.get(timeout=left)
            except queue.Empty:
                break
            if job is None:
                return False
            self._handle(job)
        return True

    def _take_jobs(self, block: bool) -> bool:
        """Handles every job that has arrived (waits for one when idle); False once shut down."""
        try:
            job = self._inbox.get(block=block)
        except queue.Empty:
            return True
        while job is not None:
            self._handle(job)
            try:
                job = self._inbox.get_nowait()
            except queue.Empty:
                return True
        return False

    def _handle(self, job: _Job) -> None:
        try:
            if job.kind is JobKind.CALL:
                fn, args = job.payload
                job.resolve(fn(*args))
            elif job.kind is JobKind.CLOSE:
                self._forget(job.session)
                self._expected.discard(job.session)
                job.session.close()
                job.resolve(None)
            elif job.kind is JobKind.HINT:
                if job.session.table is not None:  # not once the session closed
                    job.session.hints.add(job.payload, job.session.tokens)
                    self._replan_decode(job.session)
            elif job.kind is JobKind.GENERATE and job.payload is not None:
                self._take_decode(job)
            elif job.kind in (JobKind.START, JobKind.GENERATE):
                started = job.session.begin()
                if started is None:
                    self._prefilling.append(job)
                else:
                    self._answer(job, started)
            elif job.kind is JobKind.VERIFY:
                self._plan(job, job.session.plan_verify(job.payload))
        except Exception as exc:  # noqa: BLE001 - the job's own error, delivered to its caller only
            job.resolve(exc)

    def _plan(self, job: _Job, planned: Verdict | Work) -> None:
        if isinstance(planned, Work):
            self._ready.append((planned, job))
        else:
            self._answer(job, planned)

    def _answer(self, job: _Job, result: SessionStarted | Verdict, drafted: int = 0, others: int | None = None
                ) -> None:
        """Delivers a start or verify result; a Generate session queues its next step at once.

        others: tokens of other sessions in the pass that produced it (None: answered without one).
        """
        step_us = self._decode_step_us(self._last_pass_tokens if others is None else others)
        if isinstance(result, SessionStarted):
            token = Token(result.position, result.token_id, result.finish_reason, decode_step_us=step_us,
                          logprob=result.logprob)
            committed = int(result.token_id is not None)
        else:
            first = result.start_position + 1  # a decoding step's accepted drafts are the edge's guesses
            hinted = tuple(job.session.tokens[first: first + result.accepted_count])
            token = Token(first + result.accepted_count, result.next_token, result.finish_reason,
                          decode_step_us=step_us, hinted=hinted,
                          logprob=result.logprobs[-1] if result.logprobs and result.next_token is not None else None)
            committed = 0 if result.stale else result.accepted_count + int(result.next_token is not None)
            if not result.stale and job.kind is JobKind.VERIFY:  # a decoding step's guesses are not draft blocks
                self.metrics.verdict(drafted, result.accepted_count)
                self.shaper.observe_verdict(drafted, result.accepted_count)
            result = dataclasses.replace(result, max_drafts=self._draft_cap)
        speculate = job.kind is not JobKind.GENERATE or job.payload is not None
        self.metrics.generated("Speculate" if speculate else "Generate", committed)
        if job.kind is not JobKind.GENERATE:
            job.resolve(dataclasses.replace(result, decode_step_us=step_us))
            return
        if job.payload is not None:
            token = dataclasses.replace(token, retires=self._retire(job.session, token))
        job.resolve(token)
        if job.payload is not None:
            self._decoded(job.session, token)
        elif not token.finish_reason:
            job.queued_at = time.monotonic()
            self._plan(job, job.session.decode_work())

    def _decode_step_us(self, others: int) -> int:
        """The fit's time of a step holding one token of a session beside `others` tokens (0: no fit yet)."""
        seconds = self.step_times.estimate(others + 1)
        return round(seconds * 1e6) if seconds is not None else 0

    # --- CloudDecode: a Speculate session decoded alone, its requests chained ----------------

    def _take_decode(self, job: _Job) -> None:
        session, request = job.session, job.payload
        decoding = self._decoding.get(session)
        if decoding is not None:  # decoding already: the request continues it, or is stale in its turn
            decoding.requests.append((request, session.extend_decode(request)))
            return
        if not session.extend_decode(request):
            job.resolve(self._stale(session, request))
            return
        self._decoding[session] = _Decoding(job, deque([(request, True)]))
        self._plan(job, self._decode_work(session))

    def _stale(self, session: VerifierSession, request: CloudDecode) -> Token:
        return Token(request.start_position, None, session.finished, stale=True,
                     decode_step_us=self._decode_step_us(self._last_pass_tokens))

    def _retire(self, session: VerifierSession, token: Token) -> int:
        """Retires the requests a token decoded alone completes; returns how many."""
        requests, retired = self._decoding[session].requests, 0
        while requests and requests[0][1] and requests[0][0].retired(len(session.tokens), bool(token.finish_reason)):
            requests.popleft()
            retired += 1
        return retired

    def _decoded(self, session: VerifierSession, token: Token) -> None:
        """After a token decoded alone: answers the stale requests whose turn came, and queues the
        next step while requests still ask for tokens."""
        decoding = self._decoding[session]
        requests = decoding.requests
        while requests and (session.finished or not requests[0][1]):
            decoding.job.resolve(self._stale(session, requests.popleft()[0]))
        if session.decoding():
            decoding.job.queued_at = time.monotonic()
            self._plan(decoding.job, self._decode_work(session))
        else:
            del self._decoding[session]

    def _decode_work(self, session: VerifierSession) -> Verdict | Work:
        """The session's next decoding step, checking as many of the edge's guesses as pay
        (cloud/decode_hints.py: committed tokens per second of the step, from the step-time fit)."""
        usable = session.usable_hints()
        others = max(0, self._last_pass_tokens - self._decoding[session].last_tokens) if usable else 0
        work = session.decode_work(hint_count(session.hints.acceptance, usable, self.step_times.estimate, others))
        if isinstance(work, Work):
            self._decoding[session].last_tokens = len(work.token_ids)
        return work

    def _replan_decode(self, session: VerifierSession) -> None:
        """New guesses came for a session whose next decoding step waits for a pass: plan it again
        with them. (Planning has no effect on the session until the pass runs.)"""
        decoding = self._decoding.get(session)
        if decoding is None or not session.usable_hints():
            return
        for i, (work, job) in enumerate(self._ready):
            if job is decoding.job:
                replanned = self._decode_work(session)
                if isinstance(replanned, Work):
                    self._ready[i] = (replanned, job)
                return

    def _forget(self, session: VerifierSession) -> None:
        """Drops a closing session's queued work (its caller has gone)."""
        self._ready = deque((w, j) for w, j in self._ready if j.session is not session)
        self._prefilling = deque(j for j in self._prefilling if j.session is not session)
        self._decoding.pop(session, None)

    def _fill_pass(self) -> list[tuple[Work, _Job]]:
        plan = plan_pass([len(work.token_ids) for work, _ in self._ready],
                         [job.session.prefill_remaining for job in self._prefilling], self.max_batch_tokens)
        batch = [self._ready.popleft() for _ in range(plan.ready)]
        for job, chunk in zip(list(self._prefilling), plan.chunks):
            batch.append((job.session.prefill_work(chunk), job))
            if not job.session.prefill_remaining:
                self._prefilling.remove(job)
        return batch

    def _step(self, batch: list[tuple[Work, _Job]]) -> None:
        started = time.monotonic()
        for _, job in batch:
            self.metrics.queue_wait(started - job.queued_at)
        self.pass_started = started
        try:
            logits = self.model.forward_batch(self.kv, [_segment(work) for work, _ in batch])
        except Exception as exc:  # noqa: BLE001 - the pass failed: so do the jobs in it, nothing else
            self.pass_started = None
            log.exception("forward pass failed for %d sessions", len(batch))
            for _, job in batch:
                self._forget(job.session)
                job.resolve(exc)
            return
        self.pass_started = None
        self.forward_passes += 1
        ended = time.monotonic()
        self._last_step_s = ended - started
        tokens = sum(len(w.token_ids) for w, _ in batch)
        self.metrics.step(len(batch), tokens, self._last_step_s)
        self._last_pass_tokens = tokens
        self._shape(batch, tokens, started, ended)
        for (work, job), rows in zip(batch, logits):
            work.session.forward_passes += 1
            try:
                result = work.finish(rows)
                if result is not None:
                    self._answer(job, result, work.drafted, tokens - len(work.token_ids))
            except Exception as exc:  # noqa: BLE001
                self._forget(job.session)
                job.resolve(exc)
        # A step's time includes choosing its tokens on the host (a sampled session's top-p over the
        # vocabulary at every position it judges), so the fit prices a checked draft or guess at what
        # it costs (cloud/decode_hints.py) and decode_step_us is what a step really takes.
        self.step_times.observe(tokens, time.monotonic() - min(started, self._gather_started))
        self._expected = {job.session for _, job in batch if job.kind is JobKind.VERIFY and not job.session.finished}

    def _shape(self, batch: list[tuple[Work, _Job]], tokens: int, started: float, ended: float) -> None:
        """The draft cap the verdicts of this pass carry (cloud/goodput.py)."""
        idle = started - self._last_pass_ended if self._last_pass_ended is not None else 0.0
        self._last_pass_ended = ended
        self.shaper.observe_pass(ended - started, idle)
        verifying = [work for work, job in batch if job.kind is JobKind.VERIFY]
        self._draft_cap = self.shaper.cap(len(verifying), tokens - sum(len(w.token_ids) for w in verifying),
                                          self.step_times.estimate)
        self.metrics.shaped(self._draft_cap)

    def _fail_all(self, exc: Exception) -> None:
        for _, job in self._ready:
            job.resolve(exc)
        for job in self._prefilling:
            job.resolve(exc)
        for session, decoding in self._decoding.items():
            if not any(j is decoding.job for _, j in self._ready):
                decoding.job.resolve(exc)
        self._ready.clear()
        self._prefilling.clear()
        self._decoding.clear()


def _segment(work: Work) -> Segment:
    return Segment(work.session.table, work.token_ids, work.keep)
