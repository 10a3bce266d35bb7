"""The draft model: the one module that touches llama.cpp.

It answers one question, fast: "what are the logits after this context?" It keeps its KV
cache across calls and, when the context diverges from what it evaluated (a draft was
rejected), rolls back to the common prefix by truncating the cache (no state reload) and
evaluates only the new tokens.

Text never goes through llama.cpp's tokenizer: prompts are tokenized by the draft's
tokenizer as transformers builds it (edge/tokenizer.py, the same kind the target uses), and the ids are fed
to llama.cpp. Its vocabulary is the GGUF's, so the ids mean the same tokens.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import threading
import time
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import llama_cpp
import numpy as np
from llama_cpp._internals import LlamaModel
from llama_cpp._utils import suppress_stdout_stderr

from common.model_paths import default_gguf_path
from common.text_tokenizer import TextTokenizer
from edge.draft_engine import ContextFull

log = logging.getLogger(__name__)


class DraftClosed(RuntimeError):
    """The draft model was used after close()."""

class LlamaDrafter:
    """The llama.cpp draft engine (edge.draft_engine.DraftEngine); the only module that touches llama.cpp."""

    def __init__(self, model_path: str | Path | None = None, n_ctx: int = 4096, threads: int = 0,
                 f32_cache: bool = False, convert_dtype: str = "f16", tokenizer: TextTokenizer | None = None):
        """model_path: a GGUF file, or a Hugging Face Llama directory (converted to a GGUF of
        `convert_dtype` weights on first use and cached; see edge/convert.py).
        f32_cache keeps the KV cache in float32 (tests use it to match transformers tightly).
        tokenizer: the draft's, when the caller already has it (else read on first use)."""
        path = Path(model_path) if model_path else default_gguf_path()
        if not path.exists():
            raise FileNotFoundError(f"draft model not found: {path}")
        name = path.name if path.is_dir() else path.stem
        self.source = path
        # On a warm start the tokenizer is read before the weights: parsing its files needs
        # transient memory (~40 MB for a 49k vocabulary) that is given back before llama.cpp
        # takes its own, so the two peaks do not add up on the user's machine.
        from edge.tokenizer import cached_tokenizer

        early = tokenizer or cached_tokenizer(path)
        if path.is_dir():
            from edge.convert import cached_gguf

            path = cached_gguf(path, tokenize_gguf=tokenize_with_vocab, dtype=convert_dtype)
        threads = threads or len(os.sched_getaffinity(0))
        started = time.monotonic()
        extra = dict(type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32) if f32_cache else {}
        self._llama = llama_cpp.Llama(
            str(path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
            logits_all=False, verbose=False, **extra,
        )
        self.path = path
        self.name = name
        self.threads = threads
        self.n_ctx = n_ctx
        self.f32_cache = f32_cache
        self.vocab_size = self._llama.n_vocab()
        self._vocab = llama_cpp.llama_model_get_vocab(self._llama.model)
        self._evaluated: list[int] = []
        self._last_logits: np.ndarray | None = None
        self._root: list[int] | None = None
        self._root_logits: np.ndarray | None = None
        self._root_exact = False  # evaluated as one batch from position 0
        # Callers run these methods in worker threads; a cancelled caller (a client that went
        # away) leaves its thread running, so the next generation must wait for it here.
        self._lock = threading.Lock()
        self._closed = False  # a thread that starts after close() must not touch the freed context
        if early is not None and len(early) <= self.vocab_size:  # else .tokenizer says what is wrong
            self.__dict__["tokenizer"] = early
        log.info("loaded draft %s (%d threads) in %.2fs", self.name, threads, time.monotonic() - started)

    def sibling(self) -> LlamaDrafter:
        """Another context over the same model file (mapped, so the weights are shared), for a
        second generation to draft at the same time; it starts with an empty KV cache."""
        other = LlamaDrafter(self.path, self.n_ctx, self.threads, self.f32_cache,
                             tokenizer=self.tokenizer)  # one tokenizer for both contexts
        other.name, other.source = self.name, self.source
        return other

    @functools.cached_property
    def tokenizer(self) -> TextTokenizer:
        """The tokenizer of the draft's files (loaded on first use; edge/tokenizer.py)."""
        from edge.tokenizer import load_tokenizer

        return self._checked(load_tokenizer(self.source))

    def _checked(self, tokenizer: TextTokenizer) -> TextTokenizer:
        if len(tokenizer) > self.vocab_size:
            raise ValueError(f"{self.name}: the tokenizer has {len(tokenizer)} tokens, the model {self.vocab_size}")
        return tokenizer

    def tokenize(self, text: str) -> list[int]:
        """The text's ids alone (special tokens parsed, none added), by the draft's tokenizer."""
        return self.tokenizer.tokenize(text)

    @property
    def fingerprint(self) -> str:
        return self.tokenizer.fingerprint

    @property
    def eos_token_ids(self) -> list[int]:
        """Every id that ends a generation: EOS and the end-of-turn tokens."""
        return self.tokenizer.end_ids

    @property
    def chat_template(self) -> str:
        return self.tokenizer.chat_template

    @lru_cache(maxsize=None)  # noqa: B019 - few drafters per process; the table is the vocab
    def token_bytes(self, token_id: int) -> bytes:
        """The token's text bytes; control tokens (end of turn, ...) render as nothing."""
        # Llama.detokenize uses a 32-byte buffer and silently drops longer pieces (runs of
        # spaces or dashes in code); ask for the size llama.cpp says it needs instead.
        size = 64
        while True:
            buffer = ctypes.create_string_buffer(size)
            n = llama_cpp.llama_token_to_piece(self._vocab, token_id, buffer, size, 0, False)
            if n >= 0:
                return buffer.raw[:n]
            size = -n

    def start(self, context: Sequence[int], reuse_prefix: bool = False) -> np.ndarray:
        """Begins a sequence at `context` (a prompt); returns the logits ([vocab]) after it.

        The context is evaluated as one batch from position 0, unless the last sequence
        began with the same context: its cache and logits are reused (no decode at all).
        With reuse_prefix, the cache also keeps any prefix shared with what was evaluated
        before (a chat's earlier turns) and evaluates only the rest: faster, but the logits
        then depend on what ran before. Callers whose output does not depend on the draft's
        numbers (greedy, ids-only sampling) may pass it.
        """
        with self._lock:
            self._check_open()
            return self._start(list(context), reuse_prefix)

    def _start(self, context: list[int], reuse_prefix: bool) -> np.ndarray:
        if len(context) >= self.n_ctx:
            raise ContextFull(f"context of {len(context)} tokens exceeds the draft window {self.n_ctx}")
        if context == self._root and (self._root_exact or reuse_prefix):
            return self._root_logits  # the cache still begins with the root: nothing rolls back into it
        shared = max(0, min(_common_prefix(self._evaluated, context), len(context) - 1)) if reuse_prefix else 0
        self._root = None  # a failed eval must not leave a half-built root behind
        self._llama.n_tokens = shared  # the next eval drops the cache from `shared` on
        self._evaluated = context[:shared]
        self._llama.eval(context[shared:])
        self._root, self._root_logits, self._root_exact = context, self._read_logits(), shared == 0
        self._evaluated, self._last_logits = list(context), self._root_logits
        return self._root_logits

    def next_logits(self, context: Sequence[int]) -> np.ndarray:
        """Logits ([vocab] float32) for the position after `context`.

        A context that does not extend the current root starts a new sequence (see start).
        Otherwise the cache is kept for the longest prefix shared with what was evaluated,
        and the remaining tokens are fed one decode call each.
        """
        with self._lock:
            self._check_open()
            return self._next_logits(list(context))

    def _next_logits(self, context: list[int]) -> np.ndarray:
        root = self._root
        if root is None or len(context) < len(root) or context[: len(root)] != root:
            return self._start(context, reuse_prefix=False)
        if len(context) == len(root):
            return self._root_logits
        if len(context) >= self.n_ctx:
            raise ContextFull(f"context of {len(context)} tokens exceeds the draft window {self.n_ctx}")
        if context == self._evaluated and self._last_logits is not None:
            return self._last_logits
        # Re-feed at least the last token (its logits are gone), never a token of the root.
        shared = max(len(root), min(_common_prefix(self._evaluated, context), len(context) - 1))
        # Truncating n_tokens makes the next eval drop the KV cache from `shared` on: exact rollback.
        self._llama.n_tokens = shared
        self._evaluated = context[:shared]
        self._last_logits = None
        for token in context[shared:]:
            self._llama.eval([token])
            self._evaluated.append(token)
        self._last_logits = self._read_logits()
        return self._last_logits

    def _read_logits(self) -> np.ndarray:
        logits = llama_cpp.llama_get_logits_ith(self._llama.ctx, -1)
        return np.ctypeslib.as_array(
            ctypes.cast(logits, ctypes.POINTER(ctypes.c_float)), shape=(self.vocab_size,)
        ).copy()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._llama.close()

    def _check_open(self) -> None:
        # A cancelled caller's worker thread may only start once the generation is over and the
        # engine closed this draft (a guess queued behind another): it must fail, not crash.
        if self._closed:
            raise DraftClosed(f"the draft model {self.name!r} was closed")


def tokenize_with_vocab(gguf_path: Path, texts: Sequence[str]) -> list[list[int]] | None:
    """llama.cpp's ids for each text under a GGUF's vocabulary (weights are not loaded).

    Returns None when llama.cpp refuses the file, e.g. a pre-tokenizer it does not know: the
    converter tries candidate tokenizers this way (edge/convert_vocab.py).
    """
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    try:  # the model alone, as Llama() holds it: no context, so no warnings about its size
        model = LlamaModel(path_model=str(gguf_path), params=params, verbose=False)
    except ValueError:
        return None
    try:
        return [model.tokenize(text.encode(), add_bos=False, special=True) for text in texts]
    finally:
        model.close()


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


QUANT_TYPES = {"q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0, "q4_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M,
               "q4_1": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_1}
"""llama.cpp's quantizations offered for drafts (names as llama-quantize spells them, lower case)."""


def quantize(source: Path, out: Path, kind: str, threads: int = 0) -> Path:
    """Quantizes a GGUF with llama.cpp's own quantizer (the wheel has no llama-quantize binary)."""
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = QUANT_TYPES[kind]
    params.nthread = threads or len(os.sched_getaffinity(0))
    with suppress_stdout_stderr(disable=False):  # a line per tensor, printed by llama.cpp itself
        status = llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), ctypes.byref(params))
    if status != 0:
        raise RuntimeError(f"llama.cpp could not quantize {source} to {kind} (status {status})")
    return out
