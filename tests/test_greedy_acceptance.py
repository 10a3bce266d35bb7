"""The greedy (and ids-only) acceptance rule, common.sampling.match_targets, without models."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.sampling import greedy, match_targets


def targets_from(tokens):
    asked = []

    def target_token(i):
        asked.append(i)
        return tokens[i]

    return target_token, asked


@pytest.mark.parametrize("drafts,targets,expected", [
    ([], [7], (0, 7)),  # no drafts: the bonus token alone
    ([1, 2, 3], [1, 2, 3, 9], (3, 9)),  # all accepted, then the bonus token
    ([1, 2, 3], [5, 2, 3, 9], (0, 5)),  # the first draft rejected: the target's token replaces it
    ([1, 2, 3], [1, 2, 4, 9], (2, 4)),  # a rejection later in the block
])
def test_accepts_while_drafts_equal_the_targets(drafts, targets, expected):
    target_token, asked = targets_from(targets)
    assert match_targets(drafts, target_token) == expected
    # The target is asked for no position past the first mismatch (each costs a sample).
    assert asked == list(range(expected[0] + 1))


@given(st.lists(st.integers(0, 3), max_size=12), st.lists(st.integers(0, 3), min_size=13, max_size=13))
def test_accepted_is_the_common_prefix(drafts, targets):
    accepted, next_token = match_targets(drafts, lambda i: targets[i])
    common = next((i for i, (d, t) in enumerate(zip(drafts, targets)) if d != t), len(drafts))
    assert accepted == common
    assert next_token == targets[accepted]
    # What gets committed is exactly the target's own tokens.
    assert [*drafts[:accepted], next_token] == targets[: accepted + 1]


def test_greedy_on_crafted_logits():
    # logits: [k + 1, vocab] whose argmax at each position is known.
    logits = np.full((4, 10), -1.0)
    for i, best in enumerate([3, 1, 4, 1]):
        logits[i, best] = 5.0
    assert match_targets([3, 1, 5], lambda i: greedy(logits[i])) == (2, 4)
    assert match_targets([3, 1, 4], lambda i: greedy(logits[i])) == (3, 1)
