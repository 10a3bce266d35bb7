"""The draft's guesses ahead of the cloud decoding alone (DecodeHint), on the edge's side.

While drafting in blocks does not pay, the cloud decodes on its own and the draft keeps guessing
the tokens that come next, from the committed tokens and its own earlier guesses. The guesses are
sent as DecodeHint messages; the cloud checks the ones that still continue its tokens in its next
steps and commits those that equal its own choices (cloud/decode_hints.py). Nothing waits on a
guess: the cloud goes on alone without one, and the edge learns how each guess fared from the
tokens the cloud commits (a guess right at its position, or the first wrong one), which is the
same evidence the shadow of edge/speculative.py gathered, now also turned into speed.

Pure bookkeeping (no model, no stream, no clock): tests/test_decode_hints.py.
"""

from __future__ import annotations

from common.wire import DecodeHint

# Each guess goes out at once while the cloud holds fewer than LOW_WATER unchecked ones (its next
# step should have all it can check: 3-4 guesses per step on the Gemma pair); further ahead,
# HINT_CHUNK at a time (fewer messages, fewer bytes: every message costs ~45 bytes of framing on a
# bidirectional stream). Measured on the Gemma pair (README: The real pair), 4 against 2 gave
# 1.41x against 1.38x cloud-only at 20 ms and 1.26x against 1.20x at 100 ms, for 10% more bytes.
LOW_WATER = 4
HINT_CHUNK = 4
MAX_AHEAD = 8  # guesses held ahead of the committed tokens: about two steps' worth of checking


class HintTail:
    """The guesses after the committed tokens: which are sent, and how the committed ones judged them."""

    def __init__(self, committed: int, limit: int):
        """committed: the session's committed length; limit: most guesses held ahead of it."""
        self.limit = min(limit, MAX_AHEAD)
        self.start = committed  # position of ids[0]
        self.ids: list[int] = []
        self.sent = 0  # ids[:sent] went out
        self.epoch = 0  # bumped whenever the guesses are dropped, so a guess drafted before is refused

    def context_end(self) -> int:
        return self.start + len(self.ids)

    def full(self) -> bool:
        return len(self.ids) >= self.limit

    def append(self, epoch: int, token: int) -> bool:
        """A guess drafted for the context as of `epoch`; False when the guesses changed meanwhile."""
        if epoch != self.epoch or self.full():
            return False
        self.ids.append(token)
        return True

    def to_send(self, committed: list[int]) -> DecodeHint | None:
        """The guesses not yet sent, behind their anchor (the token before them), when worth a
        message (see LOW_WATER); None otherwise. Marks them sent. committed: the session's
        committed tokens."""
        unsent = len(self.ids) - self.sent
        if unsent <= 0 or (self.sent >= LOW_WATER and unsent < HINT_CHUNK):
            return None
        anchor = self.ids[self.sent - 1] if self.sent else committed[self.start - 1]
        hint = DecodeHint(self.start + self.sent - 1, [anchor, *self.ids[self.sent:]])
        self.sent = len(self.ids)
        return hint

    def commit(self, first_position: int, ids: list[int]) -> list[bool]:
        """The cloud committed `ids` from `first_position` (the tail's start). Returns how each guess
        there fared, in order (True: right; a wrong one ends the list); drops what they passed."""
        if first_position != self.start:
            raise ValueError(f"committed tokens at {first_position}, the guesses start at {self.start}")
        outcomes = []
        for token in ids:
            if not self.ids:  # past the guesses: a guess being drafted now would be for a passed position
                self.drop(first_position + len(ids))
                return outcomes
            right = self.ids[0] == token
            outcomes.append(right)
            if not right:
                self.drop(first_position + len(ids))
                return outcomes
            self.ids.pop(0)
            self.sent = max(0, self.sent - 1)
            self.start += 1
        return outcomes

    def drop(self, committed: int) -> None:
        """Forgets every guess (they no longer continue the committed tokens)."""
        self.start = committed
        self.ids = []
        self.sent = 0
        self.epoch += 1
