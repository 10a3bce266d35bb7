"""The Tandem gRPC servicer: translates messages and calls domain code, nothing more.

Each RPC decodes its request, opens a session (`_live_session`: admission, freeing), hands the
model work to the Scheduler (cloud/scheduler.py, which batches all sessions) and encodes the
answers. The machinery lives beside it: cloud/call_stream.py (idle timeout, a read cut short
by a drain), cloud/progress.py (heartbeats while the model works), cloud/generate_call.py
(Generate's request and step messages). Errors are raised as common.errors exceptions and
become statuses in cloud/errors.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from cloud import decode_call, generate_call
from cloud.call_stream import DRAIN, CallStream
from cloud.limits import SessionLimits
from cloud.prefix_cache import PrefixCache
from cloud.progress import progress_of, with_progress
from cloud.registry import SessionRegistry
from cloud.scheduler import Scheduler
from cloud.session import VerifierSession
from cloud.target_engine import TargetEngine
from cloud.tokenizer_files import TokenizerFiles
from common.errors import Draining, InvalidArgument
from common.pb.tandem.v1 import tandem_pb2 as pb
from common.pb.tandem.v1 import tandem_pb2_grpc as pb_grpc
from common.wire import CloudDecode, DraftBlock, GenerateRequest, ModelInfo, SessionOpen

if TYPE_CHECKING:
    from cloud.metrics import CloudMetrics

log = logging.getLogger(__name__)


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
        self.tokenizer_files = TokenizerFiles(model)  # made on the first GetTokenizer

    def drain(self) -> None:
        """Refuses new sessions and tells the live ones to resume on another replica."""
        self.draining.set()

    async def Info(self, request, context):
        return self.info().to_pb()

    async def GetTokenizer(self, request, context):
        for chunk in await self.tokenizer_files.chunks(request.max_chunk_bytes, request.accept_zlib):
            yield chunk.to_pb()

    async def Speculate(self, request_iterator, context):
        stream = CallStream(context, self.idle_timeout_s, self.draining)  # not the request iterator: idle timeout
        request = await stream.read()
        if request is None:
            return
        if request.WhichOneof("kind") != "open":
            raise InvalidArgument("the first message of a Speculate stream must be `open`")
        async with self._live_session("Speculate", SessionOpen.from_pb(request.open)) as session:
            report = lambda progress: stream.write(pb.SpeculateResponse(progress=progress))  # noqa: E731
            await report(progress_of(session))  # the acknowledgement, before any model work
            started = await with_progress(self.scheduler.start(session), self.scheduler, session, report)
            started = dataclasses.replace(started, replica=self.replica)
            await stream.write(pb.SpeculateResponse(started=started.to_pb()))
            ahead = None  # the read of the next request, begun while the cloud decoded alone
            while (request := await (ahead or stream.next_or_drain())) is not None:
                ahead = None
                if request is DRAIN:
                    await stream.write(pb.SpeculateResponse(drain=self._drain_notice()))
                    return
                if request.WhichOneof("kind") == "decode":
                    ahead = await decode_call.decode_alone(self.scheduler, session, stream,
                                                           CloudDecode.from_pb(request.decode))
                    continue
                if request.WhichOneof("kind") == "hint":
                    decode_call.take_hint(self.scheduler, session, request.hint)
                    continue
                if request.WhichOneof("kind") != "draft":
                    raise InvalidArgument("after `open`, a Speculate stream carries only `draft`, `decode` and `hint` "
                                          "messages")
                verify = self.scheduler.verify(session, DraftBlock.from_pb(request.draft))
                verdict = await with_progress(verify, self.scheduler, session, report)
                await stream.write(pb.SpeculateResponse(verdict=verdict.to_pb()))

    async def Generate(self, message, context):
        stream = CallStream(context, self.idle_timeout_s, self.draining)
        self._refuse_if_draining()
        request = GenerateRequest.from_pb(message)
        session_open = await generate_call.session_open(request, self.model, self.scheduler)
        async with self._live_session("Generate", session_open) as session:
            messages = generate_call.StepMessages(self.model, request.return_text, self.replica)
            report = lambda progress: stream.write(pb.GenerateResponse(progress=progress))  # noqa: E731
            steps = self.scheduler.generate(session)
            await report(progress_of(session))  # the acknowledgement, before any model work
            first = await with_progress(anext(steps), self.scheduler, session, report)
            async for step in _prepend(first, steps):
                await stream.write(messages.step(step, session.forward_passes).to_pb())
                if not step.finish_reason and self.draining.is_set():
                    await stream.write(pb.GenerateResponse(position=step.position + 1, drain=self._drain_notice()))
                    return

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
            max_hint_tokens=lim.max_hint_tokens,
            max_new_tokens=lim.max_new_tokens,
            max_draft_top_k=lim.max_draft_top_k,
            chat_template=m.chat_template,
            max_stop_tokens=lim.max_stop_tokens,
            idle_timeout_s=self.idle_timeout_s,
            replica=self.replica,
            special_tokens=m.special,
        )

    @contextlib.asynccontextmanager
    async def _live_session(self, rpc: str, request: SessionOpen) -> AsyncIterator[VerifierSession]:
        """A session admitted (not while draining; within the registry's limits), freed on the way out.

        Freeing waits for the step in flight (a cancelled call does not stop the model thread),
        then drops the reservation, and runs even if the call is cancelled again.
        """
        self._refuse_if_draining()
        session = VerifierSession(self.model, request, self.limits, self.prefix_cache, self.scheduler.kv)
        session_id = self.registry.add(session)
        if self.metrics is not None and request.resume_token_ids:
            self.metrics.resumed_sessions.labels(rpc=rpc).inc()
        try:
            yield session
        finally:
            try:
                await self.scheduler.close(session)
            finally:
                self.registry.remove(session_id)

    def _refuse_if_draining(self) -> None:
        if self.draining.is_set():
            raise Draining(f"replica {self.replica} is draining (shutting down); retry on another replica")

    def _drain_notice(self) -> pb.DrainNotice:
        if self.metrics is not None:
            self.metrics.drain_notices.inc()
        return pb.DrainNotice(replica=self.replica, reason="replica shutting down")


async def _prepend(first, rest):
    yield first
    async for item in rest:
        yield item
