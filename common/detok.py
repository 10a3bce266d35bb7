"""Incremental detokenization that never emits broken UTF-8.

A token's bytes may end in the middle of a multi-byte character (byte-level BPE splits
emoji and CJK across tokens). Text deltas are released only once their characters are
complete; whatever is pending is flushed (with replacement characters) at the end.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable, Iterable


class IncrementalDetokenizer:
    def __init__(self, token_bytes: Callable[[int], bytes]):
        self._token_bytes = token_bytes
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_ids: Iterable[int]) -> str:
        """Returns the text that the given tokens complete (possibly empty)."""
        return self._decoder.decode(b"".join(self._token_bytes(t) for t in token_ids))

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)
