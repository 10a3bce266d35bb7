"""How many tokens to draft before sending a block."""

from __future__ import annotations


class DraftLengthPolicy:
    """A block ends after `current` drafts, or early after a draft below `min_confidence`."""

    def __init__(self, max_tokens: int, min_confidence: float = 0.0):
        self.max_tokens = max_tokens
        self.current = max_tokens
        self.min_confidence = min_confidence
        self.cut_requested = False

    def observe_draft(self, confidence: float) -> None:
        if confidence < self.min_confidence:
            self.cut_requested = True

    def start_block(self) -> None:
        self.cut_requested = False

    def observe_verdict(self, drafted: int, accepted: int) -> None:
        pass
