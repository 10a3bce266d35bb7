"""Tokenizer fingerprints: do two tokenizers, in different engines, mean the same ids?

The draft tokenizes with llama.cpp and the target with transformers, so comparing vocab files
is not possible. Instead each side tokenizes the same probe text (code, several scripts,
emoji, chat markers, odd spacing) and hashes the ids. Different tokenizers disagree on such
text almost surely; the same tokenizer loaded in both engines agrees.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

PROBE_TEXT = (
    "The quick brown fox jumps over the lazy dog. 1234567890 +-*/=<>!?\n"
    "def fibonacci(n: int) -> int:\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)\n"
    "\tIndented\ttabs  and   runs of spaces.\r\n"
    "Ünïcödé àccents, naïve café; Straße; Ελληνικά; Русский текст; עברית; العربية\n"
    "中文分词测试，日本語のテキスト、한국어 문장. 🚀🔥👩‍💻 emoji!\n"
    "<|im_start|>user\nHello<|im_end|>\n<|endoftext|> <s> </s> [INST] {\"json\": [1, 2.5, null]}\n"
    "https://example.com/path?query=value&x=1 #hashtag @mention 0x1F ~/.bashrc\n"
)


def tokenizer_fingerprint(tokenize: Callable[[str], Sequence[int]]) -> str:
    """`tokenize` maps text to ids with no BOS/EOS added and special tokens parsed."""
    ids = tokenize(PROBE_TEXT)
    digest = hashlib.sha256(",".join(str(int(i)) for i in ids).encode()).hexdigest()
    return f"probe-v1:{digest[:32]}"
