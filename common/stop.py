"""Stop strings: the generation ends where its text first contains one of them.

Both sides apply them to the same text, the UTF-8 concatenation of the generated tokens'
bytes with control tokens rendered as nothing (common.detok):
  - the cloud ends the session (FINISH_REASON_STOP) at the token that completes the first
    occurrence of a stop string, so no tokens are generated past it;
  - the edge returns the text up to, not including, that occurrence (the OpenAI convention);
    the token ids it returns still include the tokens that spelled the stop string.

Text arrives in pieces and a stop string may straddle two of them, so the scanner holds back
any tail that could still begin one and releases it once it cannot. A stop string that began
earlier wins over a shorter one completed first, so the output is exactly text[:first stop]
however the text was split.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from common.detok import IncrementalDetokenizer

MAX_STOP_STRINGS = 16  # most stop strings in one request: the cloud's limit and the edge's API's


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


class TokenStopScanner:
    """Stop strings over token ids: push() says whether this token completed one."""

    def __init__(self, stops: Iterable[str], token_bytes: Callable[[int], bytes]):
        self._detok = IncrementalDetokenizer(token_bytes)
        self._scanner = StopScanner(stops)

    def push(self, token_id: int) -> bool:
        self._scanner.push(self._detok.push([token_id]))
        return self._scanner.hit is not None
