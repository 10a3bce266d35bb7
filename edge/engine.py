"""The edge runtime: one local draft model, one cloud connection, three ways to generate.

- hybrid: the draft proposes, the cloud verifies (Speculate); output is the cloud model's.
- cloud: the cloud generates alone (Generate); the baseline.
- edge: the local model generates alone; no network.
"""

from __future__ import annotations

import asyncio
import enum
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace

from common.errors import FailedPrecondition, InvalidArgument
from common.pb.tandem.v1 import tandem_pb2 as pb
from common.types import DraftMode, FinishReason, ModelInfo, SamplingParams, SessionOpen
from edge.client import CloudClient
from edge.drafter import ContextFull
from edge.drafting import DraftPolicy
from edge.speculative import GenerationStats, SpeculationConfig, SpeculativeRun


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


@dataclass
class Generation:
    """State of one generation, updated while its token stream is consumed."""

    mode: Mode
    token_ids: list[int] = field(default_factory=list)
    finish_reason: FinishReason = FinishReason.NONE
    stats: GenerationStats = field(default_factory=GenerationStats)


class EdgeEngine:
    def __init__(self, drafter, client: CloudClient | None, config: SpeculationConfig | None = None):
        self.drafter = drafter
        self.client = client
        self.config = config or SpeculationConfig()
        self.cloud_info: ModelInfo | None = None
        self._draft_lock = asyncio.Lock()  # one generation at a time drives the draft model

    async def connect(self) -> ModelInfo:
        """Fetches the cloud's model info and refuses a draft with a different tokenizer."""
        if self.client is None:
            raise FailedPrecondition("no cloud address configured")
        info = await self.client.info()
        if info.tokenizer_fingerprint != self.drafter.fingerprint:
            raise FailedPrecondition(
                f"tokenizer mismatch: draft model {self.drafter.name!r} (fingerprint "
                f"{self.drafter.fingerprint}) and cloud model {info.model_name!r} (fingerprint "
                f"{info.tokenizer_fingerprint}) tokenize text differently; pick a draft model of "
                "the target's tokenizer family"
            )
        self.cloud_info = info
        return info

    def with_seed(self, request: GenerationRequest) -> GenerationRequest:
        """Sampling always carries a seed, so draft and target can share position-keyed noise."""
        s = request.sampling
        if s.greedy or s.seed:
            return request
        seeded = SamplingParams(s.temperature, s.top_k, s.top_p, secrets.randbits(63))
        return GenerationRequest(request.prompt_token_ids, request.max_new_tokens, seeded,
                                 request.stop_token_ids, request.draft_mode)

    async def generate(self, request: GenerationRequest, mode: Mode, generation: Generation | None = None
                       ) -> AsyncIterator[list[int]]:
        """Yields newly generated token ids; `generation` (if given) collects ids, finish and stats."""
        if not request.prompt_token_ids:
            raise InvalidArgument("the prompt is empty")
        generation = generation or Generation(mode)
        request = self.with_seed(request)
        run = {Mode.HYBRID: self._hybrid, Mode.CLOUD: self._cloud, Mode.EDGE: self._edge}[mode]
        async with self._draft_lock:
            async for new in run(request, generation):
                generation.token_ids += new
                yield new

    async def _hybrid(self, request: GenerationRequest, generation: Generation) -> AsyncIterator[list[int]]:
        info = self.cloud_info or await self.connect()
        session = SessionOpen(
            prompt_token_ids=list(request.prompt_token_ids),
            max_new_tokens=request.max_new_tokens,
            sampling=request.sampling,
            stop_token_ids=list(request.stop_token_ids),
            tokenizer_fingerprint=self.drafter.fingerprint,
            draft_model_name=self.drafter.name,
            draft_mode=request.draft_mode,
        )
        config = self.config
        if info.max_draft_tokens > 2:  # a block carries its anchor and, pipelined, a guessed bonus token
            most = min(config.draft_tokens, info.max_draft_tokens - 2)
            config = replace(config, draft_tokens=most, min_draft_tokens=min(config.min_draft_tokens, most))
        run = SpeculativeRun(self.drafter, self.client.speculate(), session, config, generation.stats)
        run.stop_ids |= set(info.eos_token_ids)
        async for new in run.tokens():
            yield new
        generation.finish_reason = run.finish

    async def _cloud(self, request: GenerationRequest, generation: Generation) -> AsyncIterator[list[int]]:
        if self.client is None:
            raise FailedPrecondition("cloud mode needs a cloud address")
        stats = generation.stats
        message = pb.GenerateRequest(
            prompt_token_ids=request.prompt_token_ids,
            sampling=request.sampling.to_pb(),
            max_new_tokens=request.max_new_tokens,
            stop_token_ids=request.stop_token_ids,
        )
        stats.bytes_sent += message.ByteSize()
        async for response in self.client.generate(message):
            stats.bytes_received += response.ByteSize()
            new = [response.token_id] if response.HasField("token_id") else []
            stats.rounds += len(new)
            stats.cloud_forward_passes += len(new)
            stats.mark_tokens(len(new))
            generation.finish_reason = FinishReason(response.finish_reason)
            if new:
                yield new

    async def _edge(self, request: GenerationRequest, generation: Generation) -> AsyncIterator[list[int]]:
        policy = DraftPolicy(request.sampling)
        stop_ids = set(self.drafter.eos_token_ids) | set(request.stop_token_ids)
        context = list(request.prompt_token_ids)
        for _ in range(request.max_new_tokens):
            try:
                logits = await asyncio.to_thread(self.drafter.next_logits, context)
            except ContextFull:
                generation.finish_reason = FinishReason.CONTEXT
                return
            token = policy.choose(logits, len(context)).token_id
            context.append(token)
            generation.stats.mark_tokens(1)
            yield [token]
            if token in stop_ids:
                generation.finish_reason = FinishReason.STOP
                return
        generation.finish_reason = FinishReason.LENGTH
