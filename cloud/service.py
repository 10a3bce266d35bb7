"""The Tandem gRPC servicer: translates messages and calls domain code, nothing more.

Model work goes to the Scheduler (cloud/scheduler.py), which batches all sessions; errors are raised as common.errors exceptions and
become statuses in cloud/errors.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import deque
from typing import TYPE_CHECKING

from cloud.limits import SessionLimits
from cloud.prefix_cache import PrefixCache
from cloud.registry import SessionRegistry
from cloud.session import VerifierSession
from cloud.scheduler import Scheduler
from cloud.streams import CallStream
from cloud.target_engine import TargetEngine
from common.detok import IncrementalDetokenizer
from common.errors import Draining, InvalidArgument
from common.pb.tandem.v1 import tandem_pb2 as pb
from common.pb.tandem.v1 import tandem_pb2_grpc as pb_grpc
from common.wire import (
    CloudDecode,
    DecodedToken,
    DraftBlock,
    DraftMode,
    GenerateRequest,
    GenerateStep,
    ModelInfo,
    SessionOpen,
)

if TYPE_CHECKING:
    from cloud.metrics import CloudMetrics

log = logging.getLogger(__name__)

_DRAIN = object()  # what _next_request returns once the replica drains

# While the model works towards a session's next answer, the edge hears from the cloud at least
# this often (well below the edge's default fallback timeout of 2 s).
PROGRESS_INTERVAL_S = 0.5


async def _prepend(first, rest):
    yield first
    async for item in rest:
        yield item


class TandemService(pb_grpc.TandemServicer):
    def __init__(self, model: TargetEngine, scheduler: Scheduler, registry: SessionRegistry, limits: SessionLimits,
                 prefix_cache: PrefixCache | None = None, idle_timeout_s: float = 0.0, replica: str = "",
                 metrics: CloudMetrics | None = None):
        self.model = model
        self.scheduler = scheduler
        self.registry = registry
        self.limits = limits
        self.prefix_cache = prefix_cache  # touched only on the scheduler's model thread
        self.idle_timeout_s = idle_timeout_s  # 0: streams may stay idle forever
        self.replica = replica  # this replica's name, told to clients
        self.metrics = metrics
        self.draining = asyncio.Event()  # set on SIGTERM: live sessions move elsewhere, new ones are refused

    def drain(self) -> None:
        """Refuses new sessions and tells the live ones to resume on another replica."""
        self.draining.set()

    def _admit(self) -> None:
        if self.draining.is_set():
            raise Draining(f"replica {self.replica} is draining (shutting down); retry on another replica")

    def _admitted(self, rpc: str, request: SessionOpen) -> None:
        if self.metrics is not None and request.resume_token_ids:
            self.metrics.resumed_sessions.labels(rpc=rpc).inc()

    def _drain_notice(self) -> pb.DrainNotice:
        if self.metrics is not None:
            self.metrics.drain_notices.inc()
        return pb.DrainNotice(replica=self.replica, reason="replica shutting down")

    def info(self) -> ModelInfo:
        m, lim = self.model, self.limits
        return ModelInfo(
            model_name=m.name,
            vocab_size=m.vocab_size,
            tokenizer_fingerprint=m.fingerprint,
            eos_token_ids=m.eos_token_ids,
            max_context=lim.context_for(m.max_context),
            max_prompt_tokens=lim.max_prompt_tokens,
            max_draft_tokens=lim.max_draft_tokens,
            max_new_tokens=lim.max_new_tokens,
            max_draft_top_k=lim.max_draft_top_k,
            chat_template=m.chat_template,
            max_stop_tokens=lim.max_stop_tokens,
            idle_timeout_s=self.idle_timeout_s,
            replica=self.replica,
            special_tokens=m.special,
        )

    async def Info(self, request, context):
        return self.info().to_pb()

    async def Speculate(self, request_iterator, context):
        # Reads and writes go through CallStream (idle timeout), not the request iterator.
        stream = CallStream(context, self.idle_timeout_s)
        request = await stream.read()
        if request is None:
            return
        if request.WhichOneof("kind") != "open":
            raise InvalidArgument("the first message of a Speculate stream must be `open`")
        self._admit()
        session = self._session(SessionOpen.from_pb(request.open))
        session_id = self.registry.add(session)
        self._admitted("Speculate", session.request)
        try:
            report = lambda progress: stream.write(pb.SpeculateResponse(progress=progress))  # noqa: E731
            await report(self._progress(session))  # the acknowledgement, before any model work
            started = await self._with_progress(self.scheduler.start(session), session, report)
            started = dataclasses.replace(started, replica=self.replica)
            await stream.write(pb.SpeculateResponse(started=started.to_pb()))
            ahead = None  # the read of the next request, begun while the cloud decoded alone
            while (request := await (ahead or self._next_request(stream))) is not None:
                ahead = None
                if request is _DRAIN:
                    await stream.write(pb.SpeculateResponse(drain=self._drain_notice()))
                    return
                if request.WhichOneof("kind") == "decode":
                    ahead = await self._decode_alone(session, stream, CloudDecode.from_pb(request.decode))
                    continue
                if request.WhichOneof("kind") != "draft":
                    raise InvalidArgument("after `open`, a Speculate stream carries only `draft` and `decode` messages")
                verify = self.scheduler.verify(session, DraftBlock.from_pb(request.draft))
                verdict = await self._with_progress(verify, session, report)
                await stream.write(pb.SpeculateResponse(verdict=verdict.to_pb()))
        finally:
            await self._release(session_id, session)

    async def _decode_alone(self, session: VerifierSession, stream: CallStream, first: CloudDecode):
        """Streams the tokens the cloud decodes alone for `first`, and for every CloudDecode that
        arrives meanwhile (the edge sends them ahead, so the scheduler chains them without a gap).

        Returns the read of the next request (a future: a read is never cancelled, so no message is
        lost), which may already hold the first other request that came meanwhile (a draft block,
        None at the half-close, _DRAIN); that is handled once every CloudDecode has been answered.
        """
        loop = asyncio.get_running_loop()
        answers: asyncio.Queue = asyncio.Queue()
        emit = lambda item: loop.call_soon_threadsafe(answers.put_nowait, item)  # noqa: E731
        open_requests = deque([first])
        self.scheduler.decode(session, first, emit)
        read = asyncio.ensure_future(self._next_request(stream))
        answer = asyncio.ensure_future(answers.get())
        other = False  # `read` holds a request that is not a CloudDecode
        try:
            while open_requests:
                waiting = {answer} if other else {answer, read}
                done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if read in done and not other:
                    request = read.result()
                    if request not in (None, _DRAIN) and request.WhichOneof("kind") == "decode":
                        open_requests.append(CloudDecode.from_pb(request.decode))
                        self.scheduler.decode(session, open_requests[-1], emit)
                        read = asyncio.ensure_future(self._next_request(stream))
                    else:
                        other = True
                if answer in done:
                    token = answer.result()
                    answer = asyncio.ensure_future(answers.get())
                    if isinstance(token, BaseException):
                        raise token
                    head = open_requests[0]
                    last = token.stale or bool(token.finish_reason) or token.position >= head.end_position - 1
                    if last:
                        open_requests.popleft()
                    await stream.write(pb.SpeculateResponse(decoded=DecodedToken(
                        token.position, token.token_id, token.finish_reason, token.stale,
                        forward_passes=session.forward_passes if last else 0,
                        decode_step_us=token.decode_step_us if last else 0).to_pb()))
            return read
        except BaseException:
            read.cancel()
            raise
        finally:
            answer.cancel()

    async def _next_request(self, stream: CallStream):
        """The next request (None once the client half-closed), or _DRAIN as soon as the replica drains."""
        if self.draining.is_set():
            return _DRAIN
        read = asyncio.ensure_future(stream.read())
        drain = asyncio.ensure_future(self.draining.wait())
        try:
            await asyncio.wait((read, drain), return_when=asyncio.FIRST_COMPLETED)
        finally:
            drain.cancel()
            if not read.done():
                read.cancel()
        return read.result() if read.done() and not read.cancelled() else _DRAIN

    async def Generate(self, message, context):
        stream = CallStream(context, self.idle_timeout_s)
        self._admit()
        request = GenerateRequest.from_pb(message)
        prompt = request.prompt_token_ids
        if request.prompt_text and prompt:
            raise InvalidArgument("give prompt_token_ids or prompt_text, not both")
        if request.prompt_text and request.resume_token_ids:
            raise InvalidArgument("resume_token_ids needs prompt_token_ids (the tokens follow them)")
        if request.prompt_text:
            prompt = await self.scheduler.run(self.model.encode, request.prompt_text)
        open_request = SessionOpen(
            prompt_token_ids=prompt,
            max_new_tokens=request.max_new_tokens,
            sampling=request.sampling,
            stop_token_ids=request.stop_token_ids,
            tokenizer_fingerprint=self.model.fingerprint,
            draft_model_name="(cloud-only)",
            draft_mode=DraftMode.TOKEN_IDS,
            stop_strings=request.stop_strings,
            resume_token_ids=request.resume_token_ids,
        )
        session = self._session(open_request)
        detok = IncrementalDetokenizer(self.model.token_bytes) if request.return_text else None
        session_id = self.registry.add(session)
        self._admitted("Generate", open_request)
        try:
            replica = self.replica
            report = lambda progress: stream.write(pb.GenerateResponse(progress=progress))  # noqa: E731
            steps = self.scheduler.generate(session)
            await report(self._progress(session))  # the acknowledgement, before any model work
            first = await self._with_progress(anext(steps), session, report)
            async for step in _prepend(first, steps):
                token, finish = step.token_id, step.finish_reason
                text = detok.push([token]) if detok and token is not None else ""
                if detok and finish:
                    text += detok.flush()
                await stream.write(GenerateStep(step.position, token, finish, text, replica=replica,
                                                forward_passes=session.forward_passes if finish else 0).to_pb())
                replica = ""  # on the first message only
                if not finish and self.draining.is_set():
                    await stream.write(pb.GenerateResponse(position=step.position + 1, drain=self._drain_notice()))
                    return
        finally:
            await self._release(session_id, session)

    async def _with_progress(self, answer, session: VerifierSession, report):
        """Awaits `answer` (a first token or a verdict), reporting progress while the model works.

        `report(pb.Progress)` sends a progress message every PROGRESS_INTERVAL_S while the
        scheduler is running forward passes (one in flight, or one finished since the last
        message), however slow each pass: a slow cloud is never silent. Nothing is sent while
        the model thread does not move, so a cloud whose model is stuck falls silent and the
        edge moves on.
        """
        task = asyncio.ensure_future(answer)
        passes = self.scheduler.forward_passes
        try:
            while not (await asyncio.wait({task}, timeout=PROGRESS_INTERVAL_S))[0]:
                if self.scheduler.pass_started is not None or self.scheduler.forward_passes != passes:
                    passes = self.scheduler.forward_passes
                    await report(self._progress(session))
            return task.result()
        finally:
            task.cancel()

    @staticmethod
    def _progress(session: VerifierSession) -> pb.Progress:
        return pb.Progress(prefilled_tokens=session.prefilled, prefill_tokens=session.prefill_length)

    def _session(self, request: SessionOpen) -> VerifierSession:
        return VerifierSession(self.model, request, self.limits, self.prefix_cache, self.scheduler.kv)

    async def _release(self, session_id: int, session: VerifierSession) -> None:
        """Frees the session's KV cache, then its reservation.

        The close waits for the step in flight (a cancelled call does not stop the model
        thread), and runs even if this call is cancelled again.
        """
        try:
            await self.scheduler.close(session)
        finally:
            self.registry.remove(session_id)
