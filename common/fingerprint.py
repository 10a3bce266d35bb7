"""Tokenizer fingerprints: do two tokenizers mean the same thing by the same ids?

The draft and the target are loaded separately (often from different files), and a session
only makes sense when every id means the same token to both, and a prompt becomes the same ids
on both sides. So the fingerprint hashes, id by id, the vocabulary (each token's piece and
whether it is special), the BOS/EOS rules of the default encoding (common/special_tokens.py),
and the ids of a probe text (code, several scripts, emoji, chat markers, odd spacing), which
catches a different normalizer or pre-tokenizer over the same vocabulary. A pair that differs
in any of these, BOS rules alone included, gets different fingerprints.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable, Sequence

from common.special_tokens import SpecialTokens

VERSION = "tokenizer-v2"

PROBE_TEXT = (
    "The quick brown fox jumps over the lazy dog. 1234567890 +-*/=<>!?\n"
    "def fibonacci(n: int) -> int:\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)\n"
    "\tIndented\ttabs  and   runs of spaces.\r\n"
    "Ünïcödé àccents, naïve café; Straße; Ελληνικά; Русский текст; עברית; العربية\n"
    "中文分词测试，日本語のテキスト、한국어 문장. 🚀🔥👩‍💻 emoji!\n"
    "<|im_start|>user\nHello<|im_end|>\n<|endoftext|> <s> </s> [INST] {\"json\": [1, 2.5, null]}\n"
    "https://example.com/path?query=value&x=1 #hashtag @mention 0x1F ~/.bashrc\n"
)


def tokenizer_fingerprint(pieces: Iterable[str | None], special_ids: Collection[int], rules: SpecialTokens,
                          probe_ids: Sequence[int]) -> str:
    """pieces: each id's vocabulary entry (None for an id the tokenizer lacks); special_ids: the
    ids of special (control) tokens; probe_ids: PROBE_TEXT's ids with nothing added."""
    digest = hashlib.sha256()
    special = set(special_ids)
    for i, piece in enumerate(pieces):
        digest.update(b"%d%s\x00%s\x01" % (i, b"*" if i in special else b"", (piece or "").encode("utf-8", "replace")))
    digest.update(repr(rules).encode())
    digest.update(",".join(str(int(i)) for i in probe_ids).encode())
    return f"{VERSION}:{digest.hexdigest()[:32]}"
