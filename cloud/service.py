"""The Tandem gRPC servicer: translates messages and calls domain code, nothing more.

Model work goes to the Scheduler (cloud/scheduler.py), which batches all sessions; errors are raised as common.errors exceptions and
become statuses in cloud/errors.py.
"""

from __future__ import annotations

import logging

from cloud.limits import SessionLimits
from cloud.prefix_cache import PrefixCache
from cloud.registry import SessionRegistry
from cloud.session import VerifierSession
from cloud.scheduler import Scheduler
from cloud.streams import CallStream
from cloud.target_engine import TargetEngine
from common.detok import IncrementalDetokenizer
from common.errors import InvalidArgument
from common.pb.tandem.v1 import tandem_pb2 as pb
from common.pb.tandem.v1 import tandem_pb2_grpc as pb_grpc
from common.wire import DraftBlock, DraftMode, GenerateRequest, GenerateStep, ModelInfo, SessionOpen

log = logging.getLogger(__name__)


class TandemService(pb_grpc.TandemServicer):
    def __init__(self, model: TargetEngine, scheduler: Scheduler, registry: SessionRegistry, limits: SessionLimits,
                 prefix_cache: PrefixCache | None = None, idle_timeout_s: float = 0.0):
        self.model = model
        self.scheduler = scheduler
        self.registry = registry
        self.limits = limits
        self.prefix_cache = prefix_cache  # touched only on the scheduler's model thread
        self.idle_timeout_s = idle_timeout_s  # 0: streams may stay idle forever

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
        session = self._session(SessionOpen.from_pb(request.open))
        session_id = self.registry.add(session)
        try:
            started = await self.scheduler.start(session)
            await stream.write(pb.SpeculateResponse(started=started.to_pb()))
            while (request := await stream.read()) is not None:
                if request.WhichOneof("kind") != "draft":
                    raise InvalidArgument("after `open`, a Speculate stream carries only `draft` messages")
                verdict = await self.scheduler.verify(session, DraftBlock.from_pb(request.draft))
                await stream.write(pb.SpeculateResponse(verdict=verdict.to_pb()))
        finally:
            await self._release(session_id, session)

    async def Generate(self, message, context):
        stream = CallStream(context, self.idle_timeout_s)
        request = GenerateRequest.from_pb(message)
        prompt = request.prompt_token_ids
        if request.prompt_text and prompt:
            raise InvalidArgument("give prompt_token_ids or prompt_text, not both")
        if request.prompt_text:
            prompt = await self.scheduler.run(self.model.tokenize, request.prompt_text)
        open_request = SessionOpen(
            prompt_token_ids=prompt,
            max_new_tokens=request.max_new_tokens,
            sampling=request.sampling,
            stop_token_ids=request.stop_token_ids,
            tokenizer_fingerprint=self.model.fingerprint,
            draft_model_name="(cloud-only)",
            draft_mode=DraftMode.TOKEN_IDS,
            stop_strings=request.stop_strings,
        )
        session = self._session(open_request)
        detok = IncrementalDetokenizer(self.model.token_bytes) if request.return_text else None
        session_id = self.registry.add(session)
        try:
            async for step in self.scheduler.generate(session):
                token, finish = step.token_id, step.finish_reason
                text = detok.push([token]) if detok and token is not None else ""
                if detok and finish:
                    text += detok.flush()
                await stream.write(GenerateStep(step.position, token, finish, text,
                                                forward_passes=session.forward_passes if finish else 0).to_pb())
        finally:
            await self._release(session_id, session)

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
