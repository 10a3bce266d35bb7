"""The edge's guesses (DecodeHint) while the cloud decodes alone, and how many of them a step checks.

When drafting in blocks does not pay (a draft of another family that agrees 60-80% of the time,
a cloud whose pass costs far more than the link), the cloud decodes on its own (CloudDecode) and
the edge's draft keeps guessing ahead of it. A step that has a guess continuing the committed
tokens feeds the pending token and j guesses in one pass, like a draft block of j drafts, and
commits the guesses that equal the target's own choices plus its next token. Every committed
token is still the target's choice at its position, so the output is the same as without hints
(greedy, or sampled with position-keyed noise); a hint changes only how many tokens a pass
commits. The cloud never waits for one, so a step without a usable hint is a plain decoding
step, and a session is never slower than the cloud alone by more than the guesses it checks in
vain. That cost is bounded by choosing j per step (hint_count): a pass of n tokens takes about
t(n) = a + b·n (cloud/step_time.py), and j guesses, each right with probability α, commit
E(j) = (1 - α^(j+1)) / (1 - α) tokens; j maximizes E(j) / t(others + 1 + j). A draft that
agrees with nothing gets α near 0 and j = 0: the cloud alone.

Pure: no model, no clock (tests/test_decode_hints.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from common.wire import DecodeHint

ACCEPTANCE_PRIOR = 0.5  # before any guess is checked; worth PRIOR_WEIGHT guesses of evidence
PRIOR_WEIGHT = 2.0
ACCEPTANCE_DECAY = 0.9  # per checked step: the estimate follows the text (code guesses well, prose less)
DEFAULT_MAX_HINTS = 8  # guesses one step checks when no step time is known yet


def expected_committed(alpha: float, guesses: int) -> float:
    """Tokens a step checking `guesses` guesses commits in expectation (the last is the cloud's own)."""
    return float(guesses + 1) if alpha >= 1 else (1 - alpha ** (guesses + 1)) / (1 - alpha)


def hint_count(alpha: float, available: int, step_seconds: Callable[[int], float | None], others: int) -> int:
    """How many of `available` guesses a step should check: the j maximizing committed tokens per
    second of the step, E(j) / t(others + 1 + j) (see the module docstring)."""
    if available <= 0:
        return 0
    if step_seconds(others + 1) is None:
        return min(available, DEFAULT_MAX_HINTS)
    return max(range(available + 1),
               key=lambda j: expected_committed(alpha, j) / max(step_seconds(others + 1 + j) or 1e-6, 1e-6))


class HintBuffer:
    """The one run of guesses a session holds, kept aligned with the committed tokens, and how well
    guesses do."""

    def __init__(self, limit: int):
        self.limit = limit
        self.start = 0  # position of ids[0]
        self.ids: list[int] = []
        self._successes = ACCEPTANCE_PRIOR * PRIOR_WEIGHT
        self._trials = PRIOR_WEIGHT
        self.right = 0  # guesses the committed tokens confirmed so far (checked in a pass or not)
        self.wrong = 0  # and those they contradicted

    @property
    def acceptance(self) -> float:
        """Per guess, as edge/draft_length.py estimates it. The evidence is every guess the committed
        tokens reached, whether a pass checked it or not: a cloud that stopped checking (j = 0)
        still sees the guesses come right again."""
        return min(0.995, max(0.005, self._successes / self._trials))

    def add(self, hint: DecodeHint, committed: Sequence[int]) -> None:
        """Takes a hint whose anchor is the committed token or the held guess at its position: its
        guesses replace what was held after the anchor. Any other hint is dropped."""
        self.align(committed)
        known = [*committed, *self.ids] if self.start == len(committed) else list(committed)
        anchor = hint.start_position
        if anchor >= len(known) or known[anchor] != hint.token_ids[0]:
            return  # drafted after tokens the cloud did not commit, or beyond what it knows
        guessed = [*known[:anchor + 1], *hint.token_ids[1:]]
        self.start = min(anchor + 1, len(committed))
        self.ids = guessed[self.start:]
        self.align(committed)  # guesses for positions already committed: consumed or dropped
        del self.ids[self.limit:]

    def align(self, committed: Sequence[int]) -> None:
        """Drops the guesses the committed tokens have passed: consumed while they agree, all of
        them at the first that does not; each is evidence for the acceptance."""
        right = 0
        while self.ids and self.start < len(committed):
            if self.ids[0] != committed[self.start]:
                self.ids = []
                self._observe(right, failed=True)
                return
            self.ids.pop(0)
            self.start += 1
            right += 1
        self._observe(right, failed=False)

    def usable(self, committed: Sequence[int]) -> list[int]:
        """The guesses continuing `committed` (those a step may feed after the pending token)."""
        self.align(committed)
        return list(self.ids) if self.start == len(committed) else []

    def _observe(self, right: int, failed: bool) -> None:
        if not right and not failed:
            return
        self._successes = ACCEPTANCE_DECAY * self._successes + right
        self._trials = ACCEPTANCE_DECAY * self._trials + right + failed
        self.right += right
        self.wrong += failed
