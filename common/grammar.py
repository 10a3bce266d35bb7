"""Structured output: a grammar's token mask, applied identically by the cloud and the edge.

The grammar engine is llguidance (the one llama.cpp uses). xgrammar fits a speculative
verifier as well (a matcher with rollback), but its wheel requires torch, transformers and
triton, and the edge never imports torch; llguidance has no dependency but numpy-free Rust,
reads the same tokenizer.json both sides already hold, and has rollback too.

How the mask keeps speculative decoding exact: the target's distribution under a grammar is
p'(x) = p(x) 1[x allowed after the committed tokens] / Z. The cloud applies the mask to its
logits at every verified position, the mask at draft index i being the grammar's state after
the committed tokens plus drafts[:i] (the only prefix under which position i's token counts),
so acceptance, correction and the bonus token all follow p'. A constrained greedy answer is
therefore the argmax of the masked logits at every step, exactly what transformers' generate
does with the same mask as a logits processor. The edge masks its draft the same way, only so
that drafts stay in the grammar (acceptance); exactness never depends on it.

`GrammarMask.sync(tokens)` makes the matcher's consumed tokens equal `tokens` (the generated
ones), rolling back what a rejection discarded: the matcher follows the committed answer and
any speculative suffix, never a stale one.

This module imports llguidance lazily and no engine: the thin client never builds a grammar.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from copy import copy

import numpy as np

from common.errors import InvalidArgument

JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
"""How JSON is written under a schema: one space after ',' and ':', no other whitespace (a
model that may emit whitespace forever never finishes an object)."""


def json_schema_grammar(schema: dict | bool, parameter: str = "response_format.json_schema.schema") -> str:
    """The llguidance grammar of JSON text matching `schema` ({"type": "object"} for JSON mode).

    Raises InvalidArgument naming `parameter` when the engine rejects the schema.
    """
    import llguidance

    if not isinstance(schema, (dict, bool)):
        raise InvalidArgument(f"{parameter} must be a JSON Schema object, got {type(schema).__name__}")
    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(schema), overrides=JSON_OPTIONS)
    except (ValueError, TypeError) as e:
        raise InvalidArgument(f"{parameter} is not a usable JSON Schema: {e}") from None
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
    if is_error:
        raise InvalidArgument(f"{parameter} is not a usable JSON Schema: {messages[0] if messages else 'rejected'}")
    return grammar


def json_object_grammar() -> str:
    """JSON mode (response_format {"type": "json_object"}): any JSON object."""
    return json_schema_grammar({"type": "object"}, "response_format")


_TOKENIZERS: dict[tuple[str, int], object] = {}


def llg_tokenizer(text_tokenizer, vocab_size: int):
    """The llguidance tokenizer of a common.text_tokenizer.TextTokenizer, built once per
    (fingerprint, vocab size): ~1 s for a 49k vocabulary, so never per request.

    Both sides build it from the same tokenizer.json (the Rust pipeline inside the transformers
    tokenizer, or the file the edge reads), and the model's end ids are its EOS: the grammar
    allows them exactly where the document may end.
    """
    import llguidance

    key = (text_tokenizer.fingerprint, vocab_size)
    if key not in _TOKENIZERS:
        backend = copy(text_tokenizer.hf.backend_tokenizer)
        backend.no_padding()
        backend.no_truncation()
        _TOKENIZERS[key] = llguidance.LLTokenizer(backend.to_str(), n_vocab=vocab_size,
                                                  eos_token=list(text_tokenizer.end_ids))
    return _TOKENIZERS[key]


class GrammarMask:
    """One generation's grammar state: which tokens may come next after a given answer so far."""

    def __init__(self, grammar: str, tokenizer, vocab_size: int):
        import llguidance

        self._llg = llguidance
        self.vocab_size = vocab_size
        self.matcher = llguidance.LLMatcher(tokenizer, grammar, log_level=0)
        if self.matcher.is_error():
            raise InvalidArgument(f"grammar rejected: {self.matcher.get_error()}")
        self.consumed: list[int] = []  # the tokens the matcher has taken, in order (and an end token)
        self._ended = False  # consumed ends with an end token (not given to the matcher)
        self._end_ids = set(tokenizer.eos_tokens)
        self._words = np.zeros(1 * ((vocab_size + 31) // 32), dtype=np.int32)

    def sync(self, tokens: Sequence[int]) -> bool:
        """Moves the matcher to the state after `tokens` (the generated tokens, in order).

        Rolls back the consumed tokens `tokens` does not share, then consumes the rest. Returns
        False when a token is outside the grammar: the state then stays after the longest valid
        prefix, and nothing after that token can be judged (its probability is zero anyway).
        An end token is never given to the matcher (llguidance's rollback does not restore a
        matcher stopped by one): it is only recorded, as the last token, where the mask allows it.
        """
        shared = 0
        limit = min(len(self.consumed), len(tokens))
        while shared < limit and self.consumed[shared] == tokens[shared]:
            shared += 1
        if shared < len(self.consumed):
            removed = len(self.consumed) - shared - int(self._ended)  # the end token is always the last
            self._ended = False
            if removed:
                assert self.matcher.rollback(removed), self.matcher.get_error()
            del self.consumed[shared:]
        rest = [int(t) for t in tokens[shared:]]
        while rest:
            if self._ended:
                return False  # nothing follows the end
            taken = self.matcher.try_consume_tokens(rest)
            self.consumed.extend(rest[:taken])
            rest = rest[taken:]
            if not rest:
                break
            if rest[0] in self._end_ids and self.allowed()[rest[0]]:
                self.consumed.append(rest.pop(0))
                self._ended = True
            else:
                return False
        return True

    def allowed(self) -> np.ndarray:  # [vocab] bool
        """The tokens the grammar allows next (end ids only where the document may end)."""
        if self._ended:
            return np.zeros(self.vocab_size, dtype=bool)
        self.matcher.unsafe_compute_mask_ptr(self._words.ctypes.data, self._words.nbytes)
        bits = np.unpackbits(self._words.view(np.uint8), bitorder="little")[: self.vocab_size]
        return bits.astype(bool)

    def mask(self, logits: np.ndarray) -> np.ndarray:  # [vocab] -> [vocab]
        """The logits with every token the grammar forbids next set to -inf (a new array)."""
        logits = np.asarray(logits)
        assert logits.shape == (self.vocab_size,), (logits.shape, self.vocab_size)
        if self._ended:
            return logits  # after the end token: a position a verifier may score but nothing commits
        allowed = self.allowed()
        if not allowed.any():
            raise InvalidArgument("the grammar allows no token here (an answer outside it was resumed?)")
        return np.where(allowed, logits, np.float32(-np.inf)).astype(logits.dtype, copy=False)

    def masked_after(self, tokens: Sequence[int], logits: np.ndarray) -> np.ndarray | None:
        """mask(logits) in the state after `tokens`; None when `tokens` leave the grammar."""
        return self.mask(logits) if self.sync(tokens) else None
