"""The seam for draft engines: what the edge needs from a local model that drafts tokens.

A new draft runtime is one module implementing DraftEngine (as edge/llama_drafter.py does for
llama.cpp) plus its tests; the loop (edge/speculative.py), the engine (edge/engine.py) and the
SDK only use what is declared here. An engine raises ContextFull (below) when a context no
longer fits its window.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from common.text_tokenizer import TextTokenizer
from common.wire import SamplingParams


class ContextFull(Exception):
    """The context no longer fits the draft model's window. Draft engines raise it; the loop and
    the engine catch it (the cloud then generates alone) without importing any engine."""


@runtime_checkable
class DraftEngine(Protocol):
    name: str  # shown to users and sent to the cloud (SessionOpen.draft_model_name)
    vocab_size: int
    eos_token_ids: list[int]  # every id that ends a generation (EOS and end-of-turn tokens)
    chat_template: str  # the tokenizer's Jinja template, or the built-in one for its family ("" if none)
    fingerprint: str  # the tokenizer's (common/fingerprint.py): the cloud checks it
    tokenizer: TextTokenizer  # text -> ids as the target's kind of tokenizer does it (edge/tokenizer.py)

    def tokenize(self, text: str) -> list[int]:
        """Token ids of `text`, special tokens parsed, no BOS added."""

    def token_bytes(self, token_id: int) -> bytes:
        """The token's text bytes; control tokens render as nothing (as on the cloud)."""

    def start(self, context: Sequence[int], reuse_prefix: bool = False) -> np.ndarray:
        """Begins a sequence at `context` (a prompt); returns the logits [vocab] after it.

        reuse_prefix: the engine may keep a prefix it evaluated before, so the logits may
        depend on what ran before (allowed where the output does not depend on the draft's
        numbers: greedy and ids-only sampling).
        """

    def next_logits(self, context: Sequence[int]) -> np.ndarray:
        """Logits [vocab] for the position after `context`, rolling back whatever of the last
        sequence `context` does not share (exact rollback: a rejection must leave no trace)."""

    def sibling(self) -> DraftEngine:
        """Another context over the same model, with an empty cache, for a second generation to
        draft at the same time (EdgeEngine's draft slots)."""

    def close(self) -> None:
        """Frees the model; may wait for a call still running in a worker thread."""


def prepare(engine: DraftEngine, sampling: SamplingParams) -> None:
    """Tells an engine whose proposals depend on the decoding rule which one the next
    generation uses (edge/cross_vocab.py: string-level match for greedy, the vocabulary
    intersection for sampling). Engines without `use_sampling` need not know."""
    use_sampling = getattr(engine, "use_sampling", None)
    if use_sampling is not None:
        use_sampling(sampling)
