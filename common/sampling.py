"""Sampling and speculative verification math: pure functions of arrays.

No model, no I/O, no grpc: draft (edge) and target (cloud) call the same functions, so a
distribution transform is applied identically on both sides.

Terms (Leviathan et al. 2023, "Fast Inference from Transformers via Speculative Decoding",
arXiv 2211.17192; Chen et al. 2023, arXiv 2302.01318):
  - p: the target's distribution at a position, after temperature, top-k and top-p.
  - q: the draft's distribution at that position, transformed the same way.
  - accepted token: a drafted token x kept with probability min(1, p(x) / q(x)).
  - recovered token: at the first rejection, a token drawn from norm(max(0, p - q)).
  - bonus token: when all k drafts are accepted, a token drawn from p at position k + 1.
The result is distributed exactly as sampling from p alone. With a one-hot q (the draft's
proposal taken as certain, "ids only" on the wire) acceptance is p(x) and the recovered
token is drawn from p with x removed.

Randomness is *position-keyed*: the uniform numbers used at absolute position i come from a
counter-based hash of (seed, stream, i, token). Output is therefore a function of seed and
prefix only, not of how tokens were grouped into draft blocks, of timing, or of which
replica served the request.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

Q_SCALE = 1 << 16
"""Quantized draft probabilities are integers summing to Q_SCALE (see quantize_probs)."""

# Independent random streams derived from one session seed.
STREAM_TARGET = 1  # the target's own sample at a position (bonus, cloud-only, ids-only mode)
STREAM_ACCEPT = 2  # acceptance uniforms of the rejection rule
STREAM_RESIDUAL = 3  # recovered tokens drawn from norm(max(0, p - q))
STREAM_DRAFT = 4  # the draft's own samples in sparse-q mode (must be independent of the rest)

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finalizer (Steele et al. 2014): a bijective 64-bit mixer with good avalanche."""
    x = (x + np.uint64(0x9E3779B97F4A7C15)) & _MASK64
    x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
    x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
    return x ^ (x >> np.uint64(31))


def keyed_uniform(seed: int, stream: int, position: int, token_ids: np.ndarray) -> np.ndarray:
    """Uniform numbers in (0, 1), one per token id, fixed by (seed, stream, position, token).

    token_ids: [n] integer array. Returns [n] float64.
    """
    key = _splitmix64(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))
    key = _splitmix64(key ^ np.uint64(stream))
    key = _splitmix64(key ^ np.uint64(position))
    bits = _splitmix64(key ^ np.asarray(token_ids, dtype=np.uint64))
    return ((bits >> np.uint64(11)).astype(np.float64) + 0.5) * (1.0 / (1 << 53))


def logits_to_probs(
    logits: np.ndarray,  # [..., vocab]
    temperature: float,
    top_k: int = 0,
    top_p: float = 1.0,
) -> np.ndarray:  # [..., vocab] float64, rows sum to 1
    """Temperature, then top-k, then top-p (nucleus); returns normalized float64 probabilities.

    The order and the tie rules are those of transformers' warpers: top-k keeps every token
    tied with the k-th; top-p keeps the smallest set of most likely tokens whose mass reaches
    top_p (ties ordered by token id). temperature must be > 0 (greedy never builds a
    distribution).
    """
    assert temperature > 0, "greedy decoding uses argmax, not a distribution"
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    vocab = scaled.shape[-1]
    if 0 < top_k < vocab:
        kth = np.partition(scaled, vocab - top_k, axis=-1)[..., vocab - top_k, None]
        scaled = np.where(scaled < kth, -np.inf, scaled)
    scaled = scaled - scaled.max(axis=-1, keepdims=True)
    probs = np.exp(scaled)
    probs /= probs.sum(axis=-1, keepdims=True)
    if 0 < top_p < 1:
        rows = probs.reshape(-1, vocab)
        for row in rows:
            keep = _nucleus(row, top_p)
            kept = row[keep]
            row[:] = 0.0
            row[keep] = kept / kept.sum()
        probs = rows.reshape(probs.shape)
    return probs


def _nucleus(probs: np.ndarray, top_p: float) -> np.ndarray:
    """Token ids of the smallest most-likely set of probs ([vocab]) with mass >= top_p.

    Sorting the whole vocabulary costs milliseconds per position; the nucleus is usually a
    few dozen tokens. So sort only the m most likely (every token tied with the m-th
    included), and grow m until their mass reaches top_p: no token outside them can then
    be kept, and the sorted prefix, its running sums and so the result are exactly those
    of a full stable sort.
    """
    support = np.flatnonzero(probs > 0)  # ascending ids: a stable sort keeps id order in ties
    values = probs[support]
    n = len(support)
    m = min(n, 256)
    while True:
        if m < n:
            candidates = support[values >= np.partition(values, n - m)[n - m]]
        else:
            candidates = support
        order = candidates[np.argsort(-probs[candidates], kind="stable")]
        running = np.cumsum(probs[order])
        if running[-1] >= top_p or m == n:
            # Keep a token if the mass strictly before it is below top_p.
            return order[running - probs[order] < top_p]
        m = n if m * 16 > n // 4 else m * 16


def greedy(logits: np.ndarray) -> int:
    """Argmax of one row of logits ([vocab]); the first index wins ties, as in torch.argmax."""
    return int(np.argmax(np.asarray(logits, dtype=np.float32)))


def sample_keyed(probs: np.ndarray, seed: int, stream: int, position: int) -> int:
    """Draws one token from probs ([vocab]) with the exponential race (Gumbel-max).

    The token is argmax_j p_j / E_j with E_j = -log u_j, u_j keyed by (seed, stream, position,
    j): an exact sample from p. Two parties holding the same key draw from shared noise, so
    similar distributions give the same token with high probability (a coupling), while the
    sample from each one alone is still exact.
    """
    assert probs.ndim == 1, probs.shape
    support = np.flatnonzero(probs > 0)
    assert support.size, "empty distribution"
    exp_noise = -np.log(keyed_uniform(seed, stream, position, support))
    return int(support[np.argmax(probs[support] / exp_noise)])


def quantize_probs(probs: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """Truncates a distribution to its top_k tokens and quantizes it to integers summing to Q_SCALE.

    probs: [vocab]. Returns (token_ids [n], weights [n] int64), n <= top_k, every weight >= 1,
    ordered by decreasing probability. The draft samples from exactly these integers, so the q the
    target verifies against is bit-identical to the one the draft was drawn from.
    """
    k = int(min(top_k, np.count_nonzero(probs)))
    assert k >= 1, "empty distribution"
    top = np.argpartition(-probs, k - 1)[:k]
    top = top[np.argsort(-probs[top], kind="stable")]
    mass = probs[top] / probs[top].sum() * Q_SCALE
    weights = np.floor(mass).astype(np.int64)
    remainder = Q_SCALE - int(weights.sum())
    by_fraction = np.argsort(-(mass - weights), kind="stable")
    weights[by_fraction[:remainder]] += 1
    keep = weights > 0
    return top[keep], weights[keep]


def sample_quantized(token_ids: np.ndarray, weights: np.ndarray, uniform: float) -> int:
    """Draws from an integer distribution (quantize_probs output) with one uniform in (0, 1).

    The uniform picks one of Q_SCALE equally likely tickets; token i owns weights[i] of them,
    so the draw has probability exactly weights[i] / Q_SCALE, in integer arithmetic.
    """
    assert token_ids.shape == weights.shape and int(weights.sum()) == Q_SCALE and 0 < uniform < 1
    ticket = min(int(uniform * Q_SCALE), Q_SCALE - 1)
    return int(token_ids[np.searchsorted(np.cumsum(weights), ticket, side="right")])


def dense_from_quantized(token_ids: np.ndarray, weights: np.ndarray, vocab: int) -> np.ndarray:
    """The float64 [vocab] distribution that a quantized sparse q stands for."""
    q = np.zeros(vocab, dtype=np.float64)
    q[token_ids] = weights / Q_SCALE
    return q


def match_targets(draft_ids: Sequence[int], target_token: Callable[[int], int]) -> tuple[int, int]:
    """Greedy, or ids-only sampling: accepts drafts while they equal the target's own token.

    draft_ids: [k] the drafted tokens; target_token(i): the target's own token at draft index i
    (i = k is the bonus position), asked for lazily and only up to the first mismatch. Returns
    (accepted_count, next_token): next_token is the target's token at the first mismatch, or
    the bonus token after k accepted drafts.

    Greedy, this is exact by construction: every committed token is the target's argmax. With
    position-keyed noise (sampling, ids-only wire mode) the target's token at a position does
    not depend on the draft, so for a proposal x chosen independently of that noise,
    acceptance has probability p(x) and a rejection yields a draw from p without x: exactly
    rejection_sample's rule for a one-hot q. The edge chooses x with the same noise (a
    coupling), which raises acceptance towards 1 - TV(p, q); the committed token is still the
    target's own sample, so the output is exact either way.
    """
    for i, x in enumerate(draft_ids):
        target = target_token(i)
        if target != x:
            return i, target
    return len(draft_ids), target_token(len(draft_ids))


def rejection_sample(
    target_probs: np.ndarray,  # [k + 1, vocab] p at each drafted position, then the bonus position
    draft_probs: np.ndarray,  # [k, vocab] q each draft was sampled from
    draft_ids: np.ndarray,  # [k] the drafted tokens
    accept_uniforms: np.ndarray,  # [k] in (0, 1)
    residual_sampler,  # (probs [vocab], index) -> token: draws the recovered / bonus token
) -> tuple[int, int]:
    """Verifies k drafted tokens against the target; returns (accepted_count, next_token).

    Draft i is accepted iff accept_uniforms[i] < min(1, p_i(x_i) / q_i(x_i)); drafts after the
    first rejection are discarded. next_token is the recovered token drawn from
    norm(max(0, p_i - q_i)) at the first rejection i, or the bonus token drawn from p_k.
    Exact (the committed tokens are distributed as p) when x_i ~ q_i and the uniforms are
    independent of the drafts.
    """
    k = len(draft_ids)
    assert target_probs.ndim == 2 and target_probs.shape[0] == k + 1, target_probs.shape
    vocab = target_probs.shape[1]
    assert draft_probs.shape == (k, vocab), (draft_probs.shape, target_probs.shape)
    assert accept_uniforms.shape == (k,), accept_uniforms.shape
    assert np.all((accept_uniforms > 0) & (accept_uniforms < 1)), "uniforms must lie in (0, 1)"
    assert np.all((0 <= draft_ids) & (draft_ids < vocab)), "draft id outside the vocabulary"
    for i, x in enumerate(int(t) for t in draft_ids):
        p_x, q_x = target_probs[i, x], draft_probs[i, x]
        assert q_x > 0, f"draft {i} (token {x}) has zero probability under its own q"
        # Accept with probability min(1, p(x)/q(x)); u < p/q is that event for u ~ U(0, 1).
        if accept_uniforms[i] * q_x < p_x:
            continue
        # Rejected: draw from norm(max(0, p - q)), the mass p has where q under-proposed.
        residual = np.maximum(target_probs[i] - draft_probs[i], 0.0)
        total = residual.sum()
        # total == 0 only if p == q, where rejection has probability zero; guard rounding anyway.
        residual = residual / total if total > 0 else target_probs[i]
        return i, residual_sampler(residual, i)
    return k, residual_sampler(target_probs[k], k)


MAX_TOP_LOGPROBS = 20
"""The most alternatives a token's log-probabilities list (OpenAI's limit for top_logprobs)."""


def served_logprobs(logits: np.ndarray, temperature: float) -> np.ndarray:  # [vocab] -> [vocab] float64
    """Log-probabilities of the distribution as served: log_softmax(logits / temperature), the
    logits already adjusted (grammar mask, penalties); temperature 0 (greedy) counts as 1. Before
    top-k/top-p truncation, as vLLM's processed logprobs, so every alternative has a finite value
    unless the mask forbids it (-inf)."""
    scaled = np.asarray(logits, dtype=np.float64) / (temperature if temperature > 0 else 1.0)
    finite_max = scaled[np.isfinite(scaled)].max()
    shifted = scaled - finite_max
    return shifted - np.log(np.exp(shifted).sum())


def top_tokens(logprobs: np.ndarray, n: int) -> np.ndarray:
    """The n most likely token ids of logprobs ([vocab]), most likely first (ties: lower id first),
    leaving out tokens of probability zero."""
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    n = min(n, logprobs.shape[-1])
    candidates = np.argpartition(-logprobs, n - 1)[:n]
    order = candidates[np.lexsort((candidates, -logprobs[candidates]))]
    return order[np.isfinite(logprobs[order])]


def penalize(
    logits: np.ndarray,  # [vocab]
    prompt_ids: Sequence[int],
    output_ids: Sequence[int],
    frequency: float = 0.0,
    presence: float = 0.0,
    repetition: float = 1.0,
    logit_bias: Sequence[tuple[int, float]] = (),
) -> np.ndarray:  # [vocab] float32, a new array
    """The logits at the position after prompt_ids + output_ids with penalties and biases applied.

    In order: repetition (transformers' and vLLM's: a token in the prompt or the output has its
    logit divided by `repetition` when positive, multiplied when not), frequency and presence
    (OpenAI's: logit - frequency * count - presence * [count > 0], counted in the output only),
    then logit_bias (added). The cloud applies this to the target at every verified position and
    the edge to its draft, both as a function of the tokens before the position only, so the
    served distribution does not depend on how tokens were grouped into blocks.
    """
    out = np.array(logits, dtype=np.float32)
    if repetition not in (0.0, 1.0):
        seen = np.unique(np.asarray([*prompt_ids, *output_ids], dtype=np.int64))
        values = out[seen]
        out[seen] = np.where(values > 0, values / np.float32(repetition), values * np.float32(repetition))
    if (frequency or presence) and len(output_ids):
        ids, counts = np.unique(np.asarray(output_ids, dtype=np.int64), return_counts=True)
        out[ids] -= (np.float32(frequency) * counts + np.float32(presence)).astype(np.float32)
    for token, bias in logit_bias:
        out[token] += np.float32(bias)
    return out
