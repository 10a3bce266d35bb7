"""The sampling math in common/sampling.py, on crafted and seeded random distributions.

Goodness of fit is Pearson's chi-square (tests/stats.py) at level ALPHA = 1e-3 with an
exact p-value; every test is seeded, so it is a fixed computation, and each one also checks
its power: the distribution a plausible bug would produce lies far beyond the threshold.
"""

from __future__ import annotations

import numpy as np
import pytest
from stats import ALPHA, chi2_threshold, chi_square

from common import sampling

VOCAB = 8


def reference_probs(logits: np.ndarray, temperature: float, top_k: int, top_p: float) -> np.ndarray:
    """The transform written the plain way: one row, full sorts, no shortcuts."""
    x = np.asarray(logits, dtype=np.float64) / temperature
    if 0 < top_k < len(x):
        kth_largest = np.sort(x)[len(x) - top_k]
        x = np.where(x >= kth_largest, x, -np.inf)
    probs = np.exp(x - x.max())
    probs /= probs.sum()
    if 0 < top_p < 1:
        order = np.argsort(-probs, kind="stable")
        mass_before = np.cumsum(probs[order]) - probs[order]
        keep = np.zeros(len(x), dtype=bool)
        keep[order[mass_before < top_p]] = True
        probs = np.where(keep, probs, 0.0)
        probs /= probs.sum()
    return probs


def hf_probs(logits: np.ndarray, temperature: float, top_k: int, top_p: float) -> np.ndarray:
    """transformers' own warpers, in generate()'s order."""
    import torch
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    scores = torch.tensor(np.asarray(logits, dtype=np.float64))[None]
    warpers = [TemperatureLogitsWarper(temperature)]
    if top_k:
        warpers.append(TopKLogitsWarper(top_k))
    if top_p < 1:
        warpers.append(TopPLogitsWarper(top_p))
    for warper in warpers:
        scores = warper(None, scores)
    return torch.softmax(scores, dim=-1)[0].numpy()


@pytest.mark.parametrize("temperature,top_k,top_p", [
    (1.0, 0, 1.0), (0.7, 0, 0.9), (0.7, 50, 1.0), (1.3, 20, 0.8), (0.5, 3, 0.95), (2.0, 0, 0.99), (1.0, 1, 1.0),
])
@pytest.mark.parametrize("scale", [0.3, 3.0, 12.0])
def test_transform_matches_reference_and_transformers(temperature, top_k, top_p, scale):
    rng = np.random.default_rng(int(scale * 10) + top_k)
    logits = (rng.standard_normal((3, 49152)) * scale).astype(np.float32)  # a real vocabulary's width
    probs = sampling.logits_to_probs(logits, temperature, top_k, top_p)
    assert probs.shape == logits.shape and probs.dtype == np.float64
    for row, got in zip(logits, probs):
        want = reference_probs(row, temperature, top_k, top_p)
        assert np.array_equal(got > 0, want > 0)  # the same kept set, token for token
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
        hf = hf_probs(row, temperature, top_k, top_p)
        assert np.array_equal(got > 0, hf > 0)
        np.testing.assert_allclose(got, hf, rtol=1e-9, atol=1e-12)
        assert abs(got.sum() - 1) < 1e-12


def test_top_k_keeps_ties_and_top_p_keeps_the_smallest_set():
    logits = np.log(np.array([0.4, 0.2, 0.2, 0.1, 0.06, 0.04]))
    assert np.count_nonzero(sampling.logits_to_probs(logits, 1.0, top_k=2)) == 3  # the tie with #2 stays
    kept = lambda top_p: np.flatnonzero(sampling.logits_to_probs(logits, 1.0, top_p=top_p)).tolist()
    assert kept(0.35) == [0]
    assert kept(0.55) == [0, 1]  # ties go by token id
    assert kept(0.65) == [0, 1, 2]
    assert kept(0.95) == [0, 1, 2, 3, 4]
    probs = sampling.logits_to_probs(logits, 1.0, top_p=0.65)
    np.testing.assert_allclose(probs[:3], np.array([0.4, 0.2, 0.2]) / 0.8)


def test_quantized_q_sums_exactly_and_sampling_from_it_is_exact_and_reproducible():
    rng = np.random.default_rng(0)
    for top_k in (1, 4, 8, 64):
        probs = sampling.logits_to_probs(rng.standard_normal(1000) * 3, 1.0)
        ids, weights = sampling.quantize_probs(probs, top_k)
        assert int(weights.sum()) == sampling.Q_SCALE and weights.dtype == np.int64
        assert len(ids) <= top_k and np.all(weights >= 1) and len(set(ids.tolist())) == len(ids)
        assert set(ids.tolist()) <= set(np.argsort(-probs)[:top_k].tolist())
        again = sampling.quantize_probs(probs.copy(), top_k)
        assert np.array_equal(ids, again[0]) and np.array_equal(weights, again[1])
        # Every one of the 2^16 tickets, drawn once: each token is hit exactly `weight` times.
        tickets = (np.arange(sampling.Q_SCALE) + 0.5) / sampling.Q_SCALE
        drawn = np.array([sampling.sample_quantized(ids, weights, u) for u in tickets])
        assert [int((drawn == t).sum()) for t in ids] == weights.tolist()
        dense = sampling.dense_from_quantized(ids, weights, len(probs))
        assert dense.sum() == 1.0 and np.array_equal(dense[ids] * sampling.Q_SCALE, weights)


def test_quantize_drops_nothing_it_keeps_and_handles_tiny_tails():
    probs = np.array([0.999999, 0.0000005, 0.0000005, 0.0])
    ids, weights = sampling.quantize_probs(probs, 8)
    assert int(weights.sum()) == sampling.Q_SCALE and 3 not in ids.tolist() and np.all(weights >= 1)


def test_keyed_uniforms_are_uniform_deterministic_and_independent_across_keys():
    ids = np.arange(200_000)
    u = sampling.keyed_uniform(7, sampling.STREAM_TARGET, 11, ids)
    assert np.all((u > 0) & (u < 1))
    assert np.array_equal(u, sampling.keyed_uniform(7, sampling.STREAM_TARGET, 11, ids))
    counts = np.bincount((u * 50).astype(int), minlength=50)
    assert chi_square(counts, np.full(50, 1 / 50)).p_value > ALPHA
    others = [sampling.keyed_uniform(8, sampling.STREAM_TARGET, 11, ids),
              sampling.keyed_uniform(7, sampling.STREAM_ACCEPT, 11, ids),
              sampling.keyed_uniform(7, sampling.STREAM_TARGET, 12, ids)]
    for other in others:
        assert abs(np.corrcoef(u, other)[0, 1]) < 0.02


def test_keyed_sample_follows_p_and_couples_close_distributions():
    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.ones(VOCAB))
    q = rng.dirichlet(np.ones(VOCAB))
    positions = range(20_000)
    from_p = np.array([sampling.sample_keyed(p, 3, sampling.STREAM_TARGET, i) for i in positions])
    fit = chi_square(np.bincount(from_p, minlength=VOCAB), p, alternative=q)
    assert fit.p_value > ALPHA
    assert fit.dof + fit.noncentrality > 10 * chi2_threshold(fit.dof)  # drawing from q would fail
    # Shared noise couples the draws: Gumbel-max agrees with probability >= (1 - TV) / (1 + TV)
    # (Daliri et al. 2024, arXiv 2408.07978), far above the sum of p(x) q(x) of independent draws.
    near = 0.7 * p + 0.3 * q
    tv = 0.5 * np.abs(near - p).sum()
    same = np.mean([sampling.sample_keyed(near, 3, sampling.STREAM_TARGET, i) == t for i, t in zip(positions, from_p)])
    assert same > (1 - tv) / (1 + tv) - 4 * np.sqrt(0.25 / len(from_p))
    assert same > np.dot(near, p) + 0.3


def test_keyed_sample_against_an_independent_proposal_is_the_one_hot_rule():
    """Ids-only mode: accepting x iff the target's keyed sample equals x has probability p(x)."""
    rng = np.random.default_rng(2)
    p = rng.dirichlet(np.ones(VOCAB))
    x = int(np.argmax(p))
    trials = 20_000
    target = np.array([sampling.sample_keyed(p, 5, sampling.STREAM_TARGET, i) for i in range(trials)])
    accepted = target == x
    sigma = np.sqrt(p[x] * (1 - p[x]) / trials)
    assert abs(accepted.mean() - p[x]) < 4 * sigma
    # On rejection the token follows p with x removed, renormalized.
    residual = np.where(np.arange(VOCAB) == x, 0.0, p) / (1 - p[x])
    assert chi_square(np.bincount(target[~accepted], minlength=VOCAB), residual).p_value > ALPHA


def draws(probs: np.ndarray, index: int, rng) -> int:
    return int(rng.choice(len(probs), p=probs))


def test_q_equal_to_p_accepts_every_draft():
    rng = np.random.default_rng(3)
    p = rng.dirichlet(np.ones(VOCAB), size=4)  # k = 3 drafts, then the bonus position
    seen = []
    for _ in range(200):
        drafts = np.array([draws(p[i], i, rng) for i in range(3)])
        sampler = lambda probs, i: seen.append((probs, i)) or 0
        accepted, _ = sampling.rejection_sample(p, p[:3], drafts, rng.uniform(1e-9, 1 - 1e-9, 3), sampler)
        assert accepted == 3
    assert all(i == 3 and np.array_equal(probs, p[3]) for probs, i in seen)  # the bonus comes from p


def test_disjoint_supports_reject_the_first_draft_and_recover_from_p():
    p = np.zeros((3, VOCAB))
    p[:, :4] = [0.1, 0.2, 0.3, 0.4]
    q = np.zeros((2, VOCAB))
    q[:, 4:] = 0.25
    seen = []
    for x in range(4, VOCAB):
        accepted, _ = sampling.rejection_sample(p, q, np.array([x, x]), np.array([1e-9, 1e-9]),
                                                lambda probs, i: seen.append((probs, i)) or 0)
        assert accepted == 0
    assert all(i == 0 and np.array_equal(probs, p[0]) for probs, i in seen)  # norm(max(0, p - q)) = p


def test_one_hot_q_accepts_with_probability_p_of_x_and_recovers_p_without_x():
    rng = np.random.default_rng(4)
    p = rng.dirichlet(np.ones(VOCAB), size=2)
    x = 5
    q = np.zeros((1, VOCAB))
    q[0, x] = 1.0
    trials, accepted, residuals = 20_000, 0, []
    for u in rng.uniform(1e-12, 1 - 1e-12, trials):
        n, _ = sampling.rejection_sample(p, q, np.array([x]), np.array([u]), lambda probs, i: residuals.append(probs))
        accepted += n
    sigma = np.sqrt(p[0, x] * (1 - p[0, x]) / trials)
    assert abs(accepted / trials - p[0, x]) < 4 * sigma
    without_x = np.where(np.arange(VOCAB) == x, 0.0, p[0]) / (1 - p[0, x])
    np.testing.assert_allclose(residuals[0], without_x, rtol=1e-12)


@pytest.mark.parametrize("concentration", [0.3, 1.0, 5.0])
def test_output_is_distributed_as_p_at_every_position(concentration):
    """Monte-Carlo over 30,000 verifications of k = 3 drafts drawn from q != p.

    At each position j, the token the rule commits there (accepted draft, recovered or bonus
    token) must follow p_j, conditioned on reaching j. Chi-square per position, Bonferroni
    over the 4 positions; the draft tokens themselves (from q) must fail the same test.
    """
    rng = np.random.default_rng(int(concentration * 10))
    k, trials = 3, 30_000
    p = rng.dirichlet(np.full(VOCAB, concentration), size=k + 1)  # [k + 1, vocab]
    q = rng.dirichlet(np.full(VOCAB, concentration), size=k)  # [k, vocab]
    out = np.zeros((k + 1, VOCAB))
    proposed = np.zeros((k, VOCAB))
    rejections = 0
    for _ in range(trials):
        drafts = np.array([draws(q[i], i, rng) for i in range(k)])
        proposed[np.arange(k), drafts] += 1
        accepted, next_token = sampling.rejection_sample(
            p, q, drafts, rng.uniform(1e-12, 1 - 1e-12, k), lambda probs, i: draws(probs, i, rng))
        committed = [*drafts[:accepted], next_token]
        out[np.arange(len(committed)), committed] += 1
        rejections += accepted < k
    assert 0 < rejections < trials
    for j in range(k + 1):
        fit = chi_square(out[j], p[j])
        assert fit.p_value > ALPHA / (k + 1), (j, fit)
    for j in range(k):
        if 0.5 * np.abs(p[j] - q[j]).sum() > 0.1:  # far enough apart to tell
            assert chi_square(proposed[j], p[j]).p_value < ALPHA


def test_inputs_are_checked():
    p = np.full((3, VOCAB), 1 / VOCAB)
    q = np.full((2, VOCAB), 1 / VOCAB)
    ok = dict(target_probs=p, draft_probs=q, draft_ids=np.array([1, 2]), accept_uniforms=np.array([0.5, 0.5]),
              residual_sampler=lambda probs, i: 0)
    assert sampling.rejection_sample(**ok) == (2, 0)
    for bad in (dict(target_probs=p[:2]), dict(draft_probs=q[:, :4]), dict(draft_ids=np.array([1])),
                dict(accept_uniforms=np.array([0.5])), dict(accept_uniforms=np.array([0.0, 0.5])),
                dict(draft_ids=np.array([1, VOCAB]))):
        with pytest.raises(AssertionError):
            sampling.rejection_sample(**{**ok, **bad})
    zero_q = q.copy()
    zero_q[0, 1] = 0.0
    with pytest.raises(AssertionError, match="zero probability"):
        sampling.rejection_sample(**{**ok, "draft_probs": zero_q})
    with pytest.raises(AssertionError):
        sampling.logits_to_probs(np.zeros(4), temperature=0.0)
    with pytest.raises(AssertionError):
        sampling.sample_quantized(np.array([1, 2]), np.array([1, 2]), 0.5)  # does not sum to 2^16
