"""The draft model: the one module that touches llama.cpp.

It answers one question, fast: "what are the logits after this context?" It keeps its KV
cache across calls and, when the context diverges from what it evaluated (a draft was
rejected), rolls back to the common prefix by truncating the cache (no state reload) and
evaluates only the new tokens.
"""

from __future__ import annotations

import ctypes
import logging
import os
import time
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import llama_cpp
import numpy as np

from common.fingerprint import tokenizer_fingerprint
from common.models import default_gguf_path

log = logging.getLogger(__name__)


class ContextFull(Exception):
    """The context no longer fits the draft model's window."""


class LlamaDrafter:
    def __init__(self, model_path: str | Path | None = None, n_ctx: int = 4096, threads: int = 0,
                 f32_cache: bool = False):
        """f32_cache keeps the KV cache in float32 (tests use it to match transformers tightly)."""
        path = Path(model_path) if model_path else default_gguf_path()
        if not path.exists():
            raise FileNotFoundError(f"draft model not found: {path}")
        threads = threads or len(os.sched_getaffinity(0))
        started = time.monotonic()
        extra = dict(type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32) if f32_cache else {}
        self._llama = llama_cpp.Llama(
            str(path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
            logits_all=False, verbose=False, **extra,
        )
        self.path = path
        self.name = path.stem
        self.threads = threads
        self.n_ctx = n_ctx
        self.vocab_size = self._llama.n_vocab()
        self.eos_token_ids = sorted({self._llama.token_eos()} - {-1})
        self.chat_template = self._llama.metadata.get("tokenizer.chat_template", "")
        self.fingerprint = tokenizer_fingerprint(self.tokenize)
        self._evaluated: list[int] = []
        self._last_logits: np.ndarray | None = None
        log.info("loaded draft %s (%d threads) in %.2fs", self.name, threads, time.monotonic() - started)

    def tokenize(self, text: str) -> list[int]:
        return self._llama.tokenize(text.encode(), add_bos=False, special=True)

    @lru_cache(maxsize=None)  # noqa: B019 - few drafters per process; the table is the vocab
    def token_bytes(self, token_id: int) -> bytes:
        """The token's text bytes; control tokens (end of turn, ...) render as nothing."""
        return self._llama.detokenize([token_id], special=False)

    def next_logits(self, context: Sequence[int]) -> np.ndarray:
        """Logits ([vocab] float32) for the position after `context`.

        Reuses the KV cache for the longest prefix shared with the last call.
        """
        context = list(context)
        if len(context) >= self.n_ctx:
            raise ContextFull(f"context of {len(context)} tokens exceeds the draft window {self.n_ctx}")
        shared = _common_prefix(self._evaluated, context)
        if shared == len(context) == len(self._evaluated) and self._last_logits is not None:
            return self._last_logits
        shared = min(shared, len(context) - 1)  # re-evaluate at least one token to get its logits
        # Truncating n_tokens makes the next eval drop the KV cache from `shared` on: exact rollback.
        self._llama.n_tokens = shared
        self._evaluated = context[:shared]
        self._llama.eval(context[shared:])
        self._evaluated = context
        logits = llama_cpp.llama_get_logits_ith(self._llama.ctx, -1)
        self._last_logits = np.ctypeslib.as_array(
            ctypes.cast(logits, ctypes.POINTER(ctypes.c_float)), shape=(self.vocab_size,)
        ).copy()
        return self._last_logits

    @property
    def evaluated_tokens(self) -> int:
        return len(self._evaluated)

    def close(self) -> None:
        self._llama.close()


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n
