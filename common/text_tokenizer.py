"""The text side of a model: a tokenizer, as both cloud and edge read it.

The target's tokenizer is the single source of truth for how text becomes ids. The cloud
wraps its target's transformers tokenizer in this class; the edge wraps the same tokenizer
read from plain files with the `tokenizers` library alone (`TextTokenizer.from_file`: the Rust
pipeline inside transformers' tokenizers, without transformers and torch), so both sides compute
rules, end ids, templates and fingerprints with one piece of code. The tokenizer object is
passed in (or, for files, `tokenizers` is imported on first use): this module imports no engine.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from common.chat_templates import builtin_chat_template
from common.fingerprint import PROBE_TEXT, tokenizer_fingerprint
from common.fingerprint import VERSION as FINGERPRINT_VERSION
from common.special_tokens import SpecialTokens, detect_rules, end_of_generation_ids

SPEC_FILE = "tandem_tokenizer.json"
"""The file beside a tokenizer.json that holds its TokenizerSpec."""


@dataclass(frozen=True)
class TokenizerSpec:
    """What a tokenizer.json does not say and a TextTokenizer needs: the BOS and EOS tokens (as
    transformers names them), the chat template, and more EOS ids the model declares.

    The post-processor in tokenizer.json already says which of them the default encoding adds.
    """

    bos_token: str | None = None
    bos_token_id: int | None = None
    eos_token: str | None = None
    eos_token_id: int | None = None
    chat_template: str | None = None
    extra_eos_ids: tuple[int, ...] = ()
    split_special_tokens: bool = False  # transformers' flag: special tokens written in text stay text
    fingerprint: str | None = None
    """TextTokenizer.fingerprint of these files, computed when they were written (it walks the whole
    vocabulary: ~0.1 s for 49k pieces, ~0.5 s for 262k, at every start otherwise); used only while
    its version is the current one."""

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> TokenizerSpec:
        fields = json.loads(text)
        return cls(**{**fields, "extra_eos_ids": tuple(fields.get("extra_eos_ids", ()))})


class _FileTokenizer:
    """A `tokenizers.Tokenizer` with its spec, called the way TextTokenizer calls a transformers
    tokenizer (these are the calls transformers' fast tokenizers forward to the same Rust object)."""

    def __init__(self, backend, spec: TokenizerSpec):
        self.backend_tokenizer = backend
        backend.encode_special_tokens = spec.split_special_tokens
        self.bos_token, self.bos_token_id = spec.bos_token, spec.bos_token_id
        self.eos_token, self.eos_token_id = spec.eos_token, spec.eos_token_id
        self.chat_template = spec.chat_template
        self.added_tokens_decoder = backend.get_added_tokens_decoder()

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": self.backend_tokenizer.encode(text, add_special_tokens=add_special_tokens).ids}

    def __len__(self) -> int:
        return self.backend_tokenizer.get_vocab_size(with_added_tokens=True)

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str | None]:
        return [self.backend_tokenizer.id_to_token(int(i)) for i in ids]


class TextTokenizer:
    def __init__(self, tokenizer, extra_eos_ids: Sequence[int] = ()):
        """tokenizer: a transformers tokenizer (or the file-backed stand-in from_file makes);
        extra_eos_ids: more EOS ids the model declares (its generation config's eos_token_id)."""
        self.hf = tokenizer
        self.special = detect_rules(
            lambda text, add: tokenizer(text, add_special_tokens=add)["input_ids"],
            (tokenizer.bos_token_id, tokenizer.bos_token or ""),
            (tokenizer.eos_token_id, tokenizer.eos_token or ""),
        )
        self.special_tokens = {i: t.content for i, t in tokenizer.added_tokens_decoder.items() if t.special}
        declared = {*extra_eos_ids, *([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])}
        self.end_ids = end_of_generation_ids(declared, self.special_tokens)
        own = getattr(tokenizer, "chat_template", None)
        self.has_own_chat_template = bool(own)  # False: a built-in one, likely a pretrained (base) model
        self.chat_template = own or builtin_chat_template(self.special_tokens.values())

    @classmethod
    def from_file(cls, tokenizer_json: str | Path, spec: TokenizerSpec | None = None) -> TextTokenizer:
        """A tokenizer from a tokenizer.json (any family) with `tokenizers` alone; `spec` defaults
        to the SPEC_FILE beside it (edge/tokenizer_conversion.py writes both), else to none."""
        from tokenizers import Tokenizer  # the edge extra; the thin client never tokenizes

        tokenizer_json = Path(tokenizer_json)
        if spec is None:
            spec_file = tokenizer_json.with_name(SPEC_FILE)
            spec = TokenizerSpec.from_json(spec_file.read_text()) if spec_file.is_file() else TokenizerSpec()
        tokenizer = cls(_FileTokenizer(Tokenizer.from_file(str(tokenizer_json)), spec), spec.extra_eos_ids)
        if spec.fingerprint and spec.fingerprint.startswith(f"{FINGERPRINT_VERSION}:"):
            tokenizer.__dict__["fingerprint"] = spec.fingerprint
        return tokenizer

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
        return tokenizer_fingerprint(self._pieces(), self.special_tokens, self.special, self.tokenize(PROBE_TEXT))

    def _pieces(self, chunk: int = 4096) -> Iterator[str | None]:
        """Each id's vocabulary piece, a chunk at a time (a 262k vocabulary's pieces at once
        would cost the edge ~20 MB at its memory peak)."""
        size = len(self.hf)
        for start in range(0, size, chunk):
            yield from self.hf.convert_ids_to_tokens(list(range(start, min(start + chunk, size))))

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
