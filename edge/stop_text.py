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
        self._held += text
        return self._release(final=False)

    def flush(self) -> str:
        """Releases what was held back: the text ended, so no partial stop string can complete."""
        if self.hit is not None:
            self._held = ""
            return ""
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        buffer = self._held
        found = [(index, stop) for stop in self.stops if (index := buffer.find(stop)) >= 0]
        first = min(found) if found else None
        end = first[0] if first else len(buffer)
        if not final:
            # A stop string that began earlier may still complete and win over a later, shorter one.
            longest = max(len(stop) for stop in self.stops)
            for start in range(max(0, len(buffer) - longest + 1), end):
                tail = buffer[start:]
                if any(len(stop) > len(tail) and stop.startswith(tail) for stop in self.stops):
                    self._held = tail
                    return buffer[:start]
        self._held = ""
        if first:
            self.hit = first[1]
        return buffer[:end]
