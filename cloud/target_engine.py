"""The seam for target engines: what the cloud needs from the model that verifies drafts.

A new target (a batched one, a CUDA one, another runtime) is one module implementing
TargetEngine (as cloud/model.py does for transformers) plus its tests; the session
(cloud/session.py), the service and the server only use what is declared here. The KV cache
is opaque: the engine makes it, extends it, measures, copies and crops it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class TargetEngine(Protocol):
    name: str
    device: Any  # where it runs (shown in the ready line), e.g. torch.device("cpu")
    vocab_size: int
    max_context: int  # the model's own context window, in tokens
    eos_token_ids: list[int]
    fingerprint: str  # common.fingerprint.tokenizer_fingerprint(self.tokenize): drafts must match it
    chat_template: str
    kv_bytes_per_token: int  # what one cached position costs (KV-cache budgeting)

    def tokenize(self, text: str) -> list[int]:
        """Token ids of `text`, special tokens parsed, no BOS added (as the edge tokenizes)."""

    def token_bytes(self, token_id: int) -> bytes:
        """The token's text bytes; special tokens render as nothing (as on the edge)."""

    def new_cache(self) -> Any:
        """An empty KV cache for one session."""

    def cache_length(self, cache: Any) -> int:
        """Positions held in `cache`."""

    def copy_cache(self, cache: Any) -> Any:
        """An independent copy (prefix-cache snapshots)."""

    def forward(self, cache: Any, token_ids: Sequence[int], keep_logits: int) -> np.ndarray:
        """Appends token_ids to the cache; returns the last keep_logits rows of logits,
        [keep_logits, vocab] float32."""

    def crop(self, cache: Any, length: int) -> None:
        """Drops cached positions from `length` on (the rollback after a rejection)."""

    def free_memory_bytes(self) -> int:
        """Memory still free where the model runs (the default KV-cache budget is half)."""

    def warmup(self) -> None:
        """One small forward pass, so the first request does not pay lazy initialization."""
