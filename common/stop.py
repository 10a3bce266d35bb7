"""Stop strings: the generation ends where its text first contains one of them.

Both sides apply them to the same text, the UTF-8 concatenation of the generated tokens'
bytes with control tokens rendered as nothing (common.detok):
  - the cloud ends the session (FINISH_REASON_STOP) at the token that completes the first
    occurrence of a stop string, so no tokens are generated past it;
  - the edge returns the text up to, not including, that occurrence (the OpenAI convention);
    the token ids it returns still include the tokens that spelled the stop string.

Text arrives in pieces and a stop string may straddle two of them, so the scanner holds back
the longest tail that could still begin one and releases it once it cannot.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from common.detok import IncrementalDetokenizer


class StopScanner:
    """Releases streamed text up to the first stop string; `hit` is that string once found."""

    def __init__(self, stops: Iterable[str] = ()):
        self.stops = [s for s in stops if s]
        self.hit: str | None = None
        self._held = ""

    def push(self, text: str) -> str:
        """The part of the text so far (held-back text first) that surely precedes any stop string."""
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
        keep = self._partial_stop_suffix(buffer)
        self._held = buffer[len(buffer) - keep:]
        return buffer[: len(buffer) - keep]

    def flush(self) -> str:
        """The held-back text, when the generation ended without completing a stop string."""
        held, self._held = self._held, ""
        return "" if self.hit is not None else held

    def _partial_stop_suffix(self, buffer: str) -> int:
        """Length of the longest suffix of `buffer` that is a proper prefix of some stop string."""
        for keep in range(min(max(map(len, self.stops)) - 1, len(buffer)), 0, -1):
            tail = buffer[len(buffer) - keep:]
            if any(stop.startswith(tail) for stop in self.stops):
                return keep
        return 0


class TokenStopScanner:
    """Stop strings over token ids: push() says whether this token completed one."""

    def __init__(self, stops: Iterable[str], token_bytes: Callable[[int], bytes]):
        self._detok = IncrementalDetokenizer(token_bytes)
        self._scanner = StopScanner(stops)

    def push(self, token_id: int) -> bool:
        self._scanner.push(self._detok.push([token_id]))
        return self._scanner.hit is not None
