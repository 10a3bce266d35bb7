"""Stop strings applied to streamed text, as the OpenAI API defines them.

The answer ends right before the first occurrence of any stop string; the stop string itself
is not returned. Text arrives in deltas, and a stop string may straddle two of them, so the
scanner holds back the longest tail that could still begin one and releases it once it
can't (or at the end). Every character is released at most once and in order, so the
concatenated output is exactly `text[:first stop]`.

This works on text, on the edge, whatever produced the tokens (hybrid or local fallback).
"""

from __future__ import annotations

from collections.abc import Iterable


class StopScanner:
    def __init__(self, stops: Iterable[str] = ()):
        self.stops = [s for s in stops if s]
        self.hit: str | None = None  # the stop string found, once found
        self._held = ""

    def push(self, text: str) -> str:
        """The part of `text` (with what was held back) that is certainly before any stop."""
        if self.hit is not None:
            return ""
        if not self.stops:
            return text
        buffer = self._held + text
        found = [(index, stop) for stop in self.stops if (index := buffer.find(stop)) >= 0]
        if found:
            index, self.hit = min(found)
            self._held = ""
            return buffer[:index]
        keep = self._longest_stop_prefix_suffix(buffer)
        self._held = buffer[len(buffer) - keep:]
        return buffer[: len(buffer) - keep]

    def flush(self) -> str:
        """Releases what was held back: the text ended without completing a stop string."""
        held, self._held = self._held, ""
        return "" if self.hit is not None else held

    def _longest_stop_prefix_suffix(self, buffer: str) -> int:
        """Length of the longest suffix of `buffer` that is a proper prefix of a stop string."""
        longest = max(len(s) for s in self.stops) - 1
        for keep in range(min(longest, len(buffer)), 0, -1):
            tail = buffer[len(buffer) - keep:]
            if any(s.startswith(tail) for s in self.stops):
                return keep
        return 0
