"""The draft model's logits after a context do not depend on what it evaluated before.

llama.cpp's numbers depend on how tokens are batched into decode calls, and sparse-q and
edge-only sampling use them directly, so the drafter follows a fixed recipe (edge/llama_drafter.py).
The default Q4_1 model is used: it loads in a fraction of a second, and on it batching
really changes the logits.
"""

from __future__ import annotations

import numpy as np
import pytest

from edge.llama_drafter import LlamaDrafter

PROMPT = "Once upon a time, in a small village between two rivers,"
CONTINUATION = " there lived an old clockmaker who"
OTHER = "def quicksort(items):\n    if len(items) <= 1:"


@pytest.fixture(scope="module")
def drafter():
    drafter = LlamaDrafter(threads=1)
    yield drafter
    drafter.close()


def test_logits_are_a_function_of_the_context_alone(drafter):
    prompt = drafter.tokenize(PROMPT)
    continuation = drafter.tokenize(CONTINUATION)
    full = prompt + continuation
    drafter.start(prompt)
    reference = drafter.next_logits(full).copy()

    # Another sequence, then this one again through rollbacks and partial re-evaluations.
    drafter.start(drafter.tokenize(OTHER))
    drafter.next_logits(drafter.tokenize(OTHER) + continuation[:3])
    drafter.start(prompt)
    drafter.next_logits(prompt + continuation[:2] + [13, 14, 15])  # a rejected draft
    drafter.next_logits(full + [16, 17])  # drafted past the context, then rolled back
    assert np.array_equal(drafter.next_logits(full), reference)
    fresh = LlamaDrafter(threads=1)
    try:
        fresh.start(prompt)
        assert np.array_equal(fresh.next_logits(full), reference)
        # The recipe matters: the same tokens in one batch give other numbers on this model.
        batched = fresh.start(full)
        assert not np.array_equal(batched, reference), "llama.cpp became batch-invariant: the recipe is moot"
    finally:
        fresh.close()


def test_reusing_a_shared_prefix_is_opt_in(drafter, monkeypatch):
    prompt = drafter.tokenize(PROMPT)
    continuation = drafter.tokenize(CONTINUATION)
    longer = prompt + continuation
    evaluated = []
    original_eval = drafter._llama.eval
    monkeypatch.setattr(drafter._llama, "eval", lambda tokens: (evaluated.append(len(tokens)), original_eval(tokens)))

    def tokens_fed(*start_args) -> list[int]:
        evaluated.clear()
        drafter.start(*start_args)
        return list(evaluated)

    other = drafter.tokenize(OTHER)
    assert tokens_fed(other) in ([], [len(other)])  # [] if an earlier test left this root
    assert tokens_fed(prompt) == [len(prompt)]
    assert tokens_fed(longer, True) == [len(continuation)]  # the chat-turn case: only what is new
    assert tokens_fed(longer, True) == []  # the same root again
    assert tokens_fed(longer) == [len(longer)]  # an exact start does not trust a reused prefix
    assert tokens_fed(longer) == []  # but trusts its own
