"""The text side of a model: a transformers tokenizer, as both cloud and edge read it.

The target's tokenizer is the single source of truth for how text becomes ids. The cloud
wraps its target's tokenizer in this class; the edge wraps the same kind of tokenizer (a
transformers tokenizer loaded from the draft's directory, or converted from its GGUF as the
cloud converts a GGUF target), so both sides compute rules, end ids, templates and fingerprints
with one piece of code. The tokenizer object is passed in: this module imports no engine.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

from common.chat_templates import builtin_chat_template
from common.fingerprint import PROBE_TEXT, tokenizer_fingerprint
from common.special_tokens import SpecialTokens, detect_rules, end_of_generation_ids


class TextTokenizer:
    def __init__(self, tokenizer, extra_eos_ids: Sequence[int] = ()):
        """tokenizer: a transformers tokenizer; extra_eos_ids: more EOS ids the model declares
        (its generation config's eos_token_id)."""
        self.hf = tokenizer
        self.special = detect_rules(
            lambda text, add: tokenizer(text, add_special_tokens=add)["input_ids"],
            (tokenizer.bos_token_id, tokenizer.bos_token or ""),
            (tokenizer.eos_token_id, tokenizer.eos_token or ""),
        )
        self.special_tokens = {i: t.content for i, t in tokenizer.added_tokens_decoder.items() if t.special}
        declared = {*extra_eos_ids, *([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])}
        self.end_ids = end_of_generation_ids(declared, self.special_tokens)
        self.chat_template = (getattr(tokenizer, "chat_template", None)
                              or builtin_chat_template(self.special_tokens.values()))

    def __len__(self) -> int:
        return len(self.hf)

    def tokenize(self, text: str) -> list[int]:
        """The text's ids alone: special tokens written in the text are parsed, none are added."""
        return list(self.hf(text, add_special_tokens=False)["input_ids"])

    def encode(self, text: str, rules: SpecialTokens | None = None) -> list[int]:
        """A raw prompt, as the tokenizer's default encoding gives it (BOS/EOS per `rules`,
        by default this tokenizer's own)."""
        return (rules or self.special).wrap(self.tokenize(text))

    def encode_rendered_chat(self, text: str, rules: SpecialTokens | None = None) -> list[int]:
        """A chat prompt already rendered by its template: one BOS where wanted, never two."""
        return (rules or self.special).wrap_chat(self.tokenize(text))

    @functools.cached_property
    def fingerprint(self) -> str:
        pieces = self.hf.convert_ids_to_tokens(list(range(len(self.hf))))
        return tokenizer_fingerprint(pieces, self.special_tokens, self.special, self.tokenize(PROBE_TEXT))

    def token_bytes_table(self, vocab_size: int) -> list[bytes]:
        """Each id's text bytes, from its vocabulary piece; special tokens render as nothing.

        Decoding one token at a time would turn half of a multi-byte character into U+FFFD, so
        pieces are mapped to bytes directly: through GPT-2's byte-to-unicode alphabet for
        byte-level BPE, else SentencePiece style ("▁" is a space, "<0xNN>" a raw byte).
        """
        tokenizer = self.hf
        pieces = tokenizer.convert_ids_to_tokens(list(range(min(vocab_size, len(tokenizer)))))
        decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
        if "ByteLevel" in str(decoder):
            to_byte = {c: b for b, c in _bytes_to_unicode().items()}

            def piece_bytes(piece: str) -> bytes:
                return bytes(to_byte[c] for c in piece) if all(c in to_byte for c in piece) else piece.encode()
        else:
            def piece_bytes(piece: str) -> bytes:
                if re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", piece):
                    return bytes([int(piece[3:5], 16)])
                return piece.replace("\u2581", " ").encode()
        special = self.special_tokens
        table = [b"" if i in special or piece is None else piece_bytes(piece) for i, piece in enumerate(pieces)]
        return table + [b""] * (vocab_size - len(table))  # ids the model has but the tokenizer lacks


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable unicode characters (byte-level BPE)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping
