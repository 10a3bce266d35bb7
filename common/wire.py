"""Boundary dataclasses: what crosses the wire, as plain Python values.

Servicers and clients convert with from_pb()/to_pb() and hand these to domain code, so the
domain never touches protobuf objects.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np

from common import sampling
from common.errors import InvalidArgument
from common.pb.tandem.v1 import tandem_pb2 as pb
from common.special_tokens import SpecialTokens


class FinishReason(enum.IntEnum):
    NONE = pb.FINISH_REASON_UNSPECIFIED
    STOP = pb.FINISH_REASON_STOP
    LENGTH = pb.FINISH_REASON_LENGTH
    CONTEXT = pb.FINISH_REASON_CONTEXT

    @property
    def label(self) -> str | None:
        """OpenAI-style name ("stop", "length"), None while unfinished."""
        return {FinishReason.NONE: None, FinishReason.STOP: "stop"}.get(self, "length")


class DraftMode(enum.IntEnum):
    TOKEN_IDS = pb.DRAFT_MODE_TOKEN_IDS
    SPARSE_Q = pb.DRAFT_MODE_SPARSE_Q

    @classmethod
    def from_pb(cls, value: int) -> DraftMode:
        if value == pb.DRAFT_MODE_UNSPECIFIED:
            return cls.TOKEN_IDS
        try:
            return cls(value)
        except ValueError:  # proto3 enums are open: a newer or hostile peer may send any number
            raise InvalidArgument(f"unknown draft_mode {value}") from None


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None  # None: not chosen yet (the edge picks one before a session opens)
    # Penalties and biases (common.sampling.penalize; the proto's SamplingParams); 0 / 1 / () disable.
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias), by token id

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    @property
    def penalizes(self) -> bool:
        """Whether penalties or biases change the logits (then common.sampling.penalize applies)."""
        return bool(self.frequency_penalty or self.presence_penalty or self.repetition_penalty not in (0.0, 1.0)
                    or self.logit_bias)

    def penalize(self, logits: np.ndarray, prompt_ids, output_ids) -> np.ndarray:
        """The logits ([vocab]) after prompt_ids + output_ids with these penalties and biases."""
        return sampling.penalize(logits, prompt_ids, output_ids, self.frequency_penalty, self.presence_penalty,
                                 self.repetition_penalty, self.logit_bias)

    @classmethod
    def from_pb(cls, m: pb.SamplingParams) -> SamplingParams:
        top_p = m.top_p if 0.0 < m.top_p < 1.0 else 1.0
        return cls(temperature=m.temperature, top_k=m.top_k, top_p=top_p, seed=m.seed,
                   frequency_penalty=m.frequency_penalty, presence_penalty=m.presence_penalty,
                   repetition_penalty=m.repetition_penalty or 1.0,
                   logit_bias=tuple(sorted((int(t), float(b)) for t, b in m.logit_bias.items())))

    def to_pb(self) -> pb.SamplingParams:
        return pb.SamplingParams(
            temperature=self.temperature, top_k=self.top_k, top_p=self.top_p, seed=self.seed or 0,
            frequency_penalty=self.frequency_penalty, presence_penalty=self.presence_penalty,
            repetition_penalty=self.repetition_penalty, logit_bias=dict(self.logit_bias),
        )


@dataclass(frozen=True)
class SessionOpen:
    prompt_token_ids: list[int]
    max_new_tokens: int
    sampling: SamplingParams = SamplingParams()
    stop_token_ids: list[int] = field(default_factory=list)
    tokenizer_fingerprint: str = ""
    draft_model_name: str = ""
    draft_mode: DraftMode = DraftMode.TOKEN_IDS
    resume_token_ids: list[int] = field(default_factory=list)
    stop_strings: list[str] = field(default_factory=list)
    grammar: str = ""  # an llguidance grammar over the generated tokens (common/grammar.py); "" for none
    logprobs: int | None = None  # None: no log-probabilities; N: each token's and the N most likely

    @classmethod
    def from_pb(cls, m: pb.SessionOpen) -> SessionOpen:
        return cls(
            prompt_token_ids=list(m.prompt_token_ids),
            max_new_tokens=m.max_new_tokens,
            sampling=SamplingParams.from_pb(m.sampling),
            stop_token_ids=list(m.stop_token_ids),
            tokenizer_fingerprint=m.tokenizer_fingerprint,
            draft_model_name=m.draft_model_name,
            draft_mode=DraftMode.from_pb(m.draft_mode),
            resume_token_ids=list(m.resume_token_ids),
            stop_strings=list(m.stop_strings),
            grammar=m.grammar,
            logprobs=m.logprobs if m.HasField("logprobs") else None,
        )

    def to_pb(self) -> pb.SessionOpen:
        return pb.SessionOpen(
            prompt_token_ids=self.prompt_token_ids,
            max_new_tokens=self.max_new_tokens,
            sampling=self.sampling.to_pb(),
            stop_token_ids=self.stop_token_ids,
            tokenizer_fingerprint=self.tokenizer_fingerprint,
            draft_model_name=self.draft_model_name,
            draft_mode=int(self.draft_mode),
            resume_token_ids=self.resume_token_ids,
            stop_strings=self.stop_strings,
            grammar=self.grammar,
            logprobs=self.logprobs,
        )


@dataclass(frozen=True)
class TokenLogprob:
    """A committed token's log-probability and the most likely alternatives at its position."""

    logprob: float
    top_ids: list[int] = field(default_factory=list)
    top_logprobs: list[float] = field(default_factory=list)

    @classmethod
    def of(cls, logits: np.ndarray, token: int, top_n: int, temperature: float) -> TokenLogprob:
        """From the adjusted logits ([vocab]) at the token's position (common.sampling.served_logprobs)."""
        logprobs = sampling.served_logprobs(logits, temperature)
        top = sampling.top_tokens(logprobs, top_n)
        return cls(float(logprobs[token]), [int(i) for i in top], [float(logprobs[i]) for i in top])

    @classmethod
    def from_pb(cls, m: pb.TokenLogprob) -> TokenLogprob:
        return cls(m.logprob, list(m.top_ids), list(m.top_logprobs))

    def to_pb(self) -> pb.TokenLogprob:
        return pb.TokenLogprob(logprob=self.logprob, top_ids=self.top_ids, top_logprobs=self.top_logprobs)


def _logprob_of(m, name: str = "logprob") -> TokenLogprob | None:
    return TokenLogprob.from_pb(getattr(m, name)) if m.HasField(name) else None


@dataclass(frozen=True)
class SparseDist:
    """A quantized, truncated draft distribution (see common.sampling.quantize_probs)."""

    token_ids: list[int]
    weights: list[int]

    @classmethod
    def from_pb(cls, m: pb.SparseDist) -> SparseDist:
        return cls(token_ids=list(m.token_ids), weights=list(m.probs_u16))

    def to_pb(self) -> pb.SparseDist:
        return pb.SparseDist(token_ids=self.token_ids, probs_u16=self.weights)


@dataclass(frozen=True)
class DraftBlock:
    start_position: int
    token_ids: list[int]
    draft_dists: list[SparseDist] = field(default_factory=list)

    @classmethod
    def from_pb(cls, m: pb.DraftBlock) -> DraftBlock:
        return cls(
            start_position=m.start_position,
            token_ids=list(m.token_ids),
            draft_dists=[SparseDist.from_pb(d) for d in m.draft_dists],
        )

    def to_pb(self) -> pb.DraftBlock:
        return pb.DraftBlock(
            start_position=self.start_position,
            token_ids=self.token_ids,
            draft_dists=[d.to_pb() for d in self.draft_dists],
        )


@dataclass(frozen=True)
class SessionStarted:
    position: int
    token_id: int | None
    finish_reason: FinishReason = FinishReason.NONE
    forward_passes: int = 0
    replica: str = ""  # the replica serving the session ("" when the server does not say)
    decode_step_us: int = 0  # the cloud's time per token for this session decoding alone (0: unknown)
    logprob: TokenLogprob | None = None  # token_id's, when the session asked for log-probabilities

    @classmethod
    def from_pb(cls, m: pb.SessionStarted) -> SessionStarted:
        return cls(
            position=m.position,
            token_id=m.token_id if m.HasField("token_id") else None,
            finish_reason=FinishReason(m.finish_reason),
            forward_passes=m.forward_passes,
            replica=m.replica,
            decode_step_us=m.decode_step_us,
            logprob=_logprob_of(m),
        )

    def to_pb(self) -> pb.SessionStarted:
        return pb.SessionStarted(
            position=self.position,
            token_id=self.token_id,
            finish_reason=int(self.finish_reason),
            forward_passes=self.forward_passes,
            replica=self.replica,
            decode_step_us=self.decode_step_us,
            logprob=self.logprob.to_pb() if self.logprob is not None else None,
        )


@dataclass(frozen=True)
class Verdict:
    start_position: int
    accepted_count: int
    next_token: int | None
    finish_reason: FinishReason = FinishReason.NONE
    stale: bool = False
    forward_passes: int = 0
    decode_step_us: int = 0  # the cloud's time per token for this session decoding alone (0: unknown)
    max_drafts: int | None = None  # goodput shaping: the cloud asks for at most this many drafts per block
    logprobs: list[TokenLogprob] = field(default_factory=list)  # one per committed token, when asked for

    @classmethod
    def from_pb(cls, m: pb.Verdict) -> Verdict:
        return cls(
            start_position=m.start_position,
            accepted_count=m.accepted_count,
            next_token=m.next_token if m.HasField("next_token") else None,
            finish_reason=FinishReason(m.finish_reason),
            stale=m.stale,
            forward_passes=m.forward_passes,
            decode_step_us=m.decode_step_us,
            max_drafts=m.max_drafts if m.HasField("max_drafts") else None,
            logprobs=[TokenLogprob.from_pb(lp) for lp in m.logprobs],
        )

    def to_pb(self) -> pb.Verdict:
        return pb.Verdict(
            start_position=self.start_position,
            accepted_count=self.accepted_count,
            next_token=self.next_token,
            finish_reason=int(self.finish_reason),
            stale=self.stale,
            forward_passes=self.forward_passes,
            decode_step_us=self.decode_step_us,
            max_drafts=self.max_drafts,
            logprobs=[lp.to_pb() for lp in self.logprobs],
        )


@dataclass(frozen=True)
class DecodeHint:
    """The edge's guesses of the tokens the cloud decodes next: token_ids[0], at start_position,
    is the anchor they follow (see the proto)."""

    start_position: int
    token_ids: list[int]

    @classmethod
    def from_pb(cls, m: pb.DecodeHint) -> DecodeHint:
        if len(m.token_ids) < 2:
            raise InvalidArgument("DecodeHint.token_ids must hold the anchor and at least one guess")
        return cls(start_position=m.start_position, token_ids=list(m.token_ids))

    def to_pb(self) -> pb.DecodeHint:
        return pb.DecodeHint(start_position=self.start_position, token_ids=self.token_ids)


# --- the cloud decoding on its own within a Speculate session (issue 19: never slower) -------


@dataclass(frozen=True)
class CloudDecode:
    """Asks the cloud to decode up to max_tokens tokens alone from start_position (see the proto)."""

    start_position: int
    max_tokens: int

    @property
    def end_position(self) -> int:
        """The position right after the last token this request may bring."""
        return self.start_position + self.max_tokens

    def retired(self, committed: int, finished: bool) -> bool:
        """Whether this request (one that continued the session) is done once the session has
        `committed` tokens: it began below that and ends there or before, or the session finished.
        With the edge's guesses (DecodeHint) one step may retire several requests."""
        return self.start_position < committed and (finished or self.end_position <= committed)

    @classmethod
    def from_pb(cls, m: pb.CloudDecode) -> CloudDecode:
        if m.max_tokens < 1:
            raise InvalidArgument("CloudDecode.max_tokens must be at least 1")
        return cls(start_position=m.start_position, max_tokens=m.max_tokens)

    def to_pb(self) -> pb.CloudDecode:
        return pb.CloudDecode(start_position=self.start_position, max_tokens=self.max_tokens)


@dataclass(frozen=True)
class DecodedToken:
    """One token the cloud decoded alone, or the answer to a stale CloudDecode (see the proto)."""

    position: int
    token_id: int | None
    finish_reason: FinishReason = FinishReason.NONE
    stale: bool = False
    forward_passes: int = 0  # on the last answer to a request only
    decode_step_us: int = 0  # on the last answer to a request only
    hinted_ids: tuple[int, ...] = ()  # hinted tokens committed right before token_id (DecodeHint)
    logprob: TokenLogprob | None = None  # token_id's, when the session asked for log-probabilities

    @property
    def ids(self) -> list[int]:
        """The tokens this answer commits, in order: the hinted ones, then the cloud's own."""
        return [*self.hinted_ids, *([] if self.token_id is None else [self.token_id])]

    @property
    def first_position(self) -> int:
        """Position of ids[0]."""
        return self.position - len(self.hinted_ids)

    @classmethod
    def from_pb(cls, m: pb.DecodedToken) -> DecodedToken:
        if len(m.hinted_ids) > m.position:
            raise InvalidArgument("DecodedToken.hinted_ids reach before position 0")
        return cls(
            position=m.position,
            token_id=m.token_id if m.HasField("token_id") else None,
            finish_reason=FinishReason(m.finish_reason),
            stale=m.stale,
            forward_passes=m.forward_passes,
            decode_step_us=m.decode_step_us,
            hinted_ids=tuple(m.hinted_ids),
            logprob=_logprob_of(m),
        )

    def to_pb(self) -> pb.DecodedToken:
        return pb.DecodedToken(
            position=self.position,
            token_id=self.token_id,
            finish_reason=int(self.finish_reason),
            stale=self.stale,
            forward_passes=self.forward_passes,
            decode_step_us=self.decode_step_us,
            hinted_ids=list(self.hinted_ids),
            logprob=self.logprob.to_pb() if self.logprob is not None else None,
        )


@dataclass(frozen=True)
class GenerateRequest:
    """The cloud-only baseline: the cloud generates alone, one token per message."""

    prompt_token_ids: list[int] = field(default_factory=list)
    max_new_tokens: int = 0
    sampling: SamplingParams = SamplingParams()
    stop_token_ids: list[int] = field(default_factory=list)
    stop_strings: list[str] = field(default_factory=list)
    prompt_text: str = ""  # tokenized by the cloud when prompt_token_ids is empty
    return_text: bool = False  # each step also carries the text its token completes
    resume_token_ids: list[int] = field(default_factory=list)  # generated before a broken stream (resume)
    grammar: str = ""  # structured output: an llguidance grammar (common/grammar.py); "" for none
    logprobs: int | None = None  # as SessionOpen.logprobs

    @classmethod
    def from_pb(cls, m: pb.GenerateRequest) -> GenerateRequest:
        return cls(
            prompt_token_ids=list(m.prompt_token_ids),
            max_new_tokens=m.max_new_tokens,
            sampling=SamplingParams.from_pb(m.sampling),
            stop_token_ids=list(m.stop_token_ids),
            stop_strings=list(m.stop_strings),
            prompt_text=m.prompt_text,
            return_text=m.return_text,
            resume_token_ids=list(m.resume_token_ids),
            grammar=m.grammar,
            logprobs=m.logprobs if m.HasField("logprobs") else None,
        )

    def to_pb(self) -> pb.GenerateRequest:
        return pb.GenerateRequest(
            prompt_token_ids=self.prompt_token_ids,
            max_new_tokens=self.max_new_tokens,
            sampling=self.sampling.to_pb(),
            stop_token_ids=self.stop_token_ids,
            stop_strings=self.stop_strings,
            prompt_text=self.prompt_text,
            return_text=self.return_text,
            resume_token_ids=self.resume_token_ids,
            grammar=self.grammar,
            logprobs=self.logprobs,
        )

    def session_open(self, *, tokenizer_fingerprint: str, draft_model_name: str,
                     draft_mode: DraftMode = DraftMode.TOKEN_IDS, prompt_token_ids: list[int] | None = None
                     ) -> SessionOpen:
        """The session that answers this request: the one mapping of an answer's fields onto
        SessionOpen, for the edge's Speculate streams and the cloud's Generate alike.
        prompt_token_ids: the prompt, when the cloud tokenized prompt_text."""
        return SessionOpen(
            prompt_token_ids=list(self.prompt_token_ids if prompt_token_ids is None else prompt_token_ids),
            max_new_tokens=self.max_new_tokens,
            sampling=self.sampling,
            stop_token_ids=list(self.stop_token_ids),
            tokenizer_fingerprint=tokenizer_fingerprint,
            draft_model_name=draft_model_name,
            draft_mode=draft_mode,
            resume_token_ids=list(self.resume_token_ids),
            stop_strings=list(self.stop_strings),
            grammar=self.grammar,
            logprobs=self.logprobs,
        )


@dataclass(frozen=True)
class GenerateStep:
    """One GenerateResponse: a token (or none, on a finish without one) at a position, or the
    cloud's progress before the first token."""

    position: int
    token_id: int | None
    finish_reason: FinishReason = FinishReason.NONE
    text: str = ""
    forward_passes: int = 0  # sent once, with the finish
    replica: str = ""  # the replica serving the call; on the first step only
    progress: Progress | None = None  # set only on a progress message
    logprob: TokenLogprob | None = None  # token_id's, when the request asked for log-probabilities

    @classmethod
    def from_pb(cls, m: pb.GenerateResponse) -> GenerateStep:
        return cls(
            position=m.position,
            token_id=m.token_id if m.HasField("token_id") else None,
            finish_reason=FinishReason(m.finish_reason),
            text=m.text,
            forward_passes=m.forward_passes,
            replica=m.replica,
            progress=Progress.from_pb(m.progress) if m.HasField("progress") else None,
            logprob=_logprob_of(m),
        )

    def to_pb(self) -> pb.GenerateResponse:
        return pb.GenerateResponse(
            position=self.position,
            token_id=self.token_id,
            finish_reason=int(self.finish_reason),
            text=self.text,
            forward_passes=self.forward_passes,
            replica=self.replica,
            progress=self.progress.to_pb() if self.progress is not None else None,
            logprob=self.logprob.to_pb() if self.logprob is not None else None,
        )


@dataclass(frozen=True)
class Progress:
    """The cloud at work on a session with no answer ready yet (see the proto's Progress)."""

    prefilled_tokens: int
    prefill_tokens: int

    @classmethod
    def from_pb(cls, m: pb.Progress) -> Progress:
        return cls(prefilled_tokens=m.prefilled_tokens, prefill_tokens=m.prefill_tokens)

    def to_pb(self) -> pb.Progress:
        return pb.Progress(prefilled_tokens=self.prefilled_tokens, prefill_tokens=self.prefill_tokens)


@dataclass(frozen=True)
class ModelInfo:
    model_name: str
    vocab_size: int
    tokenizer_fingerprint: str
    eos_token_ids: list[int]
    max_context: int
    max_prompt_tokens: int = 0
    max_draft_tokens: int = 0
    max_new_tokens: int = 0
    max_draft_top_k: int = 0
    chat_template: str = ""
    max_stop_tokens: int = 0
    idle_timeout_s: float = 0.0  # 0: the cloud never times out an idle stream
    replica: str = ""  # the replica that answered Info
    special_tokens: SpecialTokens = SpecialTokens()  # the target's BOS/EOS rules
    max_hint_tokens: int = 0  # 0: the cloud takes no DecodeHint

    @classmethod
    def from_pb(cls, m: pb.InfoResponse) -> ModelInfo:
        return cls(
            model_name=m.model_name,
            vocab_size=m.vocab_size,
            tokenizer_fingerprint=m.tokenizer_fingerprint,
            eos_token_ids=list(m.eos_token_ids),
            max_context=m.max_context,
            max_prompt_tokens=m.limits.max_prompt_tokens,
            max_draft_tokens=m.limits.max_draft_tokens,
            max_new_tokens=m.limits.max_new_tokens,
            max_draft_top_k=m.limits.max_draft_top_k,
            chat_template=m.chat_template,
            max_stop_tokens=m.limits.max_stop_tokens,
            idle_timeout_s=m.limits.idle_timeout_ms / 1000,
            max_hint_tokens=m.limits.max_hint_tokens,
            replica=m.replica,
            special_tokens=special_tokens_from_pb(m.special_tokens),
        )

    def to_pb(self) -> pb.InfoResponse:
        return pb.InfoResponse(
            model_name=self.model_name,
            vocab_size=self.vocab_size,
            tokenizer_fingerprint=self.tokenizer_fingerprint,
            eos_token_ids=self.eos_token_ids,
            max_context=self.max_context,
            limits=pb.Limits(
                max_prompt_tokens=self.max_prompt_tokens,
                max_draft_tokens=self.max_draft_tokens,
                max_new_tokens=self.max_new_tokens,
                max_draft_top_k=self.max_draft_top_k,
                max_stop_tokens=self.max_stop_tokens,
                idle_timeout_ms=round(self.idle_timeout_s * 1000),
                max_hint_tokens=self.max_hint_tokens,
            ),
            chat_template=self.chat_template,
            replica=self.replica,
            special_tokens=special_tokens_to_pb(self.special_tokens),
        )


def special_tokens_from_pb(m: pb.SpecialTokens) -> SpecialTokens:
    bos = m.bos_token_id if m.HasField("bos_token_id") else None
    eos = m.eos_token_id if m.HasField("eos_token_id") else None
    try:
        return SpecialTokens(bos, m.bos_token, m.add_bos_token, eos, m.eos_token, m.add_eos_token)
    except ValueError as exc:
        raise InvalidArgument(f"special_tokens: {exc}") from None


def special_tokens_to_pb(s: SpecialTokens) -> pb.SpecialTokens:
    return pb.SpecialTokens(bos_token_id=s.bos_token_id, bos_token=s.bos_token, add_bos_token=s.add_bos,
                            eos_token_id=s.eos_token_id, eos_token=s.eos_token, add_eos_token=s.add_eos)


@dataclass(frozen=True)
class TokenizerChunk:
    """One piece of one file of the target's tokenizer (GetTokenizer), as sent: `data` is zlib
    when `zlib` is set; `offset` and `file_size` count the file's uncompressed bytes."""

    file_name: str
    offset: int
    file_size: int
    data: bytes
    zlib: bool = False
    tokenizer_fingerprint: str = ""  # the files' fingerprint, on the stream's first chunk only

    @classmethod
    def from_pb(cls, m: pb.TokenizerChunk) -> TokenizerChunk:
        return cls(file_name=m.file_name, offset=m.offset, file_size=m.file_size, data=m.data, zlib=m.zlib,
                   tokenizer_fingerprint=m.tokenizer_fingerprint)

    def to_pb(self) -> pb.TokenizerChunk:
        return pb.TokenizerChunk(file_name=self.file_name, offset=self.offset, file_size=self.file_size,
                                 data=self.data, zlib=self.zlib, tokenizer_fingerprint=self.tokenizer_fingerprint)
