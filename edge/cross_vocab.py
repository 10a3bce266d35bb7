"""A draft model of another vocabulary, speaking the target's token ids.

Most cloud targets do not share the draft's tokenizer (a Gemma target, a SmolLM2 draft). The
wire keeps carrying *target* ids, so the cloud verifies exactly as for a same-vocabulary pair
(common/sampling.py's match_targets and rejection_sample, unchanged) and a token costs the
same bytes; this adapter moves text between the two token spaces on the edge. It implements
edge.draft_engine.DraftEngine in target-id space around any draft engine:

- The draft reads the conversation as text: the prompt's text tokenized by the draft's own
  tokenizer (with its own BOS rules; a chat prompt the engine rendered is re-rendered with the
  draft's template, see remember_prompt), then the answer so far re-tokenized by the draft. The
  draft engine's prefix rollback absorbs any re-tokenization that changes its last tokens.
- Greedy: string-level exact match (SLEM, Timor et al. 2025, arXiv 2502.05202; as Hugging
  Face's Universal Assisted Generation does). The draft writes text greedily; the target's
  tokenizer turns it into target ids (common.vocab_map.slem_proposal), proposed one per call.
  The target accepts a proposal only where it equals its own argmax, so the answer is the
  target's greedy answer whatever the draft wrote.
- Sampling: token-level intersection (TLI, same paper). The draft's logits restricted to the
  tokens of identical bytes in both vocabularies, written over target ids
  (common.vocab_map.VocabIntersection.map_logits); the shared sampling transform and the draft
  policy then sample the proposal from exactly that q and, in sparse-q mode, ship that q. The
  cloud's rejection rule accepts x with min(1, p(x)/q(x)) and otherwise draws from
  norm(max(0, p - q)): the committed token is distributed as p for *any* q the proposal was
  truly drawn from (Leviathan et al. 2023, Theorem 1), so the output distribution is the
  target's. In ids-only mode the cloud commits its own keyed sample, exact for any proposal.

A draft that ends its turn proposes the target's end of sequence. A pair that cannot work
(a draft whose tokens all detokenize to nothing, a target tokenizer that cannot encode text,
no token in common) is refused, naming both models (check_pair).
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from common.errors import FailedPrecondition
from common.text_tokenizer import TextTokenizer
from common.vocab_map import (
    VocabIntersection, char_boundary_start, complete_utf8_length, intersect_vocabularies, pair_problems,
    slem_proposal,
)
from common.wire import ModelInfo, SamplingParams
from edge.draft_engine import DraftEngine

MAX_DRAFT_TOKENS_PER_PROPOSAL = 8
"""Draft tokens written while looking for one more whole target token before giving up (text
the target tokenizer cannot place, a draft that loops on empty tokens)."""


PROMPT_TAIL_CHARS = 32
"""Characters of the prompt the answer is tokenized after (see CrossVocabDrafter._begin)."""

ANCHOR_SEARCH_TOKENS = 8
"""Most committed tokens searched back for a character boundary (the SLEM anchor)."""


@dataclass
class _Proposal:
    """SLEM state for one base context: what the draft wrote after it, as target ids."""

    base: list[int]  # target ids (prompt and answer) the draft continues
    draft_context: list[int]  # the draft's ids for base, then its own tokens
    anchor_ids: list[int]
    anchor_bytes: bytes
    held: bytes  # the base's trailing incomplete character, which the draft must write first
    written: bytes = b""  # the draft's bytes after the base's complete text
    ended: bool = False  # the draft ended its turn
    steps: int = 0  # draft tokens written since the last new proposal
    ids: list[int] = field(default_factory=list)  # proposed target ids
    confidence: list[float] = field(default_factory=list)  # the draft's probability behind each


class CrossVocabDrafter:
    """edge.draft_engine.DraftEngine in the target's token ids, around a draft of another vocabulary."""

    crosses_vocabularies = True  # a draft of another family: sessions start guessing (edge/decode_hints.py)

    def __init__(self, draft: DraftEngine, target: TextTokenizer, info: ModelInfo,
                 intersection: VocabIntersection | None = None, target_bytes: list[bytes] | None = None):
        """target: the target's tokenizer (its fingerprint must be info.tokenizer_fingerprint);
        intersection, target_bytes: tables a sibling shares (computed here when not given)."""
        self.draft = draft
        self.target = target
        self.info = info
        self.name = draft.name
        self.vocab_size = info.vocab_size
        self.n_ctx = getattr(draft, "n_ctx", 0)
        self.target_bytes = target_bytes or target.token_bytes_table(info.vocab_size)  # each target id's bytes
        self._end_id = _end_id(target, info)
        self.intersection = intersection or intersect_vocabularies(
            [draft.token_bytes(i) for i in range(draft.vocab_size)], self.target_bytes,
            draft.eos_token_ids, self._end_id)
        self._draft_ends = set(draft.eos_token_ids)
        self._greedy = True
        self._prompt: list[int] | None = None  # the target prompt the draft began at
        self._draft_prompt: list[int] = []  # the draft's ids for it
        self._proposal: _Proposal | None = None
        self._chats: OrderedDict[tuple[int, ...], str] = OrderedDict()  # see remember_prompt
        self._prompt_tail, self._prompt_tail_ids = "", []
        self._lock = threading.Lock()

    # -- what the loop, the engine and the SDK read (all in the target's terms) ----------------

    @property
    def tokenizer(self) -> TextTokenizer:
        return self.target

    @property
    def fingerprint(self) -> str:
        """The target's: the ids this engine speaks are the target's."""
        return self.target.fingerprint

    @property
    def eos_token_ids(self) -> list[int]:
        return list(self.info.eos_token_ids)

    @property
    def chat_template(self) -> str:
        return self.info.chat_template or self.target.chat_template

    def tokenize(self, text: str) -> list[int]:
        return self.target.tokenize(text)

    def token_bytes(self, token_id: int) -> bytes:
        return self.target_bytes[token_id] if 0 <= token_id < len(self.target_bytes) else b""

    def use_sampling(self, params: SamplingParams) -> None:
        """Greedy proposes by SLEM, sampling by TLI; told before each generation (edge.draft_engine.prepare)."""
        self._greedy = params.greedy

    def remember_prompt(self, target_ids: Sequence[int], draft_text: str) -> None:
        """The draft's own rendering of a prompt the engine encoded for the target (a chat
        rendered with each model's template); other prompts are read as text."""
        self._chats[tuple(target_ids)] = draft_text
        while len(self._chats) > 64:
            self._chats.popitem(last=False)

    def remember_chat(self, target_ids: Sequence[int], messages: list[dict]) -> None:
        """The draft reads the chat the target's ids render with the draft's own template."""
        from edge.chat_template import render_chat

        rules = self.draft.tokenizer.special
        self.remember_prompt(target_ids, render_chat(self.draft.chat_template, messages,
                                                     bos_token=rules.bos_token, eos_token=rules.eos_token))

    def sibling(self) -> CrossVocabDrafter:
        other = CrossVocabDrafter(self.draft.sibling(), self.target, self.info, self.intersection, self.target_bytes)
        other._chats = self._chats  # noqa: SLF001 - one memory of renderings for all contexts
        return other

    def close(self) -> None:
        self.draft.close()

    # -- drafting -------------------------------------------------------------------------------

    def start(self, context: Sequence[int], reuse_prefix: bool = False) -> np.ndarray:
        with self._lock:
            self._begin(list(context))
            self.draft.start(self._draft_prompt, reuse_prefix)
            return self._next(list(context))

    def next_logits(self, context: Sequence[int]) -> np.ndarray:
        with self._lock:
            context = list(context)
            if self._prompt is None or context[: len(self._prompt)] != self._prompt:
                self._begin(context)
            return self._next(context)

    def _begin(self, prompt: list[int]) -> None:
        """The draft's prompt for a target prompt: the draft's own rendering of a chat the engine
        rendered for both, else the prompt's text encoded by the draft's tokenizer (its BOS rules)."""
        text = self._chats.get(tuple(prompt))
        if text is None:
            text = b"".join(self.token_bytes(t) for t in prompt).decode("utf-8", errors="replace")
            self._draft_prompt = self.draft.tokenizer.encode(text)
        else:
            self._draft_prompt = self.draft.tokenizer.encode_rendered_chat(text)
        self._prompt = prompt
        self._proposal = None
        # The answer is tokenized after the prompt's last characters, so that a tokenizer that
        # marks the start of a text (SentencePiece's dummy "▁") treats it as the continuation it is.
        self._prompt_tail = text[-PROMPT_TAIL_CHARS:]
        self._prompt_tail_ids = self.draft.tokenize(self._prompt_tail) if self._prompt_tail else []

    def draft_context(self, context: Sequence[int]) -> list[int]:
        """The draft's ids for a target context (its prompt, then the answer's complete text)."""
        with self._lock:
            context = list(context)
            if self._prompt is None or context[: len(self._prompt)] != self._prompt:
                self._begin(context)
            return list(self._read(context).draft_context)

    def _draft_answer_ids(self, text: str) -> list[int]:
        """The draft's ids for the answer's text, as a continuation of the prompt."""
        if not text:
            return []
        before = self._prompt_tail_ids
        ids = self.draft.tokenize(self._prompt_tail + text)
        if ids[: len(before)] == before:
            return ids[len(before):]
        return self.draft.tokenize(text)  # the answer's first characters merged with the prompt's last

    def _next(self, context: list[int]) -> np.ndarray:
        if self._greedy:
            token, confidence = self._slem_next(context)
            return _one_hot_logits(token, confidence, self.vocab_size)
        return self.intersection.map_logits(self.draft.next_logits(self._read(context).draft_context))

    def _read(self, context: list[int]) -> _Proposal:
        """The draft's view of `context`: its ids for the answer's complete text, the anchor."""
        answer = [self.token_bytes(t) for t in context[len(self._prompt):]]
        written = b"".join(answer)
        complete = complete_utf8_length(written)
        draft_ids = self._draft_answer_ids(written[:complete].decode("utf-8", errors="replace"))
        recent = [self.token_bytes(t) for t in context[-ANCHOR_SEARCH_TOKENS:]]  # the prompt's last ones too
        anchor = char_boundary_start(recent)
        state = _Proposal(base=context, draft_context=self._draft_prompt + draft_ids,
                          anchor_ids=context[len(context) - anchor:],
                          anchor_bytes=b"".join(recent[len(recent) - anchor:]), held=written[complete:])
        if state.held and not anchor:
            state.steps = MAX_DRAFT_TOKENS_PER_PROPOSAL  # no text to re-tokenize the split character with
        return state

    def _slem_next(self, context: list[int]) -> tuple[int, float]:
        """The next proposed target id after `context`, and the draft's confidence in it."""
        state = self._proposal
        n = len(context) - len(state.base) if state else -1
        if (state is None or n < 0 or context[: len(state.base)] != state.base
                or context[len(state.base):] != state.ids[:n]):
            state = self._proposal = self._read(context)
            n = 0
        while len(state.ids) <= n and not state.ended and state.steps < MAX_DRAFT_TOKENS_PER_PROPOSAL:
            self._write_one(state)
        if len(state.ids) > n:
            return state.ids[n], state.confidence[n]
        # Nothing the target's tokenizer can place: propose its end with no confidence, which
        # ends the block (the cloud decides the token, as for any draft).
        return self._end_id, 0.0

    def _write_one(self, state: _Proposal) -> None:
        """The draft writes one greedy token; the proposal grows by the target tokens it completes."""
        logits = self.draft.next_logits(state.draft_context)
        token = int(np.argmax(logits))
        shifted = np.asarray(logits, dtype=np.float64) - float(np.max(logits))
        probability = 1.0 / float(np.exp(shifted).sum())
        state.draft_context.append(token)
        state.steps += 1
        if token in self._draft_ends:
            state.ended = True
        else:
            state.written += self.draft.token_bytes(token)
        held, written = state.held, state.written
        common = min(len(held), len(written))
        if written[:common] != held[:common]:
            state.steps = MAX_DRAFT_TOKENS_PER_PROPOSAL  # it did not finish the character the answer ends inside
            return
        if len(written) < len(held):
            return
        new = written[len(held):]
        ids = slem_proposal(state.anchor_ids, state.anchor_bytes, new, self.target.tokenize, state.ended)
        if state.ended and b"".join(self.token_bytes(t) for t in ids) == new:
            ids.append(self._end_id)  # all it wrote is proposed: its end of turn comes next
        if ids[: len(state.ids)] != state.ids:
            state.steps = MAX_DRAFT_TOKENS_PER_PROPOSAL  # more text re-tokenized what was proposed: stop here
            return
        if len(ids) > len(state.ids):
            state.confidence += [probability] * (len(ids) - len(state.ids))
            state.ids = ids
            state.steps = 0


def _one_hot_logits(token: int, confidence: float, vocab: int) -> np.ndarray:
    """Logits [vocab] whose argmax is `token` and whose softmax there is about `confidence`."""
    confidence = min(max(confidence, 1e-6), 1 - 1e-6)
    logits = np.zeros(vocab, dtype=np.float32)
    logits[token] = math.log(confidence * (vocab - 1) / (1 - confidence))
    if logits[token] <= 0:  # argmax must stay `token` whatever the confidence
        logits[token] = 1e-3
    return logits


def _end_id(target: TextTokenizer, info: ModelInfo) -> int:
    """The target id a draft's end of turn becomes: its EOS, else its first end id."""
    eos = info.special_tokens.eos_token_id
    if eos is not None and eos in info.eos_token_ids:
        return eos
    return info.eos_token_ids[0] if info.eos_token_ids else (eos if eos is not None else 0)


def check_pair(draft: DraftEngine, target: TextTokenizer, info: ModelInfo) -> CrossVocabDrafter:
    """The adapter for a draft and a target of different vocabularies, or FailedPrecondition
    naming both models when the pair cannot work."""
    if target.fingerprint != info.tokenizer_fingerprint:
        raise FailedPrecondition(
            f"the tokenizer given for the cloud model {info.model_name!r} (fingerprint {target.fingerprint}) is not "
            f"the one it serves ({info.tokenizer_fingerprint}); the draft model {draft.name!r} cannot be paired "
            "through it: pass the target's own files with --target-tokenizer")
    adapter = CrossVocabDrafter(draft, target, info)
    table = adapter.target_bytes

    def roundtrip(text: str) -> bytes:
        return b"".join(table[t] if 0 <= t < len(table) else b"" for t in target.tokenize(text))

    draft_bytes = [draft.token_bytes(i) for i in range(draft.vocab_size)]
    problems = pair_problems(draft.name, info.model_name, draft_bytes, roundtrip, len(adapter.intersection))
    if problems:
        raise FailedPrecondition(f"the draft model {draft.name!r} cannot draft for the cloud model "
                                 f"{info.model_name!r}: " + "; ".join(problems))
    return adapter
