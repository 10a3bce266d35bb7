from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DraftMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DRAFT_MODE_UNSPECIFIED: _ClassVar[DraftMode]
    DRAFT_MODE_TOKEN_IDS: _ClassVar[DraftMode]
    DRAFT_MODE_SPARSE_Q: _ClassVar[DraftMode]

class FinishReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FINISH_REASON_UNSPECIFIED: _ClassVar[FinishReason]
    FINISH_REASON_STOP: _ClassVar[FinishReason]
    FINISH_REASON_LENGTH: _ClassVar[FinishReason]
    FINISH_REASON_CONTEXT: _ClassVar[FinishReason]
DRAFT_MODE_UNSPECIFIED: DraftMode
DRAFT_MODE_TOKEN_IDS: DraftMode
DRAFT_MODE_SPARSE_Q: DraftMode
FINISH_REASON_UNSPECIFIED: FinishReason
FINISH_REASON_STOP: FinishReason
FINISH_REASON_LENGTH: FinishReason
FINISH_REASON_CONTEXT: FinishReason

class InfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class InfoResponse(_message.Message):
    __slots__ = ("model_name", "vocab_size", "tokenizer_fingerprint", "eos_token_ids", "max_context", "limits", "chat_template", "replica", "special_tokens")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    EOS_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    MAX_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    CHAT_TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    SPECIAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    vocab_size: int
    tokenizer_fingerprint: str
    eos_token_ids: _containers.RepeatedScalarFieldContainer[int]
    max_context: int
    limits: Limits
    chat_template: str
    replica: str
    special_tokens: SpecialTokens
    def __init__(self, model_name: _Optional[str] = ..., vocab_size: _Optional[int] = ..., tokenizer_fingerprint: _Optional[str] = ..., eos_token_ids: _Optional[_Iterable[int]] = ..., max_context: _Optional[int] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., chat_template: _Optional[str] = ..., replica: _Optional[str] = ..., special_tokens: _Optional[_Union[SpecialTokens, _Mapping]] = ...) -> None: ...

class SpecialTokens(_message.Message):
    __slots__ = ("bos_token_id", "bos_token", "add_bos_token", "eos_token_id", "eos_token", "add_eos_token")
    BOS_TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    BOS_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ADD_BOS_TOKEN_FIELD_NUMBER: _ClassVar[int]
    EOS_TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    EOS_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ADD_EOS_TOKEN_FIELD_NUMBER: _ClassVar[int]
    bos_token_id: int
    bos_token: str
    add_bos_token: bool
    eos_token_id: int
    eos_token: str
    add_eos_token: bool
    def __init__(self, bos_token_id: _Optional[int] = ..., bos_token: _Optional[str] = ..., add_bos_token: _Optional[bool] = ..., eos_token_id: _Optional[int] = ..., eos_token: _Optional[str] = ..., add_eos_token: _Optional[bool] = ...) -> None: ...

class Limits(_message.Message):
    __slots__ = ("max_prompt_tokens", "max_draft_tokens", "max_new_tokens", "max_draft_top_k", "max_stop_tokens", "idle_timeout_ms", "max_hint_tokens")
    MAX_PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_DRAFT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_DRAFT_TOP_K_FIELD_NUMBER: _ClassVar[int]
    MAX_STOP_TOKENS_FIELD_NUMBER: _ClassVar[int]
    IDLE_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_HINT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    max_prompt_tokens: int
    max_draft_tokens: int
    max_new_tokens: int
    max_draft_top_k: int
    max_stop_tokens: int
    idle_timeout_ms: int
    max_hint_tokens: int
    def __init__(self, max_prompt_tokens: _Optional[int] = ..., max_draft_tokens: _Optional[int] = ..., max_new_tokens: _Optional[int] = ..., max_draft_top_k: _Optional[int] = ..., max_stop_tokens: _Optional[int] = ..., idle_timeout_ms: _Optional[int] = ..., max_hint_tokens: _Optional[int] = ...) -> None: ...

class SamplingParams(_message.Message):
    __slots__ = ("temperature", "top_k", "top_p", "seed", "frequency_penalty", "presence_penalty", "repetition_penalty", "logit_bias")
    class LogitBiasEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: float
        def __init__(self, key: _Optional[int] = ..., value: _Optional[float] = ...) -> None: ...
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    FREQUENCY_PENALTY_FIELD_NUMBER: _ClassVar[int]
    PRESENCE_PENALTY_FIELD_NUMBER: _ClassVar[int]
    REPETITION_PENALTY_FIELD_NUMBER: _ClassVar[int]
    LOGIT_BIAS_FIELD_NUMBER: _ClassVar[int]
    temperature: float
    top_k: int
    top_p: float
    seed: int
    frequency_penalty: float
    presence_penalty: float
    repetition_penalty: float
    logit_bias: _containers.ScalarMap[int, float]
    def __init__(self, temperature: _Optional[float] = ..., top_k: _Optional[int] = ..., top_p: _Optional[float] = ..., seed: _Optional[int] = ..., frequency_penalty: _Optional[float] = ..., presence_penalty: _Optional[float] = ..., repetition_penalty: _Optional[float] = ..., logit_bias: _Optional[_Mapping[int, float]] = ...) -> None: ...

class SessionOpen(_message.Message):
    __slots__ = ("prompt_token_ids", "sampling", "max_new_tokens", "stop_token_ids", "tokenizer_fingerprint", "draft_model_name", "draft_mode", "resume_token_ids", "stop_strings", "grammar", "logprobs")
    PROMPT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    STOP_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    DRAFT_MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    DRAFT_MODE_FIELD_NUMBER: _ClassVar[int]
    RESUME_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    STOP_STRINGS_FIELD_NUMBER: _ClassVar[int]
    GRAMMAR_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    prompt_token_ids: _containers.RepeatedScalarFieldContainer[int]
    sampling: SamplingParams
    max_new_tokens: int
    stop_token_ids: _containers.RepeatedScalarFieldContainer[int]
    tokenizer_fingerprint: str
    draft_model_name: str
    draft_mode: DraftMode
    resume_token_ids: _containers.RepeatedScalarFieldContainer[int]
    stop_strings: _containers.RepeatedScalarFieldContainer[str]
    grammar: str
    logprobs: int
    def __init__(self, prompt_token_ids: _Optional[_Iterable[int]] = ..., sampling: _Optional[_Union[SamplingParams, _Mapping]] = ..., max_new_tokens: _Optional[int] = ..., stop_token_ids: _Optional[_Iterable[int]] = ..., tokenizer_fingerprint: _Optional[str] = ..., draft_model_name: _Optional[str] = ..., draft_mode: _Optional[_Union[DraftMode, str]] = ..., resume_token_ids: _Optional[_Iterable[int]] = ..., stop_strings: _Optional[_Iterable[str]] = ..., grammar: _Optional[str] = ..., logprobs: _Optional[int] = ...) -> None: ...

class TokenLogprob(_message.Message):
    __slots__ = ("logprob", "top_ids", "top_logprobs")
    LOGPROB_FIELD_NUMBER: _ClassVar[int]
    TOP_IDS_FIELD_NUMBER: _ClassVar[int]
    TOP_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    logprob: float
    top_ids: _containers.RepeatedScalarFieldContainer[int]
    top_logprobs: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, logprob: _Optional[float] = ..., top_ids: _Optional[_Iterable[int]] = ..., top_logprobs: _Optional[_Iterable[float]] = ...) -> None: ...

class SparseDist(_message.Message):
    __slots__ = ("token_ids", "probs_u16")
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    PROBS_U16_FIELD_NUMBER: _ClassVar[int]
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    probs_u16: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, token_ids: _Optional[_Iterable[int]] = ..., probs_u16: _Optional[_Iterable[int]] = ...) -> None: ...

class DraftBlock(_message.Message):
    __slots__ = ("start_position", "token_ids", "draft_dists")
    START_POSITION_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    DRAFT_DISTS_FIELD_NUMBER: _ClassVar[int]
    start_position: int
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    draft_dists: _containers.RepeatedCompositeFieldContainer[SparseDist]
    def __init__(self, start_position: _Optional[int] = ..., token_ids: _Optional[_Iterable[int]] = ..., draft_dists: _Optional[_Iterable[_Union[SparseDist, _Mapping]]] = ...) -> None: ...

class SpeculateRequest(_message.Message):
    __slots__ = ("open", "draft", "decode", "hint")
    OPEN_FIELD_NUMBER: _ClassVar[int]
    DRAFT_FIELD_NUMBER: _ClassVar[int]
    DECODE_FIELD_NUMBER: _ClassVar[int]
    HINT_FIELD_NUMBER: _ClassVar[int]
    open: SessionOpen
    draft: DraftBlock
    decode: CloudDecode
    hint: DecodeHint
    def __init__(self, open: _Optional[_Union[SessionOpen, _Mapping]] = ..., draft: _Optional[_Union[DraftBlock, _Mapping]] = ..., decode: _Optional[_Union[CloudDecode, _Mapping]] = ..., hint: _Optional[_Union[DecodeHint, _Mapping]] = ...) -> None: ...

class DecodeHint(_message.Message):
    __slots__ = ("start_position", "token_ids")
    START_POSITION_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    start_position: int
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, start_position: _Optional[int] = ..., token_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class CloudDecode(_message.Message):
    __slots__ = ("start_position", "max_tokens")
    START_POSITION_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    start_position: int
    max_tokens: int
    def __init__(self, start_position: _Optional[int] = ..., max_tokens: _Optional[int] = ...) -> None: ...

class DecodedToken(_message.Message):
    __slots__ = ("position", "token_id", "finish_reason", "stale", "forward_passes", "decode_step_us", "hinted_ids", "logprob")
    POSITION_FIELD_NUMBER: _ClassVar[int]
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    STALE_FIELD_NUMBER: _ClassVar[int]
    FORWARD_PASSES_FIELD_NUMBER: _ClassVar[int]
    DECODE_STEP_US_FIELD_NUMBER: _ClassVar[int]
    HINTED_IDS_FIELD_NUMBER: _ClassVar[int]
    LOGPROB_FIELD_NUMBER: _ClassVar[int]
    position: int
    token_id: int
    finish_reason: FinishReason
    stale: bool
    forward_passes: int
    decode_step_us: int
    hinted_ids: _containers.RepeatedScalarFieldContainer[int]
    logprob: TokenLogprob
    def __init__(self, position: _Optional[int] = ..., token_id: _Optional[int] = ..., finish_reason: _Optional[_Union[FinishReason, str]] = ..., stale: _Optional[bool] = ..., forward_passes: _Optional[int] = ..., decode_step_us: _Optional[int] = ..., hinted_ids: _Optional[_Iterable[int]] = ..., logprob: _Optional[_Union[TokenLogprob, _Mapping]] = ...) -> None: ...

class SessionStarted(_message.Message):
    __slots__ = ("position", "token_id", "finish_reason", "forward_passes", "replica", "decode_step_us", "logprob")
    POSITION_FIELD_NUMBER: _ClassVar[int]
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    FORWARD_PASSES_FIELD_NUMBER: _ClassVar[int]
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    DECODE_STEP_US_FIELD_NUMBER: _ClassVar[int]
    LOGPROB_FIELD_NUMBER: _ClassVar[int]
    position: int
    token_id: int
    finish_reason: FinishReason
    forward_passes: int
    replica: str
    decode_step_us: int
    logprob: TokenLogprob
    def __init__(self, position: _Optional[int] = ..., token_id: _Optional[int] = ..., finish_reason: _Optional[_Union[FinishReason, str]] = ..., forward_passes: _Optional[int] = ..., replica: _Optional[str] = ..., decode_step_us: _Optional[int] = ..., logprob: _Optional[_Union[TokenLogprob, _Mapping]] = ...) -> None: ...

class Verdict(_message.Message):
    __slots__ = ("start_position", "accepted_count", "next_token", "finish_reason", "stale", "forward_passes", "decode_step_us", "max_drafts", "logprobs")
    START_POSITION_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_COUNT_FIELD_NUMBER: _ClassVar[int]
    NEXT_TOKEN_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    STALE_FIELD_NUMBER: _ClassVar[int]
    FORWARD_PASSES_FIELD_NUMBER: _ClassVar[int]
    DECODE_STEP_US_FIELD_NUMBER: _ClassVar[int]
    MAX_DRAFTS_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    start_position: int
    accepted_count: int
    next_token: int
    finish_reason: FinishReason
    stale: bool
    forward_passes: int
    decode_step_us: int
    max_drafts: int
    logprobs: _containers.RepeatedCompositeFieldContainer[TokenLogprob]
    def __init__(self, start_position: _Optional[int] = ..., accepted_count: _Optional[int] = ..., next_token: _Optional[int] = ..., finish_reason: _Optional[_Union[FinishReason, str]] = ..., stale: _Optional[bool] = ..., forward_passes: _Optional[int] = ..., decode_step_us: _Optional[int] = ..., max_drafts: _Optional[int] = ..., logprobs: _Optional[_Iterable[_Union[TokenLogprob, _Mapping]]] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("prefilled_tokens", "prefill_tokens")
    PREFILLED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PREFILL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    prefilled_tokens: int
    prefill_tokens: int
    def __init__(self, prefilled_tokens: _Optional[int] = ..., prefill_tokens: _Optional[int] = ...) -> None: ...

class SpeculateResponse(_message.Message):
    __slots__ = ("started", "verdict", "decoded", "progress", "drain")
    STARTED_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    DECODED_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    DRAIN_FIELD_NUMBER: _ClassVar[int]
    started: SessionStarted
    verdict: Verdict
    decoded: DecodedToken
    progress: Progress
    drain: DrainNotice
    def __init__(self, started: _Optional[_Union[SessionStarted, _Mapping]] = ..., verdict: _Optional[_Union[Verdict, _Mapping]] = ..., decoded: _Optional[_Union[DecodedToken, _Mapping]] = ..., progress: _Optional[_Union[Progress, _Mapping]] = ..., drain: _Optional[_Union[DrainNotice, _Mapping]] = ...) -> None: ...

class DrainNotice(_message.Message):
    __slots__ = ("replica", "reason")
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    replica: str
    reason: str
    def __init__(self, replica: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("prompt_token_ids", "prompt_text", "sampling", "max_new_tokens", "stop_token_ids", "return_text", "stop_strings", "resume_token_ids", "grammar", "logprobs")
    PROMPT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TEXT_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    STOP_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    RETURN_TEXT_FIELD_NUMBER: _ClassVar[int]
    STOP_STRINGS_FIELD_NUMBER: _ClassVar[int]
    RESUME_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    GRAMMAR_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    prompt_token_ids: _containers.RepeatedScalarFieldContainer[int]
    prompt_text: str
    sampling: SamplingParams
    max_new_tokens: int
    stop_token_ids: _containers.RepeatedScalarFieldContainer[int]
    return_text: bool
    stop_strings: _containers.RepeatedScalarFieldContainer[str]
    resume_token_ids: _containers.RepeatedScalarFieldContainer[int]
    grammar: str
    logprobs: int
    def __init__(self, prompt_token_ids: _Optional[_Iterable[int]] = ..., prompt_text: _Optional[str] = ..., sampling: _Optional[_Union[SamplingParams, _Mapping]] = ..., max_new_tokens: _Optional[int] = ..., stop_token_ids: _Optional[_Iterable[int]] = ..., return_text: _Optional[bool] = ..., stop_strings: _Optional[_Iterable[str]] = ..., resume_token_ids: _Optional[_Iterable[int]] = ..., grammar: _Optional[str] = ..., logprobs: _Optional[int] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("position", "token_id", "finish_reason", "text", "forward_passes", "progress", "drain", "replica", "logprob")
    POSITION_FIELD_NUMBER: _ClassVar[int]
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    FORWARD_PASSES_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    DRAIN_FIELD_NUMBER: _ClassVar[int]
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    LOGPROB_FIELD_NUMBER: _ClassVar[int]
    position: int
    token_id: int
    finish_reason: FinishReason
    text: str
    forward_passes: int
    progress: Progress
    drain: DrainNotice
    replica: str
    logprob: TokenLogprob
    def __init__(self, position: _Optional[int] = ..., token_id: _Optional[int] = ..., finish_reason: _Optional[_Union[FinishReason, str]] = ..., text: _Optional[str] = ..., forward_passes: _Optional[int] = ..., progress: _Optional[_Union[Progress, _Mapping]] = ..., drain: _Optional[_Union[DrainNotice, _Mapping]] = ..., replica: _Optional[str] = ..., logprob: _Optional[_Union[TokenLogprob, _Mapping]] = ...) -> None: ...

class TokenizerRequest(_message.Message):
    __slots__ = ("max_chunk_bytes", "accept_zlib")
    MAX_CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    ACCEPT_ZLIB_FIELD_NUMBER: _ClassVar[int]
    max_chunk_bytes: int
    accept_zlib: bool
    def __init__(self, max_chunk_bytes: _Optional[int] = ..., accept_zlib: _Optional[bool] = ...) -> None: ...

class TokenizerChunk(_message.Message):
    __slots__ = ("file_name", "offset", "file_size", "data", "zlib", "tokenizer_fingerprint")
    FILE_NAME_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    FILE_SIZE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    ZLIB_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    file_name: str
    offset: int
    file_size: int
    data: bytes
    zlib: bool
    tokenizer_fingerprint: str
    def __init__(self, file_name: _Optional[str] = ..., offset: _Optional[int] = ..., file_size: _Optional[int] = ..., data: _Optional[bytes] = ..., zlib: _Optional[bool] = ..., tokenizer_fingerprint: _Optional[str] = ...) -> None: ...
