"""How the draft picks its tokens: greedy, or sampled the way the verifier expects.

- Greedy: the draft's argmax; the target accepts while it equals the target's argmax.
- Ids-only sampling: the draft samples its own q with the *same position-keyed noise* the
  target uses for its own token (common.sampling.sample_keyed, STREAM_TARGET). The target's
  choice never depends on the draft, so the output is exact; sharing the noise makes the
  two choices coincide with probability >= (1 - TV) / (1 + TV) (Gumbel coupling; Daliri et
  al. 2024, "drafter-invariant speculative decoding", arXiv 2408.07978).
- Sparse-q sampling: the draft truncates q to its top-k, quantizes it, samples from the
  quantized q with its own independent stream, and ships that q for the rejection rule.

A *guess* (pipelining: the token standing in for the bonus token of a block in flight) is
never verified; the cloud draws that token from p with the target's keyed noise, so the
guess shares that noise in every mode.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from common import sampling
from common.errors import InvalidArgument
from common.grammar import GrammarMask, llg_tokenizer
from common.wire import DraftMode, SamplingParams, SparseDist


@dataclass(frozen=True)
class DraftChoice:
    token_id: int
    confidence: float  # the draft's probability of its own choice
    dist: SparseDist | None = None  # sparse-q mode only


class DraftPolicy:
    def __init__(self, params: SamplingParams, mode: DraftMode = DraftMode.TOKEN_IDS, top_k: int = 8):
        self.params = params
        self.sparse = mode == DraftMode.SPARSE_Q and not params.greedy
        self.top_k = top_k

    def choose(self, logits: np.ndarray, position: int, guess: bool = False) -> DraftChoice:
        """The draft's token at `position` from its logits there ([vocab])."""
        p = self.params
        if p.greedy:
            token = sampling.greedy(logits)
            return DraftChoice(token, _softmax_at(logits, token))
        q = sampling.logits_to_probs(logits, p.temperature, p.top_k, p.top_p)
        if not self.sparse or guess:
            token = sampling.sample_keyed(q, p.seed, sampling.STREAM_TARGET, position)
            # The cloud ignores the distribution of a guess; a one-hot one is the smallest valid.
            dist = SparseDist([token], [sampling.Q_SCALE]) if self.sparse else None
            return DraftChoice(token, float(q[token]), dist)
        ids, weights = sampling.quantize_probs(q, self.top_k)
        u = sampling.keyed_uniform(p.seed, sampling.STREAM_DRAFT, position, np.zeros(1, dtype=np.int64))[0]
        token = sampling.sample_quantized(ids, weights, u)
        dist = SparseDist(token_ids=[int(i) for i in ids], weights=[int(w) for w in weights])
        return DraftChoice(token, float(q[token]), dist)


def _softmax_at(logits: np.ndarray, token: int) -> float:
    """softmax(logits)[token]. In float32: it runs on every drafted token and only steers block length."""
    shifted = np.asarray(logits, dtype=np.float32) - np.max(logits)
    return float(np.exp(shifted[token]) / np.exp(shifted).sum(dtype=np.float64))


class ServedLogits:
    """The draft's logits adjusted as the cloud adjusts the target's (cloud/session.py's
    _served_row): penalties and biases as a function of the tokens before the position
    (common.sampling.penalize), then the answer's grammar mask (common/grammar.py). Drafts then
    follow the same constraint and penalties as the target, so they are not rejected for
    ignoring them. Exactness never depends on this (the cloud applies its own); the local model
    answering alone (fallback, edge mode) is constrained and penalized by it.

    answer_start: where the answer begins in the contexts passed to `apply` (the prompt's length).
    """

    def __init__(self, sampling: SamplingParams, grammar: str, drafter, answer_start: int):
        self.sampling = sampling
        self.mask = GrammarMask(grammar, llg_tokenizer(drafter.tokenizer, drafter.vocab_size),
                                drafter.vocab_size) if grammar else None
        self.answer_start = answer_start
        self._lock = threading.Lock()  # drafting and shadowing call from worker threads

    @classmethod
    def needed(cls, sampling: SamplingParams, grammar: str) -> bool:
        return bool(grammar) or sampling.penalizes

    def apply(self, context: Sequence[int], logits: np.ndarray) -> np.ndarray:  # [vocab] -> [vocab]
        """The logits after `context`, adjusted. The mask is left out where it cannot judge (a
        context already outside the grammar, or draft logits allowing nothing it permits)."""
        prompt, answer = context[: self.answer_start], context[self.answer_start:]
        if self.sampling.penalizes:
            logits = self.sampling.penalize(logits, prompt, answer)
        if self.mask is None:
            return logits
        with self._lock:
            try:
                masked = self.mask.masked_after(answer, logits)
            except InvalidArgument:
                return logits
        return logits if masked is None or not np.isfinite(masked).any() else masked
