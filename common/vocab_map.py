"""Cross-vocabulary speculative decoding math: pure functions of token bytes and ids.

A draft and a target with different tokenizers still agree on *text*. These functions move
between the two token spaces through bytes, following Timor et al., "Accelerating LLM Inference
with Lossless Speculative Decoding Algorithms for Heterogeneous Vocabularies" (ICML 2025,
arXiv 2502.05202); Hugging Face's Universal Assisted Generation is the local prior art:

- String-level exact match (SLEM), for greedy decoding: the draft writes text, the target's
  tokenizer turns the text into target ids, and those ids are proposed. The target verifies
  them with its ordinary rule (accept while equal to its own argmax), so every committed token
  is the target's argmax whatever the draft proposed: exact by construction.
- Token-level intersection (TLI), for sampling: the draft's distribution restricted to the
  tokens that are one token in both vocabularies (same bytes), renormalized, and written over
  target ids. The draft samples its proposal from exactly that q and ships q; standard
  speculative sampling (common/sampling.rejection_sample) is exact for any q the proposal was
  truly drawn from, so the committed tokens follow the target's distribution p.

Tokens are compared by their *bytes* (each side's token_bytes table: byte-level BPE's GPT-2
alphabet and SentencePiece's "▁" and <0xNN> byte-fallback pieces are already undone there;
special and control tokens render as b"" and so never match). No model, no engine here.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


def complete_utf8_length(data: bytes) -> int:
    """Length of the longest prefix of `data` that does not end inside a UTF-8 character.

    Only a trailing incomplete sequence (at most 3 bytes) is held back; invalid bytes earlier
    in the text are left for the decoder to replace. A token may end in the middle of a
    character (byte-level BPE splits emoji and CJK; byte-fallback pieces carry one byte each).
    """
    n = len(data)
    for back in range(1, min(4, n) + 1):
        byte = data[n - back]
        if byte & 0xC0 == 0x80:  # a continuation byte: keep looking for the lead byte
            continue
        need = 2 if byte & 0xE0 == 0xC0 else 3 if byte & 0xF0 == 0xE0 else 4 if byte & 0xF8 == 0xF0 else 1
        return n if back >= need else n - back
    return n


def char_boundary_start(token_bytes: Sequence[bytes]) -> int:
    """How many of the last tokens to take so that their bytes start on a character boundary.

    token_bytes: the bytes of each generated token, in order. Returns the smallest k >= 1 whose
    last k tokens' bytes begin with a byte that is not a UTF-8 continuation byte, so they decode
    as text (the SLEM anchor, see slem_proposal). A token without text (a special token) is never
    part of it: text written after one is tokenized afresh. 0 when no such k exists.
    """
    for k in range(1, len(token_bytes) + 1):
        piece = token_bytes[-k]
        if not piece:
            return 0
        if piece[0] & 0xC0 != 0x80:
            return k
    return 0


def slem_proposal(anchor_ids: Sequence[int], anchor_bytes: bytes, new_bytes: bytes,
                  tokenize: Callable[[str], list[int]], draft_ended: bool) -> list[int]:
    """Target ids for text the draft wrote (string-level exact match, arXiv 2502.05202).

    anchor_ids: the last committed target tokens, whose bytes `anchor_bytes` start on a
    character boundary; new_bytes: what the draft wrote after them. The target's tokenizer
    encodes anchor + new text; where that encoding still begins with the anchor's own ids, the
    ids after them are the proposal (re-encoding with the anchor lets a merge across the
    boundary show, and refuses a proposal whose tokenization disagrees with what is committed).
    A trailing incomplete UTF-8 character is left out. The last proposed id is dropped unless
    the draft ended its turn: its text may still grow (the draft stopped inside a target token,
    " Par" of " Paris"). Exactness never depends on this: the target verifies every id.
    """
    data = anchor_bytes + new_bytes
    complete = complete_utf8_length(data)
    if complete <= len(anchor_bytes):
        return []
    ids = tokenize(data[:complete].decode("utf-8", errors="replace"))
    if list(ids[: len(anchor_ids)]) != list(anchor_ids):
        return []
    proposal = list(ids[len(anchor_ids):])
    if not draft_ended or complete < len(data):
        proposal = proposal[:-1]
    return proposal


@dataclass(frozen=True)
class VocabIntersection:
    """Draft ids paired with target ids of identical bytes (TLI's shared vocabulary).

    draft_ids[i] and target_ids[i] ([n] int64 each) are one token in both vocabularies. Several
    draft ids may share one target id (a SentencePiece piece and its <0xNN> byte-fallback twin);
    their probabilities then add up (map_logits).
    """

    draft_ids: np.ndarray  # [n]
    target_ids: np.ndarray  # [n]
    target_vocab: int

    def __len__(self) -> int:
        return len(self.draft_ids)

    def map_logits(self, draft_logits: np.ndarray) -> np.ndarray:
        """Draft logits ([draft vocab]) as logits over target ids ([target_vocab]), -inf outside.

        softmax of the result is the draft's distribution restricted to the intersection and
        renormalized (TLI's q, before the shared sampling transform); draft ids that share a
        target id are combined with logsumexp, i.e. their probabilities add.
        """
        values = np.asarray(draft_logits, dtype=np.float64)[self.draft_ids]
        out = np.full(self.target_vocab, -np.inf)
        single = self._single_target
        out[self.target_ids[single]] = values[single]
        if not single.all():
            np.logaddexp.at(out, self.target_ids[~single], values[~single])
        return out

    @functools.cached_property
    def _single_target(self) -> np.ndarray:
        """[n] bool: the pair is the only one of its target id (a plain assignment suffices)."""
        counts = np.bincount(self.target_ids, minlength=self.target_vocab)
        return counts[self.target_ids] == 1


def intersect_vocabularies(draft_bytes: Sequence[bytes], target_bytes: Sequence[bytes],
                           draft_end_ids: Sequence[int] = (), target_end_id: int | None = None
                           ) -> VocabIntersection:
    """Pairs every draft id with the target id of exactly the same (non-empty) bytes.

    draft_bytes / target_bytes: each id's bytes ([vocab] lists; special tokens b""). Where the
    target has several ids with the same bytes, the lowest wins (a tokenizer's duplicates are
    unreachable by its own encoder but one of them must stand for the text). The draft's own
    end-of-turn ids (draft_end_ids) map to target_end_id: a draft that ends its turn proposes
    the target's end.
    """
    by_bytes: dict[bytes, int] = {}
    for target_id, piece in enumerate(target_bytes):
        if piece and piece not in by_bytes:
            by_bytes[piece] = target_id
    pairs = [(d, by_bytes[piece]) for d, piece in enumerate(draft_bytes) if piece and piece in by_bytes]
    if target_end_id is not None:
        pairs += [(int(d), int(target_end_id)) for d in draft_end_ids if 0 <= d < len(draft_bytes)]
    draft_ids = np.array([d for d, _ in pairs], dtype=np.int64)
    target_ids = np.array([t for _, t in pairs], dtype=np.int64)
    return VocabIntersection(draft_ids, target_ids, len(target_bytes))


def pair_problems(draft_name: str, target_name: str, draft_bytes: Sequence[bytes],
                  target_roundtrip: Callable[[str], bytes], intersection_size: int) -> list[str]:
    """Why a draft and a target of different vocabularies cannot work as a pair ([] if they can).

    target_roundtrip(text) -> the bytes of the target tokenizer's ids for `text`: it must give
    the text back (a tokenizer that cannot encode text can verify nothing the draft writes), up to
    the space a SentencePiece tokenizer puts before a text's first word.
    """
    problems = []
    if not any(draft_bytes):
        problems.append(f"every token of the draft model {draft_name!r} detokenizes to empty text")
    probe = "The quick brown fox, 12 + 30 = 42."
    if target_roundtrip(probe).removeprefix(b" ") != probe.encode():
        problems.append(f"the target model {target_name!r}'s tokenizer does not encode text and decode it back")
    if intersection_size == 0:
        problems.append(f"no token of the draft model {draft_name!r} has the same text as a token of the "
                        f"target model {target_name!r}")
    return problems
