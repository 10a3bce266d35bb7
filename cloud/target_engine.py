"""The seam for target engines: what the cloud needs from the model that verifies drafts.

A new target (a CUDA one, another runtime) is one module implementing TargetEngine (as
cloud/model.py does for transformers) plus its tests; the scheduler (cloud/scheduler.py), the
sessions, the service and the server only use what is declared here. The KV pool is the
engine's: sessions hold block tables in it, and one forward pass serves many sessions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable


from common.special_tokens import SpecialTokens


@runtime_checkable
class TargetEngine(Protocol):
    name: str
    device: Any  # where it runs (shown in the ready line), e.g. torch.device("cpu")
    vocab_size: int
    max_context: int  # the model's own context window, in tokens
    eos_token_ids: list[int]  # every id that ends a generation (EOS and end-of-turn tokens)
    fingerprint: str  # the tokenizer's (common/fingerprint.py: vocabulary, BOS/EOS rules): drafts must match it
    chat_template: str  # the template chat prompts are rendered with (the tokenizer's or a built-in one)
    special: SpecialTokens  # the BOS/EOS rules of the tokenizer's default encoding
    kv_bytes_per_token: int  # what one cached position costs (KV-cache budgeting)

    def tokenize(self, text: str) -> list[int]:
        """Token ids of `text`, special tokens parsed, nothing added."""

    def encode(self, text: str) -> list[int]:
        """A raw prompt as the tokenizer encodes it by default (BOS/EOS per `special`)."""

    def token_bytes(self, token_id: int) -> bytes:
        """The token's text bytes; special tokens render as nothing (as on the edge)."""

    def new_kv_pool(self) -> Any:
        """An empty KV pool (cloud.model.PagedKV for transformers) that sessions' block tables live in."""

    def forward_batch(self, pool: Any, segments: Sequence[Any]) -> list[Any]:
        """One forward pass over every segment's tokens (cloud.model.Segment: a session's block
        table, its new token ids, how many logits to keep), each appended to its own KV cache.

        Returns, per segment, the logits of its last `keep` tokens, [keep, vocab] float32, as an
        object with argmax() (each row's greedy id, a list) and numpy() (the rows on the host),
        like cloud.model.DeviceLogits. On failure every table is as before.
        """

    def free_memory_bytes(self) -> int:
        """Memory still free where the model runs (the default KV-cache budget is half)."""

    def warmup(self) -> None:
        """One small forward pass, so the first request does not pay lazy initialization."""
